"""The autoscaler's state between ticks, per service and region, and the tick that feeds and asks it.

A tick reads the region's load (Prometheus, the gateway, or each ready replica's /metrics), adds it to the
region's `RegionScaler` and asks `autoscaler.decide`. It runs at most once per autoscaling interval: a pass woken
sooner (a pod became ready, the Deployment changed) reuses the last tick's answer instead of sampling again.
The state lives in memory: lost on restart, rebuilt within a window.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from modelfleet.api.inference import InferenceServiceSpec, MetricsSource, Region
from modelfleet.inference import gateway_load
from modelfleet.inference.autoscaler import RegionScaler, decide
from modelfleet.inference.builders import region_object_name
from modelfleet.inference.load_sources import ReplicaSample, prometheus_load, region_load, scrape_all
from modelfleet.loops import NO_RESYNC
from modelfleet.pods import pod_ready

EARLY = 0.9
"""A tick is due once this share of the interval has passed (the loop's timer fires a little after the interval)."""


@dataclass(frozen=True)
class Tick:
    desired: int
    load: float | None
    """The observed per-replica load, for status (None when none was read)."""
    reason: str


@dataclass
class RegionScaling:
    scaler: RegionScaler = field(default_factory=RegionScaler)
    replica_samples: dict[str, ReplicaSample] = field(default_factory=dict)
    gateway_sample: gateway_load.GatewaySample | None = None
    last_tick: float | None = None
    last: Tick | None = None


class Scaling:
    """Every autoscaled region's state, by (namespace, service, region)."""

    def __init__(self) -> None:
        self.regions: dict[tuple[str, str, str], RegionScaling] = {}
        self.gateway = gateway_load.GatewayScraper()

    def forget(self, namespace: str, name: str) -> None:
        for key in [k for k in self.regions if k[:2] == (namespace, name)]:
            del self.regions[key]

    async def desired(
        self,
        namespace: str,
        name: str,
        spec: InferenceServiceSpec,
        region: Region,
        deployment: dict[str, Any] | None,
        pods: Sequence[dict[str, Any]],
        manual: int,
    ) -> Tick:
        """The region's desired replicas: `manual` without autoscaling, the floor before its Deployment exists,
        else the last tick's answer, or a new tick's when one is due."""
        if not spec.autoscaling.enabled:
            return Tick(manual, None, "spec.replicas")
        if deployment is None:
            return Tick(max(region.min_replicas, 0 if spec.autoscaling.scale_to_zero else 1), None, "Created")
        state = self.regions.setdefault((namespace, name, region.name), RegionScaling())
        now = time.monotonic()
        due = state.last_tick is None or now - state.last_tick >= EARLY * spec.autoscaling.interval_seconds
        if state.last is None or due:
            state.last = await self._tick(state, namespace, name, spec, region, deployment, pods, now)
            state.last_tick = now
        return replace(state.last, desired=min(max(state.last.desired, region.min_replicas), region.max_replicas))

    async def _tick(
        self,
        state: RegionScaling,
        namespace: str,
        name: str,
        spec: InferenceServiceSpec,
        region: Region,
        deployment: dict[str, Any],
        pods: Sequence[dict[str, Any]],
        now: float,
    ) -> Tick:
        current = int(deployment["spec"].get("replicas") or 0)
        ready_pods = [p for p in pods if pod_ready(p)]
        policy = spec.autoscaling
        gateway = gateway_load.settings()
        source = gateway.source(policy)
        load = raw = None
        if source == MetricsSource.PROMETHEUS:
            load, raw = await prometheus_load(policy, namespace, region_object_name(name, region.name), len(ready_pods))
        elif source == MetricsSource.GATEWAY and gateway.metrics_urls:
            seen = await self.gateway.samples(gateway.metrics_urls)
            if seen is not None:
                key = (namespace, name, region.name)
                sample = seen.get(key) or gateway_load.GatewaySample(time.monotonic())
                load, raw = gateway_load.gateway_load(policy, sample, state.gateway_sample, len(ready_pods))
                state.gateway_sample = sample
        else:
            urls = {
                p["metadata"]["name"]: f"http://{p['status']['podIP']}:{spec.port}/metrics"
                for p in ready_pods
                if p["status"].get("podIP")
            }
            samples = await scrape_all(urls)
            load, raw = region_load(policy, samples, state.replica_samples)
            state.replica_samples = {pod: s for pod, s in samples.items() if s is not None}
        state.scaler.add_sample(now, load)
        decision = decide(policy, state.scaler, now, current, len(ready_pods), region.min_replicas, region.max_replicas)
        state.scaler.record(now, decision, policy)
        return Tick(decision.desired, raw, decision.reason)


def observes_at_zero(spec: InferenceServiceSpec) -> bool:
    """Whether the service's load can be read while it has no replica (the gateway or Prometheus sees it)."""
    gateway = gateway_load.settings()
    source = gateway.source(spec.autoscaling)
    return source == MetricsSource.PROMETHEUS or (source == MetricsSource.GATEWAY and bool(gateway.metrics_urls))


def resync_seconds(spec: InferenceServiceSpec, replicas: int) -> float:
    """Seconds to the next tick while there is load to observe (replicas, or a source in front of them), else
    NO_RESYNC: the Deployment's, its pods' and the service's own events wake the loop."""
    if spec.autoscaling.enabled and (replicas > 0 or observes_at_zero(spec)):
        return float(spec.autoscaling.interval_seconds)
    return NO_RESYNC


SCALING = Scaling()
