"""The fake GPU node inventory of the local test cluster (pure builders, no cluster needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelfleet.api.common import GPU_PRODUCT_LABEL, GPU_RESOURCE, HOSTNAME_LABEL, REGION_LABEL, ZONE_LABEL

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
GPUS_PER_NODE = {"H100": 8, "A100": 8, "T4": 4, "L4": 4}
RUN_PODS_LABEL = "sim.modelfleet.dev/run-pods"
"""Nodes with this label "true" run their pods for real (modelfleet.devcluster.runner); KWOK simulates the rest."""
RUN_NODE_PREFIX = "run-"
"""Names of run-pods nodes start so: KWOK's stages (stages.yaml), which see only the pod, leave their pods alone."""
RUN_PODS_TAINT = {"key": RUN_PODS_LABEL, "value": "true", "effect": "PreferNoSchedule"}
"""Keeps the scheduler from putting other tests' pods on run-pods nodes while any other node fits (a pod that
must be in region local still lands there; the operator's planner pins workers regardless of this soft taint)."""
LOCAL_REGION = "local"


@dataclass(frozen=True)
class NodeGroup:
    region: str
    zone: str
    gpu_type: str | None
    count: int
    run_pods: bool = False


def default_inventory() -> list[NodeGroup]:
    """Three regions with two zones each and a mix of GPU types, plus a CPU node per region."""
    groups: list[NodeGroup] = []
    layout = {
        "cn-hangzhou": {"H100": 2, "A100": 1, "T4": 1},
        "cn-beijing": {"A100": 2, "T4": 1},
        "us-west-1": {"H100": 1, "T4": 2},
    }
    for region, per_zone in layout.items():
        for zone_suffix in ("a", "b"):
            zone = f"{region}{zone_suffix}"
            groups.extend(NodeGroup(region, zone, gpu, count) for gpu, count in per_zone.items())
        groups.append(NodeGroup(region, f"{region}a", None, 1))
    return groups


def run_pods_inventory() -> list[NodeGroup]:
    """Region `local`: two L4 nodes and a CPU node whose pods run as local processes (the train-to-serve path)."""
    return [
        NodeGroup(LOCAL_REGION, f"{LOCAL_REGION}-a", gpu, count, run_pods=True) for gpu, count in (("L4", 2), (None, 1))
    ]


def fake_node(name: str, group: NodeGroup) -> dict[str, Any]:
    labels = {
        HOSTNAME_LABEL: name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        REGION_LABEL: group.region,
        ZONE_LABEL: group.zone,
    }
    capacity = {"cpu": "96", "memory": "1Ti", "pods": "110"}
    spec: dict[str, Any] = {}
    if group.gpu_type:
        labels[GPU_PRODUCT_LABEL] = group.gpu_type
        capacity[GPU_RESOURCE] = str(GPUS_PER_NODE[group.gpu_type])
        spec["taints"] = [GPU_TAINT]
    if group.run_pods:
        labels[RUN_PODS_LABEL] = "true"
        spec["taints"] = [*spec.get("taints", []), RUN_PODS_TAINT]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_NODE_ANNOTATION: "fake"}},
        "spec": spec,
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def fake_nodes(groups: list[NodeGroup]) -> list[dict[str, Any]]:
    """Node manifests named <zone>-<gpu type or cpu>-<i>, run-<zone>-... for run-pods nodes."""
    nodes = []
    for group in groups:
        kind = (group.gpu_type or "cpu").lower()
        prefix = RUN_NODE_PREFIX if group.run_pods else ""
        nodes.extend(fake_node(f"{prefix}{group.zone}-{kind}-{i}", group) for i in range(group.count))
    return nodes
