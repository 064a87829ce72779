"""kopf handlers for InferenceService: per region, make the Deployment and Service, observe load, scale."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from modelfleet import kube, policy
from modelfleet.api.common import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    REGION_NAME_LABEL,
    SERVICE_NAME_LABEL,
    now_iso,
)
from modelfleet.api.inference import InferenceServiceSpec, MetricsSource, Region, ServingPhase
from modelfleet.capacity import CAPACITY
from modelfleet.inference import gateway_load
from modelfleet.inference.autoscaler import RegionScaler, decide, split_replicas
from modelfleet.inference.builders import REVISION_ANNOTATION, covers, deployment, region_object_name, service
from modelfleet.inference.load_sources import ReplicaSample, prometheus_load, region_load, scrape_all
from modelfleet.inference.model_source import resolve_for, services_serving
from modelfleet.inference.status import compose_status, pod_ready, region_status
from modelfleet.loops import ObjectGone, ReconcileLoops
from modelfleet.resync import RESYNC

PLURAL = "inferenceservices"
CREATE_FAILED_RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class Hold:
    """No writes after the API refused an object built from this generation of the spec: until the spec changes
    (InvalidSpec), or until `until` on the monotonic clock (CreateFailed: the cause may lie outside the spec)."""

    generation: int
    until: float | None

    @classmethod
    def after(cls, refused: kube.Refused, generation: int, now: float) -> Hold:
        return cls(generation, None if refused.reason == "InvalidSpec" else now + CREATE_FAILED_RETRY_SECONDS)

    def wait(self, generation: int, now: float) -> float | None:
        """Seconds still to wait (inf: until the spec changes); None when a retry is due."""
        if generation != self.generation:
            return None
        if self.until is None:
            return float("inf")
        return self.until - now if now < self.until else None


class Memory:
    """What the autoscaler keeps between ticks, per service and region (lost on restart, rebuilt in a window),
    and the services on hold after a refusal."""

    def __init__(self) -> None:
        self.scalers: dict[tuple[str, str, str], RegionScaler] = defaultdict(RegionScaler)
        self.samples: dict[tuple[str, str, str], dict[str, ReplicaSample]] = defaultdict(dict)
        self.holds: dict[tuple[str, str], Hold] = {}
        self.gateway_samples: dict[tuple[str, str, str], gateway_load.GatewaySample] = {}
        self.noticed: dict[tuple[str, str, str], int] = {}
        """(namespace, name, reason) -> the generation a Warning Event was posted for (one per generation)."""

    def forget(self, namespace: str, name: str) -> None:
        for store in (self.scalers, self.samples, self.holds, self.gateway_samples, self.noticed):
            for key in [k for k in store if k[:2] == (namespace, name)]:
                del store[key]


MEMORY = Memory()
GATEWAY_SCRAPER = gateway_load.GatewayScraper()


def warn_once(body: dict[str, Any], generation: int, reason: str, message: str) -> None:
    """A Warning Event, once per generation of the spec."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"], reason)
    if MEMORY.noticed.get(key) != generation:
        MEMORY.noticed[key] = generation
        kopf.event(body, type="Warning", reason=reason, message=message)


