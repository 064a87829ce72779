"""The local control plane is real: GPU nodes with labels and capacity, and the real scheduler binds GPU pods."""

from __future__ import annotations

import ipaddress
import os
import signal
import time

import pytest
from kubernetes import client

from modelfleet.devcluster import DevCluster
from modelfleet.devcluster.nodes import GPUS_PER_NODE
from tests.support.kube import Kube, wait_for
from tests.support.operator import OperatorProcess
from tests.support.training import training_job, wait_phase
from tests.support.watchgap import watch_gap

pytestmark = pytest.mark.e2e
TERMINATION_DELAY = "sim.modelfleet.dev/termination-delay"


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
    assert {"H100", "A100", "T4"} <= set(capacity)
    assert capacity == {product: str(GPUS_PER_NODE[product]) for product in capacity}
    assert all(
        any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in n["spec"]["taints"])
        for n in gpu_nodes
    )
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


@pytest.mark.kwok
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


def _running_pod(kube: Kube, namespace: str, name: str, grace: int, annotations: dict[str, str]) -> None:
    kube.apply({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"terminationGracePeriodSeconds": grace, "restartPolicy": "Never",
                 "containers": [{"name": "main", "image": "example.com/x:1"}]},
    }, namespace)  # fmt: skip


@pytest.mark.kwok
def test_deleted_pods_stay_terminating_for_their_grace_period(kube: Kube, namespace: str) -> None:
    """As on a real kubelet: a deleted pod is Terminating until its deletionTimestamp (request + grace), or for
    sim.modelfleet.dev/termination-delay when annotated; grace 0 removes it at once."""
    grace = 5
    pods = {"graceful": (grace, {}), "annotated": (30, {TERMINATION_DELAY: "2s"}), "forced": (30, {})}
    for name, (seconds, notes) in pods.items():
        _running_pod(kube, namespace, name, seconds, notes)
    core = client.CoreV1Api(kube.api_client())
    wait_for(
        lambda: all(p.status.phase == "Running" for p in core.list_namespaced_pod(namespace).items),
        timeout=30,
        what="3 running pods",
    )
    deleted: dict[str, float] = {}
    for name in pods:
        deleted[name] = time.monotonic()
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0 if name == "forced" else None)
    gone: dict[str, float] = {}
    terminating: dict[str, float] = {}
    deadline = time.monotonic() + grace + 10
    while len(gone) < len(pods) and time.monotonic() < deadline:
        present = {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}
        now = time.monotonic()
        for name in pods:
            if name in present:
                assert present[name].metadata.deletion_timestamp, f"{name} lost its deletionTimestamp"
                terminating[name] = now - deleted[name]
            else:
                gone.setdefault(name, now - deleted[name])
        time.sleep(0.1)
    assert set(gone) == set(pods), f"still there after {grace + 10}s: {set(pods) - set(gone)}"
    # deletionTimestamp has whole seconds: the pod may go up to 1 s before request + grace, and the last poll that
    # saw it Terminating can be a poll earlier still (CI saw 3.94 s for a 5 s grace)
    assert terminating["graceful"] >= grace - 1.5, (terminating, gone)
    assert gone["graceful"] <= grace + 3, gone
    assert 1.5 <= gone["annotated"] <= 5, (terminating, gone)
    assert "forced" not in terminating or terminating["forced"] < 0.5, terminating
    assert gone["forced"] < 1, gone


def _pod_runs(kube: Kube, namespace: str, name: str) -> None:
    _running_pod(kube, namespace, name, 0, {})
    wait_for(
        lambda: kube.get_json("pod", name, "-n", namespace)["status"].get("phase") == "Running",
        timeout=60,
        what=f"pod {name} Running (scheduler and kwok reconnected)",
    )


def test_apiserver_restarts_mid_test_and_clients_work_again(cluster: DevCluster, kube: Kube, namespace: str) -> None:
    kube.kubectl("create", "configmap", "before", "-n", namespace, "--from-literal=k=v")
    pid = cluster.processes["kube-apiserver"]
    cluster.restart("kube-apiserver", down_for=1)
    assert cluster.processes["kube-apiserver"] != pid
    assert kube.kubectl("get", "configmap", "before", "-n", namespace, "-o", "jsonpath={.data.k}").stdout == "v"
    kube.kubectl("create", "configmap", "after", "-n", namespace)
    _pod_runs(kube, namespace, "after-apiserver-restart")


def test_a_component_that_exits_on_its_own_is_revived_and_one_stopped_on_purpose_is_not(
    cluster: DevCluster, kube: Kube, namespace: str
) -> None:
    crashed = cluster.processes["kube-scheduler"]
    os.kill(crashed, signal.SIGKILL)  # as kube-scheduler's own exit on an inconsistent cache
    wait_for(lambda: cluster.revive() == ["kube-scheduler"], timeout=30, what="kube-scheduler found exited")
    assert cluster.processes["kube-scheduler"] != crashed
    _pod_runs(kube, namespace, "after-scheduler-crash")
    cluster.stop_component("kwok")
    try:
        assert cluster.revive() == []
    finally:
        cluster.start_component("kwok")


def test_etcd_restarts_and_the_data_survives(cluster: DevCluster, kube: Kube, namespace: str) -> None:
    kube.kubectl("create", "configmap", "kept", "-n", namespace, "--from-literal=k=v")
    cluster.restart("etcd", kill=True)
    assert kube.kubectl("get", "configmap", "kept", "-n", namespace, "-o", "jsonpath={.data.k}").stdout == "v"
    _pod_runs(kube, namespace, "after-etcd-restart")


@pytest.mark.kwok
def test_watch_gap_gives_410_and_the_operator_keeps_working(
    cluster: DevCluster, kube: Kube, namespace: str, local_operator: OperatorProcess
) -> None:
    """The helper's gap is real (a watch from before it gets 410 Gone) and the operator, which re-lists, acts on
    a job created while it was stopped."""
    gap = watch_gap(
        cluster, kube, local_operator, during=lambda: kube.apply(training_job("gap", workers=1, exit_code=0), namespace)
    )
    assert gap.gone, f"a watch from resourceVersion {gap.resource_version} was not answered 410 after the gap"
    assert local_operator.proc is not None and local_operator.proc.poll() is None
    wait_phase(kube, namespace, "gap", "Succeeded", timeout=90)
