from __future__ import annotations

from collections import Counter

from modelfleet.devcluster.nodes import default_inventory, fake_nodes


def test_inventory_has_three_regions_two_zones_and_a_gpu_mix() -> None:
    nodes = fake_nodes(default_inventory())
    labels = [n["metadata"]["labels"] for n in nodes]
    regions = Counter(lbl["topology.kubernetes.io/region"] for lbl in labels)
    assert set(regions) == {"cn-hangzhou", "cn-beijing", "us-west-1"}
    for region in regions:
        zones = {lbl["topology.kubernetes.io/zone"] for lbl in labels if lbl["topology.kubernetes.io/region"] == region}
        assert len(zones) == 2
    assert {lbl.get("nvidia.com/gpu.product") for lbl in labels} == {"H100", "A100", "T4", None}
    assert len({n["metadata"]["name"] for n in nodes}) == len(nodes)


def test_gpu_nodes_are_tainted_and_cpu_nodes_are_not() -> None:
    for node in fake_nodes(default_inventory()):
        has_gpu = "nvidia.com/gpu" in node["status"]["capacity"]
        assert bool(node["spec"].get("taints")) == has_gpu