async def reconcile(body: dict[str, Any]) -> float | None:
    meta, prev = body["metadata"], body.get("status") or {}
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation", 1)
    try:
        spec = InferenceServiceSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        LOOPS.remember(await kube.report_invalid_spec(body, PLURAL, exc, "Ready", str(ServingPhase.FAILED)))
        return None
    if denied := policy.refusal(spec):  # nothing made until the spec changes (a new generation wakes the loop)
        LOOPS.remember(await kube.report_refused(body, PLURAL, denied, "Ready", str(ServingPhase.FAILED)))
        return None
    if hold := MEMORY.holds.get((namespace, name)):
        wait = hold.wait(generation, time.monotonic())
        if wait is not None:
            return None if wait == float("inf") else wait
        del MEMORY.holds[(namespace, name)]

    if (source := await resolve_for(body, spec)) is None:
        return None  # nothing to serve yet: the named TrainingJob's events wake the loop
    spec = source.spec
    selector = f"{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"
    deployments = await _owned_by_region(kube.apps().list_namespaced_deployment, namespace, selector, meta["uid"])
    services = await _owned_by_region(kube.core().list_namespaced_service, namespace, selector, meta["uid"])
    pods_by_region: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pod in await kube.list_pods(namespace, selector):
        pods_by_region[pod["metadata"]["labels"].get(REGION_NAME_LABEL, "")].append(pod)

    wanted = {r.name for r in spec.regions}
    for gone in sorted((deployments.keys() | services.keys()) - wanted):
        await _remove_region(body, namespace, region_object_name(name, gone), gone)
    manual = split_replicas(spec.replicas, spec.regions)
    cap = sum(r.max_replicas for r in spec.regions)
    if not spec.autoscaling.enabled and spec.replicas is not None and spec.replicas > cap:
        message = f"spec.replicas {spec.replicas} is above the regions' summed maxReplicas: running {cap}"
        warn_once(body, generation, "ReplicasCapped", message)
    gateway = gateway_load.settings()
    if spec.autoscaling.source == MetricsSource.GATEWAY and not gateway.metrics_urls:
        message = "autoscaling.source Gateway, but the operator runs without a gateway: scraping the replicas"
        warn_once(body, generation, "NoGateway", message)
    previous_regions = {r["name"]: r for r in prev.get("regions") or []}
    regions_status = []
    for region in spec.regions:
        dep = deployments.get(region.name)
        pods = pods_by_region.get(region.name, [])
        desired, load, reason = await _desired_replicas(namespace, name, spec, region, dep, pods, manual[region.name])
        last_scale = (previous_regions.get(region.name) or {}).get("lastScaleTime")
        current = dep["spec"]["replicas"] if dep else None
        if current is not None and desired != current:
            last_scale = now_iso()
            direction = "ScaledUp" if desired > current else "ScaledDown"
            kopf.event(
                body,
                type="Normal",
                reason=direction,
                message=f"{region.name}: {current} -> {desired} replicas ({reason})",
            )
        try:
            dep = await _apply_region(meta, spec, region, dep, services.get(region.name), desired)
        except kube.Refused as refused:
            MEMORY.holds[(namespace, name)] = Hold.after(refused, generation, time.monotonic())
            LOOPS.remember(await kube.report_refused(body, PLURAL, refused, "Ready", str(ServingPhase.FAILED)))
            return None
        regions_status.append(region_status(name, namespace, region.name, dep, pods, desired, load, last_scale))
    status = compose_status(prev, spec, name, generation, regions_status, gateway.model_url(spec.model.name or name))
    status["artifact"] = source.artifact
    if any(prev.get(k) != v for k, v in status.items()):
        if status["phase"] != prev.get("phase"):
            kopf.event(body, type="Normal", reason=status["phase"], message=f"service is {status['phase']}")
        if (updated := await kube.patch_status(PLURAL, namespace, name, status)) is None:
            raise ObjectGone(f"{namespace}/{name}")
        LOOPS.remember(updated)
    return spec.autoscaling.interval_seconds if spec.autoscaling.enabled else None


