"""Watch-fed indexes of what modelfleet made, by owner: a reconcile reads its children here, not by a LIST.

Each index keeps only the fields the decisions read (a worker's gang attempt, node, gates, exit; a model server's
readiness and revision; a Deployment's replicas and revision), not whole pods. The watches feed them, a pass puts
in what it just created or deleted (so the next pass never makes twins), and `resync` heals them after a watch gap
as it heals the capacity stores.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from modelfleet.capacity import ObjectStore, Slim
from modelfleet.contract import JOB_NAME_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL, SHARD_WEIGHTS_ENV
from modelfleet.loops import shared_strings

DECISION_ENV = frozenset({"WORLD_SIZE", SHARD_WEIGHTS_ENV})
"""The only env vars a worker's pod is read for (its gang's size and its shard weight)."""
POD_CONDITIONS = frozenset({"Ready", "PodScheduled"})
OWN_PREFIX = "modelfleet.dev/"
TERMINATED_FIELDS = ("exitCode", "reason", "finishedAt", "message")


def _ours(meta: Mapping[str, Any], owner_label: str) -> bool:
    labels = meta.get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY and owner_label in labels


def _slim_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    slim = {key: meta.get(key) for key in ("name", "namespace", "uid")}
    slim["labels"] = dict(meta.get("labels") or {})
    slim["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(OWN_PREFIX)}
    slim["ownerReferences"] = [
        {"uid": ref.get("uid"), "controller": bool(ref.get("controller"))} for ref in meta.get("ownerReferences") or []
    ]
    if meta.get("deletionTimestamp"):
        slim["deletionTimestamp"] = meta["deletionTimestamp"]
    return slim


def _slim_pod_status(status: Mapping[str, Any]) -> dict[str, Any]:
    slim = {key: status[key] for key in ("phase", "reason", "podIP") if status.get(key)}
    slim["conditions"] = [
        {key: c.get(key) for key in ("type", "status", "reason", "message")}
        for c in status.get("conditions") or []
        if c.get("type") in POD_CONDITIONS
    ]
    slim["containerStatuses"] = [
        {"name": cs.get("name"), "state": {"terminated": {key: terminated.get(key) for key in TERMINATED_FIELDS}}}
        for cs in status.get("containerStatuses") or []
        if (terminated := (cs.get("state") or {}).get("terminated"))
    ]
    return slim


def slim_pod(owner_label: str) -> Slim:
    """The slim form of the pods that carry `owner_label` and modelfleet's managed-by label; None for others."""

    def slim(pod: Mapping[str, Any]) -> dict[str, Any] | None:
        meta = pod.get("metadata") or {}
        if not _ours(meta, owner_label):
            return None
        spec = pod.get("spec") or {}
        containers = [
            {
                "name": c.get("name"),
                "ports": c.get("ports") or [],
                "env": [e for e in c.get("env") or [] if e.get("name") in DECISION_ENV],
            }
            for c in spec.get("containers") or []
        ]
        slim_spec: dict[str, Any] = {"containers": containers}
        placement = ("nodeName", "schedulingGates") if owner_label == JOB_NAME_LABEL else ("nodeName",)
        slim_spec.update({key: spec[key] for key in placement if spec.get(key)})
        if owner_label == JOB_NAME_LABEL and not spec.get("nodeName") and spec.get("affinity"):
            slim_spec["affinity"] = spec["affinity"]  # the node it is pinned to until it is bound (`pod_node`)
        slim = {"metadata": _slim_meta(meta), "spec": slim_spec, "status": _slim_pod_status(pod.get("status") or {})}
        return shared_strings(slim)

    return slim


def slim_deployment(dep: Mapping[str, Any]) -> dict[str, Any] | None:
    """A model server Deployment: its replicas and its pod template's revision."""
    meta = dep.get("metadata") or {}
    if not _ours(meta, SERVICE_NAME_LABEL):
        return None
    spec = dep.get("spec") or {}
    annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    template = {"metadata": {"annotations": {k: v for k, v in annotations.items() if k.startswith(OWN_PREFIX)}}}
    return {"metadata": _slim_meta(meta), "spec": {"replicas": spec.get("replicas"), "template": template}}


def slim_service(svc: Mapping[str, Any]) -> dict[str, Any] | None:
    """A region's Service: its whole metadata but managedFields, and spec (small), to compare with what the builder
    wants."""
    meta = svc.get("metadata") or {}
    if not _ours(meta, SERVICE_NAME_LABEL):
        return None
    slim_meta = _slim_meta(meta)
    slim_meta["ownerReferences"] = list(meta.get("ownerReferences") or [])
    slim_meta["annotations"] = dict(meta.get("annotations") or {})
    return {"metadata": slim_meta, "spec": dict(svc.get("spec") or {})}


def slim_training_result(job: Mapping[str, Any]) -> dict[str, Any] | None:
    """What an InferenceService serving a job's artifact reads of it: phase and artifact."""
    status = job.get("status") or {}
    meta = job.get("metadata") or {}
    slim_status = {key: status[key] for key in ("phase", "artifact") if status.get(key)}
    return {"metadata": {key: meta.get(key) for key in ("name", "namespace", "uid")}, "status": slim_status}


def controller_uid(value: Mapping[str, Any]) -> Hashable | None:
    refs = value["metadata"].get("ownerReferences") or []
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    return ref.get("uid") if ref else None


def service_key(value: Mapping[str, Any]) -> Hashable:
    """(namespace, InferenceService name): model server pods are owned by ReplicaSets, not by the service."""
    return value["metadata"]["namespace"], value["metadata"]["labels"][SERVICE_NAME_LABEL]


def name_key(value: Mapping[str, Any]) -> Hashable:
    return value["metadata"]["namespace"], value["metadata"]["name"]


WORKER_PODS = ObjectStore(slim_pod(JOB_NAME_LABEL), owner=controller_uid)
"""TrainingJob workers, by the job's uid."""
SERVER_PODS = ObjectStore(slim_pod(SERVICE_NAME_LABEL), owner=service_key)
"""Model server pods, by (namespace, InferenceService name)."""
DEPLOYMENTS = ObjectStore(slim_deployment, owner=controller_uid)
"""Model server Deployments, by the InferenceService's uid."""
SERVICES = ObjectStore(slim_service, owner=controller_uid)
"""Region Services, by the InferenceService's uid."""
TRAINING_RESULTS = ObjectStore(slim_training_result, owner=name_key)
"""Every TrainingJob's phase and artifact, by (namespace, name), for services that serve an artifact."""
