"""The operator's view of GPU capacity: kopf indexes of nodes and GPU pods, plus placements in flight."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelfleet.scheduling.cluster import NodeInfo, build_view, pod_gpu_request, pod_holds_resources, pod_node
from modelfleet.scheduling.gpus import gpu_type_matches

RESERVATION_TTL = 60.0


def slim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """Only what capacity accounting needs, to keep the index small."""
    containers = [{"resources": c.get("resources") or {}} for c in pod.get("spec", {}).get("containers", [])]
    spec = {"containers": containers}
    if node := pod_node(pod):
        spec["nodeName"] = node
    meta = pod.get("metadata", {})
    return {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": spec,
        "status": {"phase": pod.get("status", {}).get("phase")},
    }


def gpu_pod_entry(pod: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Index entry {node: slim pod} for a live pod that holds GPUs on a known node, else {}.

    Never None: kopf keeps an object's previous entry when its index function returns None.
    """
    node = pod_node(pod)
    if node and pod_holds_resources(pod) and pod_gpu_request(pod) > 0:
        return {node: slim_pod(pod)}
    return {}


@dataclass
class ClusterState:
    nodes: Mapping[str, Iterable[dict[str, Any]]] = field(default_factory=dict)
    """kopf index: node name -> [node]."""
    gpu_pods: Mapping[str, Iterable[dict[str, Any]]] = field(default_factory=dict)
    """kopf index: node name -> [slim pod]."""
    reservations: dict[tuple[str, str], tuple[dict[str, Any], float]] = field(default_factory=dict)

    def bind(self, nodes: Mapping[str, Any], gpu_pods: Mapping[str, Any]) -> None:
        self.nodes, self.gpu_pods = nodes, gpu_pods

    def reserve(self, pods: Iterable[dict[str, Any]]) -> None:
        """Counts freshly created pods until the watch delivers them, so two plans never share GPUs."""
        expires = time.monotonic() + RESERVATION_TTL
        for pod in pods:
            meta = pod["metadata"]
            self.reservations[(meta["namespace"], meta["name"])] = (slim_pod(pod), expires)

    def release(self, namespace: str, names: Iterable[str]) -> None:
        for name in names:
            self.reservations.pop((namespace, name), None)

    def node_list(self) -> list[dict[str, Any]]:
        return [node for store in self.nodes.values() for node in store]

    def view(self) -> list[NodeInfo]:
        indexed = [pod for store in self.gpu_pods.values() for pod in store]
        seen = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in indexed}
        now = time.monotonic()
        for key, (_, expires) in list(self.reservations.items()):
            if key in seen or expires < now:
                del self.reservations[key]
        pending = [pod for pod, _ in self.reservations.values()]
        return build_view(self.node_list(), [*indexed, *pending], datetime.now(UTC))

    def gpu_products(self, wanted: str) -> list[str]:
        """The product labels in the cluster that a requested GPU type matches."""
        return sorted(
            {n.gpu_type for n in self.nodes_by_name().values() if n.gpu_type and gpu_type_matches(n.gpu_type, wanted)}
        )

    def nodes_by_name(self) -> dict[str, NodeInfo]:
        return {n.name: n for n in build_view(self.node_list(), [], datetime.now(UTC))}


CLUSTER = ClusterState()