def _owned(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


async def _owned_by_region(
    list_fn: Callable[..., Any], namespace: str, selector: str, uid: str
) -> dict[str, dict[str, Any]]:
    """The objects `list_fn` finds with the selector and owned by `uid`, by region."""
    result = await kube.call(list_fn, namespace, label_selector=selector)
    objects = (kube.api().sanitize_for_serialization(o) for o in result.items)
    return {o["metadata"]["labels"].get(REGION_NAME_LABEL, ""): o for o in objects if _owned(o, uid)}


async def _desired_replicas(
    namespace: str,
    name: str,
    spec: InferenceServiceSpec,
    region: Region,
    dep: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    manual: int,
) -> tuple[int, float | None, str]:
    """(desired replicas, observed per-replica load, why) for one region."""
    if not spec.autoscaling.enabled:
        return manual, None, "spec.replicas"
    if dep is None:
        return max(region.min_replicas, 0 if spec.autoscaling.scale_to_zero else 1), None, "Created"
    current = int(dep["spec"].get("replicas") or 0)
    ready_pods = [p for p in pods if pod_ready(p)]
    key = (namespace, name, region.name)
    policy = spec.autoscaling
    gateway = gateway_load.settings()
    source = gateway.source(policy)
    if source == MetricsSource.PROMETHEUS:
        load, raw = await prometheus_load(policy, namespace, region_object_name(name, region.name), len(ready_pods))
    elif source == MetricsSource.GATEWAY and gateway.metrics_urls:
        seen = await GATEWAY_SCRAPER.samples(gateway.metrics_urls)
        load = raw = None
        if seen is not None:
            sample = seen.get(key) or gateway_load.GatewaySample(time.monotonic())
            load, raw = gateway_load.gateway_load(policy, sample, MEMORY.gateway_samples.get(key), len(ready_pods))
            MEMORY.gateway_samples[key] = sample
    else:
        urls = {
            p["metadata"]["name"]: f"http://{p['status']['podIP']}:{spec.port}/metrics"
            for p in ready_pods
            if p["status"].get("podIP")
        }
        samples = await scrape_all(urls)
        load, raw = region_load(policy, samples, MEMORY.samples[key])
        MEMORY.samples[key] = {pod: s for pod, s in samples.items() if s is not None}
    scaler = MEMORY.scalers[key]
    now = time.monotonic()
    scaler.add_sample(now, load)
    decision = decide(policy, scaler, now, current, len(ready_pods), region.min_replicas, region.max_replicas)
    return decision.desired, raw, decision.reason


async def _apply_region(
    meta: dict[str, Any],
    spec: InferenceServiceSpec,
    region: Region,
    dep: dict[str, Any] | None,
    svc: dict[str, Any] | None,
    replicas: int,
) -> dict[str, Any]:
    """Applies the region's Service when it is missing or differs, and its Deployment when missing or when the
    pod template's revision or the replicas differ; returns the Deployment. Raises kube.Refused."""
    wanted_service = service(meta, spec, region.name)
    if svc is None or not covers(svc, {k: wanted_service[k] for k in ("metadata", "spec")}):
        await kube.apply(kube.core().patch_namespaced_service, wanted_service)
    products = CAPACITY.gpu_products(spec.resources.gpu_type) if spec.resources.gpu_type else []
    wanted = deployment(meta, spec, region, replicas, products)
    if dep is not None and _revision(dep) == _revision(wanted) and dep["spec"].get("replicas") == replicas:
        return dep
    return await kube.apply(kube.apps().patch_namespaced_deployment, wanted)


def _revision(dep: dict[str, Any]) -> str | None:
    return (dep["spec"]["template"]["metadata"].get("annotations") or {}).get(REVISION_ANNOTATION)


async def _remove_region(body: dict[str, Any], namespace: str, object_name: str, region: str) -> None:
    kopf.event(body, type="Normal", reason="RegionRemoved", message=f"deleting {object_name} ({region})")
    for delete in (kube.apps().delete_namespaced_deployment, kube.core().delete_namespaced_service):
        try:
            await kube.call(delete, object_name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise


LOOPS = ReconcileLoops("inferenceservice", reconcile)


@kopf.on.event("modelfleet.dev", "v1alpha1", "trainingjobs")
async def training_job_for_services(event: dict[str, Any], **_: Any) -> None:
    """A TrainingJob changed (a run succeeded): the services that serve its artifact look again at once."""
    meta = event["object"]["metadata"]
    for key in services_serving(LOOPS.bodies, meta["namespace"], meta["name"]):
        LOOPS.wake(key)


@kopf.on.event("modelfleet.dev", "v1alpha1", PLURAL)
async def inference_service_event(event: dict[str, Any], **_: Any) -> None:
    if event.get("type") is None:
        RESYNC.request()
    deleted = event.get("type") == "DELETED"
    if deleted:
        meta = event["object"]["metadata"]
        MEMORY.forget(meta["namespace"], meta["name"])
    LOOPS.apply_event(event["object"], deleted=deleted)


@kopf.on.event("apps", "v1", "deployments", labels={MANAGED_BY_LABEL: MANAGED_BY, SERVICE_NAME_LABEL: kopf.PRESENT})
@kopf.on.event("", "v1", "services", labels={MANAGED_BY_LABEL: MANAGED_BY, SERVICE_NAME_LABEL: kopf.PRESENT})
async def region_object_event(event: dict[str, Any], **_: Any) -> None:
    """A region's Deployment or Service changed or went: the service's loop looks again at once."""
    meta = event["object"]["metadata"]
    LOOPS.wake((meta["namespace"], meta["labels"][SERVICE_NAME_LABEL]))
