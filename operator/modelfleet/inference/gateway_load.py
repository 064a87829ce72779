"""`autoscaling.source: Gateway`: load per region as the gateway sees it (modelfleet.gateway.metrics).

The gateway knows what no replica can report: requests it holds for a region at zero, and requests it serves
elsewhere because their nearest region has no ready replica. Both count as that region's load, so the autoscaler
brings a region back from zero on the first request, without Prometheus.

Every address the gateway's metrics host resolves to is read (a headless Service names each gateway pod), and the
figures are summed; when any address cannot be read, the tick has no sample and the regions hold their size.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.api.inference import Autoscaling, MetricsSource, ScaleMetric
from modelfleet.contract import (
    GATEWAY_INFLIGHT,
    GATEWAY_LATENCY,
    GATEWAY_METRICS_ENV,
    GATEWAY_QUEUED,
    GATEWAY_REDIRECTED,
    GATEWAY_REQUESTS,
    GATEWAY_URL_ENV,
)
from modelfleet.inference.load_sources import LATENCY_QUANTILE, quantile, scrape

"""Space-separated /metrics URLs of the gateways (default: <gateway URL>/metrics)."""
REUSE_SECONDS = 0.5
RegionKey = tuple[str, str, str]
"""(namespace, service, region)."""


@dataclass(frozen=True)
class GatewaySettings:
    url: str | None = None
    """The URL users send requests to: status.url is <url>/v2/models/<model>."""
    metrics_urls: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewaySettings:
        url = (env.get(GATEWAY_URL_ENV) or "").rstrip("/") or None
        metrics = tuple((env.get(GATEWAY_METRICS_ENV) or "").split()) or ((f"{url}/metrics",) if url else ())
        return cls(url, metrics)

    def source(self, policy: Autoscaling) -> MetricsSource:
        """The source a service's autoscaler uses: its own choice, else Gateway when there is one."""
        if policy.source is not None:
            return policy.source
        return MetricsSource.GATEWAY if self.metrics_urls else MetricsSource.SCRAPE

    def model_url(self, model: str) -> str | None:
        return f"{self.url}/v2/models/{model}" if self.url else None


@functools.cache
def settings() -> GatewaySettings:
    return GatewaySettings.from_env(os.environ)


@dataclass(frozen=True)
class GatewaySample:
    at: float
    inflight: float = 0.0
    waiting: float = 0.0
    """Held for the region, or served elsewhere while it has no ready replica."""
    requests: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()


def parse_gateway_metrics(text: str, at: float) -> dict[RegionKey, GatewaySample]:
    values: dict[RegionKey, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    buckets: dict[RegionKey, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    fields = {
        GATEWAY_INFLIGHT: "inflight",
        GATEWAY_QUEUED: "waiting",
        GATEWAY_REDIRECTED: "waiting",
        f"{GATEWAY_REQUESTS}_total": "requests",
    }
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not {"namespace", "service", "region"} <= s.labels.keys():
                continue
            key = (s.labels["namespace"], s.labels["service"], s.labels["region"])
            if s.name in fields:
                values[key][fields[s.name]] += s.value
            elif s.name == f"{GATEWAY_LATENCY}_bucket":
                buckets[key][float(s.labels["le"])] += s.value
    return {
        key: GatewaySample(at, **values.get(key, {}), buckets=tuple(sorted(buckets.get(key, {}).items())))
        for key in values.keys() | buckets.keys()
    }


def merge(parts: list[dict[RegionKey, GatewaySample]], at: float) -> dict[RegionKey, GatewaySample]:
    """The sum over gateway replicas."""
    merged: dict[RegionKey, GatewaySample] = {}
    for part in parts:
        for key, s in part.items():
            old = merged.get(key, GatewaySample(at))
            bounds = dict(old.buckets)
            for bound, count in s.buckets:
                bounds[bound] = bounds.get(bound, 0.0) + count
            merged[key] = GatewaySample(
                at, old.inflight + s.inflight, old.waiting + s.waiting, old.requests + s.requests,
                tuple(sorted(bounds.items())),
            )  # fmt: skip
    return merged


def gateway_load(
    policy: Autoscaling, current: GatewaySample, previous: GatewaySample | None, ready: int
) -> tuple[float | None, float | None]:
    """(load in replica-equivalents at target, raw per-replica metric) of one region. A region without a ready
    replica but with requests waiting for it needs at least one replica whatever the metric."""
    per = max(ready, 1)
    if policy.metric == ScaleMetric.CONCURRENCY:
        total = current.inflight + current.waiting
        return total / policy.target, total / per
    woken = policy.target_utilization if ready == 0 and current.waiting > 0 else 0.0
    fresh = previous is not None and current.at > previous.at and current.requests >= previous.requests
    if policy.metric == ScaleMetric.RPS:
        if not fresh:
            return (woken, None) if woken else (None, None)
        assert previous is not None
        rate = (current.requests - previous.requests) / (current.at - previous.at)
        return max(rate / policy.target, woken), rate / per
    before = dict(previous.buckets) if fresh and previous else {}
    p90 = quantile([(b, max(0.0, c - before.get(b, 0.0))) for b, c in current.buckets], LATENCY_QUANTILE) or 0.0
    return max(ready * p90 / policy.target, woken), p90


async def _addresses(url: str) -> list[str]:
    """The URL once per address its host resolves to (a headless Service: each gateway pod)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return [url]  # the scrape fails and says so
    hosts = sorted({info[4][0] for info in infos})
    netloc = lambda h: f"[{h}]" if ":" in h else h  # noqa: E731
    return [urlunsplit(parts._replace(netloc=f"{netloc(h)}{f':{port}' if port else ''}")) for h in hosts]


class GatewayScraper:
    """Reads every gateway at most once per REUSE_SECONDS, however many services ask."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.last: tuple[float, dict[RegionKey, GatewaySample] | None] | None = None

    async def samples(self, urls: tuple[str, ...], timeout: float = 1.0) -> dict[RegionKey, GatewaySample] | None:
        async with self.lock:
            now = time.monotonic()
            if self.last is None or now - self.last[0] >= REUSE_SECONDS:
                self.last = (now, await self._read(urls, timeout))
            return self.last[1]

    @staticmethod
    async def _read(urls: tuple[str, ...], timeout: float) -> dict[RegionKey, GatewaySample] | None:
        targets = [u for url in urls for u in await _addresses(url)]
        async with aiohttp.ClientSession() as session:
            parts = await asyncio.gather(*(scrape(session, u, timeout, parse_gateway_metrics) for u in targets))
        if not targets or any(p is None for p in parts):
            return None
        return merge([p for p in parts if p is not None], time.monotonic())
