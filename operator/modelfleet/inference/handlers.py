"""kopf handlers for InferenceService: per region, make the Deployment and Service, observe load, scale."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from modelfleet import kube
from modelfleet.api.common import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    REGION_NAME_LABEL,
    SERVICE_NAME_LABEL,
    now_iso,
)
from modelfleet.api.inference import InferenceServiceSpec, MetricsSource, Region, ServingPhase
from modelfleet.cluster_state import CLUSTER
from modelfleet.inference.autoscaler import RegionScaler, decide, split_replicas
from modelfleet.inference.builders import REVISION_ANNOTATION, deployment, region_object_name, service
from modelfleet.inference.observe import ReplicaSample, prometheus_load, region_load, scrape_all
from modelfleet.inference.status import compose_status, pod_ready, region_status
from modelfleet.loops import ReconcileLoops

PLURAL = "inferenceservices"
MERGE_PATCH = "application/merge-patch+json"


class Memory:
    """What the autoscaler keeps between ticks, per service and region (lost on restart, rebuilt in a window)."""

    def __init__(self) -> None:
        self.scalers: dict[tuple[str, str, str], RegionScaler] = defaultdict(RegionScaler)
        self.samples: dict[tuple[str, str, str], dict[str, ReplicaSample]] = defaultdict(dict)

    def forget(self, namespace: str, name: str) -> None:
        for store in (self.scalers, self.samples):
            for key in [k for k in store if k[:2] == (namespace, name)]:
                del store[key]


MEMORY = Memory()


async def reconcile(body: dict[str, Any]) -> float | None:
    meta, prev = body["metadata"], body.get("status") or {}
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation", 1)
    try:
        spec = InferenceServiceSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        LOOPS.remember(await kube.report_invalid_spec(body, PLURAL, exc, "Ready", str(ServingPhase.FAILED)))
        return None

    selector = f"{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"
    deployments = {
        d["metadata"]["labels"].get(REGION_NAME_LABEL): d
        for d in await _list_deployments(namespace, selector)
        if _owned(d, meta["uid"])
    }
    pods_by_region: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pod in await kube.list_pods(namespace, selector):
        pods_by_region[pod["metadata"]["labels"].get(REGION_NAME_LABEL, "")].append(pod)

    wanted = {r.name for r in spec.regions}
    for region, dep in deployments.items():
        if region not in wanted:
            await _remove_region(body, namespace, dep["metadata"]["name"], region)
    manual = split_replicas(spec.replicas, spec.regions)
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
        dep = await _apply_region(meta, spec, region, dep, desired)
        regions_status.append(region_status(name, namespace, region.name, dep, pods, desired, load, last_scale))
    status = compose_status(prev, spec, name, generation, regions_status)
    if any(prev.get(k) != v for k, v in status.items()):
        if status["phase"] != prev.get("phase"):
            kopf.event(body, type="Normal", reason=status["phase"], message=f"service is {status['phase']}")
        LOOPS.remember(await kube.patch_status(PLURAL, namespace, name, status))
    return spec.autoscaling.interval_seconds if spec.autoscaling.enabled else None


def _owned(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


async def _list_deployments(namespace: str, selector: str) -> list[dict[str, Any]]:
    result = await kube.call(kube.apps().list_namespaced_deployment, namespace, label_selector=selector)
    return [kube.api().sanitize_for_serialization(d) for d in result.items]


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
    if policy.source == MetricsSource.PROMETHEUS:
        load, raw = await prometheus_load(policy, namespace, region_object_name(name, region.name), len(ready_pods))
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
    scaler.observe(now, load)
    decision = decide(policy, scaler, now, current, len(ready_pods), region.min_replicas, region.max_replicas)
    return decision.desired, raw, decision.reason


async def _apply_region(
    meta: dict[str, Any], spec: InferenceServiceSpec, region: Region, dep: dict[str, Any] | None, replicas: int
) -> dict[str, Any]:
    """Creates or updates the region's Deployment (replicas and pod template) and Service; returns the Deployment."""
    namespace = meta["namespace"]
    products = CLUSTER.gpu_products(spec.resources.gpu_type) if spec.resources.gpu_type else []
    wanted = deployment(meta, spec, region, replicas, products)
    if dep is None:
        await kube.create(kube.core().create_namespaced_service, namespace, service(meta, spec, region.name))
        await kube.create(kube.apps().create_namespaced_deployment, namespace, wanted)
        return wanted
    current_revision = dep["spec"]["template"]["metadata"].get("annotations", {}).get(REVISION_ANNOTATION)
    wanted_revision = wanted["spec"]["template"]["metadata"]["annotations"][REVISION_ANNOTATION]
    if current_revision == wanted_revision and dep["spec"].get("replicas") == replicas:
        return dep
    patch = {"spec": {"replicas": replicas, "template": wanted["spec"]["template"]}}
    try:
        return kube.api().sanitize_for_serialization(
            await kube.call(
                kube.apps().patch_namespaced_deployment,
                wanted["metadata"]["name"],
                namespace,
                patch,
                _content_type=MERGE_PATCH,
            )
        )
    except ApiException as exc:
        if exc.status == 404:
            return dep
        raise


async def _remove_region(body: dict[str, Any], namespace: str, object_name: str, region: str) -> None:
    kopf.event(body, type="Normal", reason="RegionRemoved", message=f"deleting {object_name} ({region})")
    for delete in (kube.apps().delete_namespaced_deployment, kube.core().delete_namespaced_service):
        try:
            await kube.call(delete, object_name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise


LOOPS = ReconcileLoops("inferenceservice", reconcile)


@kopf.on.event("modelfleet.dev", "v1alpha1", PLURAL)
async def inference_service_event(
    event: dict[str, Any], node_index: kopf.Index, gpu_pod_index: kopf.Index, **_: Any
) -> None:
    CLUSTER.bind(node_index, gpu_pod_index)
    deleted = event.get("type") == "DELETED"
    if deleted:
        meta = event["object"]["metadata"]
        MEMORY.forget(meta["namespace"], meta["name"])
    LOOPS.observe(event["object"], deleted=deleted)


@kopf.on.event("apps", "v1", "deployments", labels={MANAGED_BY_LABEL: MANAGED_BY, SERVICE_NAME_LABEL: kopf.PRESENT})
async def region_deployment_event(event: dict[str, Any], **_: Any) -> None:
    meta = event["object"]["metadata"]
    LOOPS.wake((meta["namespace"], meta["labels"][SERVICE_NAME_LABEL]))
