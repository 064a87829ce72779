"""InferenceService status from its Deployments and pods (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelfleet.api.common import Condition, set_condition
from modelfleet.api.inference import InferenceServiceSpec, ServingPhase
from modelfleet.contract import REVISION_ANNOTATION
from modelfleet.inference.builders import region_url, selector_string
from modelfleet.pods import pod_ready


def unschedulable_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    for pod in pods:
        for cond in pod.get("status", {}).get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
            ):
                return cond.get("message") or "no node fits"
    return None


def _annotation(obj: Mapping[str, Any], key: str) -> str | None:
    return (obj.get("metadata", {}).get("annotations") or {}).get(key)


def region_status(
    name: str,
    namespace: str,
    region: str,
    deployment: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    desired: int,
    observed_load: float | None,
    last_scale_time: str | None,
) -> dict[str, Any]:
    dep_spec = (deployment or {}).get("spec", {})
    replicas = int(dep_spec.get("replicas") or 0)
    ready = sum(pod_ready(p) for p in pods)
    revision = ((dep_spec.get("template") or {}).get("metadata", {}).get("annotations") or {}).get(REVISION_ANNOTATION)
    if desired == 0 and replicas == 0:
        reason, message = "ScaledToZero", "no replicas while idle"
    elif (why := unschedulable_message(pods)) and ready < replicas:
        reason, message = "Unschedulable", why
    elif ready == 0:
        reason, message = "Starting", f"0 of {replicas} replicas ready"
    elif outdated := [
        p
        for p in pods
        if _annotation(p, REVISION_ANNOTATION) != revision and not p["metadata"].get("deletionTimestamp")
    ]:
        reason, message = "RollingOut", f"{len(outdated)} replicas still on an older revision"
    else:
        reason, message = "Ready", f"{ready} of {replicas} replicas ready"
    entry: dict[str, Any] = {
        "name": region,
        "replicas": replicas,
        "readyReplicas": ready,
        "desiredReplicas": desired,
        "url": region_url(name, namespace, region),
        "reason": reason,
        "message": message,
    }
    if revision:
        entry["revision"] = revision
    if observed_load is not None:
        entry["observedLoad"] = round(observed_load, 4)
    if last_scale_time:
        entry["lastScaleTime"] = last_scale_time
    return entry


def compose_status(
    prev: Mapping[str, Any],
    spec: InferenceServiceSpec,
    name: str,
    generation: int,
    regions: list[dict[str, Any]],
    gateway_url: str | None = None,
) -> dict[str, Any]:
    """`gateway_url`: the model's URL at the gateway, which becomes status.url (regions keep their direct URLs)."""
    serving = [r for r in regions if r["reason"] in ("Ready", "RollingOut", "ScaledToZero")]
    if len(serving) == len(regions):
        phase = ServingPhase.READY
    elif any(r["readyReplicas"] > 0 for r in regions):
        phase = ServingPhase.DEGRADED
    else:
        phase = ServingPhase.PENDING
    not_serving = [f"{r['name']}: {r['reason']} ({r['message']})" for r in regions if r not in serving]
    conditions = list(prev.get("conditions") or [])
    conditions = set_condition(
        conditions,
        Condition(
            type="Ready",
            status="True" if phase == ServingPhase.READY else "False",
            reason="AllRegionsReady" if phase == ServingPhase.READY else str(phase),
            message="; ".join(not_serving) or f"serving in {', '.join(r['name'] for r in regions)}",
            observed_generation=generation,
        ),
    )
    loaded = any(r["readyReplicas"] > 0 for r in regions)
    conditions = set_condition(
        conditions,
        Condition(
            type="ModelLoaded",
            status="True" if loaded else "False",
            reason="ReplicaReady" if loaded else "NoReadyReplica",
            message=f"{spec.model.uri} ({spec.model.quantization})",
            observed_generation=generation,
        ),
    )
    first_ready = next((r for r in regions if r["readyReplicas"] > 0), None)
    status: dict[str, Any] = {
        "phase": str(phase),
        "conditions": conditions,
        "observedGeneration": generation,
        "replicas": sum(r["replicas"] for r in regions),
        "readyReplicas": sum(r["readyReplicas"] for r in regions),
        "selector": selector_string(name),
        "regions": regions,
        "regionNames": ",".join(r["name"] for r in regions),
    }
    status["url"] = gateway_url or (first_ready["url"] if first_ready else None)
    return status
