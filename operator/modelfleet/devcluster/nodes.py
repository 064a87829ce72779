"""The fake GPU node inventory of the local test cluster (pure builders, no cluster needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelfleet.api.common import GPU_PRODUCT_LABEL, GPU_RESOURCE, HOSTNAME_LABEL, REGION_LABEL, ZONE_LABEL

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
GPUS_PER_NODE = {"H100": 8, "A100": 8, "T4": 4}


@dataclass(frozen=True)
class NodeGroup:
    region: str
    zone: str
    gpu_type: str | None
    count: int


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
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_NODE_ANNOTATION: "fake"}},
        "spec": spec,
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def fake_nodes(groups: list[NodeGroup]) -> list[dict[str, Any]]:
    """Node manifests named <zone>-<gpu type or cpu>-<i>."""
    nodes = []
    for group in groups:
        kind = (group.gpu_type or "cpu").lower()
        nodes.extend(fake_node(f"{group.zone}-{kind}-{i}", group) for i in range(group.count))
    return nodes
