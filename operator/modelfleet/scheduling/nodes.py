"""A snapshot of the nodes a gang may land on, with the GPUs pods already hold subtracted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from modelfleet.api.common import GPU_PRODUCT_LABEL, GPU_RESOURCE, HOSTNAME_LABEL, REGION_LABEL, ZONE_LABEL

NODE_NOT_READY_GRACE = timedelta(seconds=40)


@dataclass(frozen=True, slots=True)  # tens of thousands alive at once in a large queue pass
class NodeInfo:
    name: str
    region: str
    zone: str
    gpu_type: str | None
    gpus: int
    free_gpus: int
    ready: bool = True
    unschedulable: bool = False
    taints: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    """(key, effect) of each NoSchedule/NoExecute taint."""


def quantity_to_int(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def pod_gpu_request(pod: Mapping[str, Any]) -> int:
    total = 0
    for container in pod.get("spec", {}).get("containers", []):
        resources = container.get("resources") or {}
        amount = (resources.get("limits") or {}).get(GPU_RESOURCE) or (resources.get("requests") or {}).get(
            GPU_RESOURCE
        )
        total += quantity_to_int(amount)
    return total


def pod_node(pod: Mapping[str, Any]) -> str | None:
    """The node a pod runs on, or the node modelfleet pinned it to before it was bound."""
    spec = pod.get("spec", {})
    if spec.get("nodeName"):
        return spec["nodeName"]
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in affinity.get("nodeSelectorTerms", []):
        for expr in term.get("matchExpressions", []):
            if expr.get("key") == HOSTNAME_LABEL and expr.get("operator") == "In" and len(expr.get("values", [])) == 1:
                return expr["values"][0]
    return None


def pod_holds_resources(pod: Mapping[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")


def node_is_ready(node: Mapping[str, Any], now: datetime | None = None) -> bool:
    """Ready unless its Ready condition has been False/Unknown for longer than the grace period."""
    for cond in node.get("status", {}).get("conditions", []):
        if cond.get("type") != "Ready":
            continue
        if cond.get("status") == "True":
            return True
        since = cond.get("lastTransitionTime")
        if since and now:
            changed = datetime.fromisoformat(since.replace("Z", "+00:00"))
            return now - changed < NODE_NOT_READY_GRACE
        return False
    return False


def build_view(
    nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]], now: datetime | None = None
) -> list[NodeInfo]:
    """NodeInfo for every node, free GPUs = allocatable minus what live pods (bound or pinned) hold."""
    used: dict[str, int] = {}
    for pod in pods:
        node = pod_node(pod)
        if node and pod_holds_resources(pod):
            used[node] = used.get(node, 0) + pod_gpu_request(pod)
    view = []
    for node in nodes:
        meta, spec, status = node.get("metadata", {}), node.get("spec", {}), node.get("status", {})
        labels = meta.get("labels") or {}
        gpus = quantity_to_int((status.get("allocatable") or {}).get(GPU_RESOURCE, 0))
        name = meta["name"]
        view.append(
            NodeInfo(
                name=name,
                region=labels.get(REGION_LABEL, ""),
                zone=labels.get(ZONE_LABEL, ""),
                gpu_type=labels.get(GPU_PRODUCT_LABEL),
                gpus=gpus,
                free_gpus=max(0, gpus - used.get(name, 0)),
                ready=node_is_ready(node, now) and not meta.get("deletionTimestamp"),
                unschedulable=bool(spec.get("unschedulable")),
                taints=tuple(
                    (t.get("key", ""), t.get("effect", ""))
                    for t in spec.get("taints") or []
                    if t.get("effect") in ("NoSchedule", "NoExecute")
                ),
            )
        )
    return view
