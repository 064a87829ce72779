"""kopf handlers for InferenceService: per region, make the Deployment and Service, observe load, scale."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
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
from modelfleet.inference.autoscaler import split_replicas
from modelfleet.inference.builders import REVISION_ANNOTATION, covers, deployment, region_object_name, service
from modelfleet.inference.model_source import resolve_for, services_serving
from modelfleet.inference.routes import ROUTES
from modelfleet.inference.scaling import SCALING, resync_seconds
from modelfleet.inference.status import compose_status, region_status
from modelfleet.loops import NO_RESYNC, ObjectGone, ReconcileLoops, counts_watch_events
from modelfleet.owned import DEPLOYMENTS, SERVER_PODS, SERVICES, TRAINING_RESULTS
from modelfleet.resync import RESYNC

log = logging.getLogger(__name__)
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
    """The services on hold after a refusal, and the Warning Events already posted (lost on restart)."""

    def __init__(self) -> None:
        self.holds: dict[tuple[str, str], Hold] = {}
        self.noticed: dict[tuple[str, str, str], int] = {}
        """(namespace, name, reason) -> the generation a Warning Event was posted for (one per generation)."""

    def forget(self, namespace: str, name: str) -> None:
        for store in (self.holds, self.noticed):
            for key in [k for k in store if k[:2] == (namespace, name)]:
                del store[key]
        SCALING.forget(namespace, name)


MEMORY = Memory()


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
        return NO_RESYNC
    if denied := policy.refusal(spec):  # nothing made until the spec changes (a new generation wakes the loop)
        LOOPS.remember(await kube.report_refused(body, PLURAL, denied, "Ready", str(ServingPhase.FAILED)))
        return NO_RESYNC
    if hold := MEMORY.holds.get((namespace, name)):
        wait = hold.wait(generation, time.monotonic())
        if wait is not None:
            return NO_RESYNC if wait == float("inf") else wait
        del MEMORY.holds[(namespace, name)]

    if (source := await resolve_for(body, spec)) is None:
        return NO_RESYNC  # nothing to serve yet: the named TrainingJob's events wake the loop
    spec = source.spec
    deployments = _by_region(DEPLOYMENTS.owned_by(meta["uid"]))
    services = _by_region(SERVICES.owned_by(meta["uid"]))
    pods_by_region: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pod in SERVER_PODS.owned_by((namespace, name)):
        pods_by_region[pod["metadata"]["labels"].get(REGION_NAME_LABEL, "")].append(pod)

    wanted = {r.name for r in spec.regions}
    for gone in sorted((deployments.keys() | services.keys()) - wanted):
        await _remove_region(body, namespace, region_object_name(name, gone), gone)
        for index, owned in ((DEPLOYMENTS, deployments), (SERVICES, services)):
            index.mark_deleting([owned[gone]["metadata"]["uid"]] if gone in owned else [], gone=True)
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
        tick = await SCALING.desired(namespace, name, spec, region, dep, pods, manual[region.name])
        last_scale = (previous_regions.get(region.name) or {}).get("lastScaleTime")
        current = dep["spec"]["replicas"] if dep else None
        try:
            dep = await _apply_region(meta, spec, region, dep, services.get(region.name), tick.desired)
        except kube.Refused as refused:
            MEMORY.holds[(namespace, name)] = Hold.after(refused, generation, time.monotonic())
            LOOPS.remember(await kube.report_refused(body, PLURAL, refused, "Ready", str(ServingPhase.FAILED)))
            return NO_RESYNC
        if current is not None and tick.desired != current:  # announced once the Deployment says so
            last_scale = now_iso()
            direction = "ScaledUp" if tick.desired > current else "ScaledDown"
            message = f"{region.name}: {current} -> {tick.desired} replicas ({tick.reason})"
            kopf.event(body, type="Normal", reason=direction, message=message)
        regions_status.append(
            region_status(name, namespace, region.name, dep, pods, tick.desired, tick.load, last_scale)
        )
    await ROUTES.sync(body, spec)
    status = compose_status(prev, spec, name, generation, regions_status, gateway.model_url(spec.model.name or name))
    status["artifact"] = source.artifact
    if any(prev.get(k) != v for k, v in status.items()):
        if (updated := await kube.patch_status(PLURAL, namespace, name, status)) is None:
            raise ObjectGone(f"{namespace}/{name}")
        if status["phase"] != prev.get("phase"):
            kopf.event(body, type="Normal", reason=status["phase"], message=f"service is {status['phase']}")
        LOOPS.remember(updated)
    return resync_seconds(spec, replicas=sum(r["replicas"] for r in regions_status))


def _by_region(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["labels"].get(REGION_NAME_LABEL, ""): o for o in objects}


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
        why = "not in the index" if svc is None else "differs from the index"
        log.info("applying Service %s/%s: %s", meta["namespace"], wanted_service["metadata"]["name"], why)
        SERVICES.apply_event(await kube.apply(wanted_service))
    products = CAPACITY.gpu_products(spec.resources.gpu_type) if spec.resources.gpu_type else []
    wanted = deployment(meta, spec, region, replicas, products)
    if dep is None:
        why = "not in the index"
    elif _revision(dep) != _revision(wanted):
        why = f"pod template {_revision(dep)} -> {_revision(wanted)}"
    elif dep["spec"].get("replicas") != replicas:
        why = f"replicas {dep['spec'].get('replicas')} -> {replicas}"
    else:
        return dep
    log.info("applying Deployment %s/%s: %s", meta["namespace"], wanted["metadata"]["name"], why)
    applied = await kube.apply(wanted)
    DEPLOYMENTS.apply_event(applied)
    return applied


def _revision(dep: dict[str, Any]) -> str | None:
    return (dep["spec"]["template"]["metadata"].get("annotations") or {}).get(REVISION_ANNOTATION)


async def _remove_region(body: dict[str, Any], namespace: str, object_name: str, region: str) -> None:
    for delete in (kube.apps().delete_namespaced_deployment, kube.core().delete_namespaced_service):
        try:
            await kube.call(delete, object_name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
    kopf.event(body, type="Normal", reason="RegionRemoved", message=f"deleted {object_name} ({region})")


LOOPS = ReconcileLoops("inferenceservice", reconcile)


def training_job_changed(job: dict[str, Any], deleted: bool) -> None:
    """A TrainingJob's watch event (`main.training_job_event`; a run succeeded): the services that serve its
    artifact look again at once."""
    TRAINING_RESULTS.apply_event(job, deleted=deleted)
    meta = job["metadata"]
    for key in services_serving(LOOPS.bodies, meta["namespace"], meta["name"]):
        LOOPS.wake(key)


@kopf.on.event("modelfleet.dev", "v1alpha1", PLURAL)
@counts_watch_events
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
@counts_watch_events
async def region_object_event(event: dict[str, Any], resource: kopf.Resource, **_: Any) -> None:
    """A region's Deployment or Service changed or went: the index keeps it, the service's loop looks again."""
    store = DEPLOYMENTS if resource.plural == "deployments" else SERVICES
    store.apply_event(event["object"], deleted=event.get("type") == "DELETED")
    meta = event["object"]["metadata"]
    LOOPS.wake((meta["namespace"], meta["labels"][SERVICE_NAME_LABEL]))


def is_server(labels: dict[str, str]) -> bool:
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY and SERVICE_NAME_LABEL in labels


def server_changed(pod: dict[str, Any], deleted: bool) -> None:
    """A model server pod's watch event (`main.pod_event`): the index keeps it, the service's loop looks again
    (its tick waits for the autoscaling interval)."""
    SERVER_PODS.apply_event(pod, deleted=deleted)
    meta = pod["metadata"]
    LOOPS.wake((meta["namespace"], meta["labels"][SERVICE_NAME_LABEL]))
