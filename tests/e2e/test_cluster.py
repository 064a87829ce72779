"""The local control plane is real: GPU nodes with labels and capacity, and the real scheduler binds GPU pods."""

from __future__ import annotations

import ipaddress

import pytest

from tests.support.kube import Kube, wait_for

pytestmark = pytest.mark.e2e


def test_gpu_nodes_carry_regions_zones_types_and_capacity(kube: Kube) -> None:
    nodes = kube.get_json("nodes")["items"]
    regions = {n["metadata"]["labels"].get("topology.kubernetes.io/region") for n in nodes}
    assert {"cn-hangzhou", "cn-beijing", "us-west-1"} <= regions
    zones = {n["metadata"]["labels"].get("topology.kubernetes.io/zone") for n in nodes}
    assert len(zones) >= 6
    gpu_nodes = [n for n in nodes if "nvidia.com/gpu.product" in n["metadata"]["labels"]]
    capacity = {
        n["metadata"]["labels"]["nvidia.com/gpu.product"]: n["status"]["allocatable"]["nvidia.com/gpu"]
        for n in gpu_nodes
    }
    assert capacity == {"H100": "8", "A100": "8", "T4": "4"}
    assert all(t["key"] == "nvidia.com/gpu" for n in gpu_nodes for t in n["spec"]["taints"])
    assert len(nodes) > len(gpu_nodes), "there are CPU-only nodes too"
    table = kube.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product,topology.kubernetes.io/region").stdout
    assert "H100" in table and "cn-beijing" in table


def test_scheduler_binds_gpu_pods_onto_gpu_nodes(kube: Kube, namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gpu-probe"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "gpu-probe"}},
            "template": {
                "metadata": {"labels": {"app": "gpu-probe"}},
                "spec": {
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{
                        "name": "main", "image": "example.com/probe:1",
                        "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    }],
                },
            },
        },
    }  # fmt: skip
    kube.apply(deployment, namespace)

    def running_pods() -> list[dict]:
        pods = kube.get_json("pods", "-n", namespace, "-l", "app=gpu-probe")["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return running if len(running) == 3 else []

    pods = wait_for(running_pods, timeout=60, what="3 running GPU pods")
    nodes = {n["metadata"]["name"]: n for n in kube.get_json("nodes")["items"]}
    for pod in pods:
        node = nodes[pod["spec"]["nodeName"]]
        assert "nvidia.com/gpu.product" in node["metadata"]["labels"]
        assert ipaddress.ip_address(pod["status"]["podIP"]).is_loopback


def test_pod_outcome_follows_the_exit_code_annotation(kube: Kube, namespace: str) -> None:
    for name, code in (("ok", "0"), ("boom", "3")):
        kube.apply({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {"sim.modelfleet.dev/exit-code": code}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "example.com/x:1"}]},
        }, namespace)  # fmt: skip

    def phase(name: str) -> str:
        return kube.get_json("pod", name, "-n", namespace)["status"].get("phase", "")

    wait_for(lambda: phase("ok") == "Succeeded", timeout=30, what="pod ok Succeeded")
    wait_for(lambda: phase("boom") == "Failed", timeout=30, what="pod boom Failed")
    state = kube.get_json("pod", "boom", "-n", namespace)["status"]["containerStatuses"][0]["state"]
    assert state["terminated"]["exitCode"] == 3
