"""The GPU queue end to end: reservation ahead of backfill, preemptible backfill, preemption by priority, elastic
growth, quotas.

Every test works on cn-beijing's four 8-GPU A100 nodes and first waits until no pod of an earlier test holds them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import yaml

from tests.support.kube import Kube, wait_for
from tests.support.training import condition, events_of, status, training_job, wait_phase, workers

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]
REGION = ("cn-beijing",)


def busy_a100_pods(kube: Kube) -> list[str]:
    nodes = {
        n["metadata"]["name"]
        for n in kube.get_json("nodes", "-l", "nvidia.com/gpu.product=A100,topology.kubernetes.io/region=cn-beijing")[
            "items"
        ]
    }
    pods = kube.get_json("pods", "-A")["items"]
    return [p["metadata"]["name"] for p in pods if p["spec"].get("nodeName") in nodes]


def unfinished_jobs(kube: Kube) -> list[str]:
    jobs = kube.get_json("trainingjobs", "-A")["items"]
    return [
        f"{j['metadata']['namespace']}/{j['metadata']['name']}"
        for j in jobs
        if (j.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]


@pytest.fixture(autouse=True)
def free_region(kube: Kube) -> None:
    wait_for(lambda: not busy_a100_pods(kube), timeout=90, what="cn-beijing's A100 nodes free of earlier tests")
    # The queue is one per cluster: an earlier test's job still waiting (its namespace being deleted) would hold a
    # place ahead of this test's jobs.
    wait_for(lambda: not unfinished_jobs(kube), timeout=90, what="no earlier test's TrainingJob left unfinished")


def a100_job(name: str, workers: int | dict[str, int], **kw) -> dict:
    return training_job(name, workers=workers, gpus=8, gpu_type="A100", regions=REGION, **kw)


def started_at(kube: Kube, namespace: str, name: str) -> str:
    return condition(status(kube, namespace, name), "Scheduled")["lastTransitionTime"]


@pytest.mark.kwok
def test_a_big_gang_is_admitted_ahead_of_later_small_ones(kube: Kube, namespace: str) -> None:
    kube.apply(a100_job("filler", 3, exit_code=0, run_for="8s"), namespace)
    wait_phase(kube, namespace, "filler", "Running")
    kube.apply(a100_job("big", 4, exit_code=0, run_for="4s"), namespace)
    big = wait_for(lambda: (s := status(kube, namespace, "big")).get("phase") == "Queued" and s, what="big Queued")
    assert big["queue"]["position"] == 1 and len(big["queue"]["reservedNodes"]) == 4, big["queue"]
    small = [a100_job(f"small-{i}", 1, exit_code=0, run_for="2s") for i in range(2)]
    kube.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(small))
    held = wait_for(
        lambda: (
            all(status(kube, namespace, f"small-{i}").get("phase") == "Queued" for i in range(2))
            and [status(kube, namespace, f"small-{i}")["queue"] for i in range(2)]
        ),
        what="small jobs Queued behind the reservation",
    )
    assert sorted(q["position"] for q in held) == [2, 3] and {q["reason"] for q in held} == {"Reserved"}, held
    table = kube.kubectl("get", "trainingjob", "-n", namespace).stdout
    assert "QUEUE" in table.splitlines()[0], table
    # The free node stays free for big until big's workers exist. Its status may lag them (its workers can run their
    # 4 s and free the nodes before the status says Running), so the workers are what is watched.
    while not workers(kube, namespace, "big") and status(kube, namespace, "big").get("phase") == "Queued":
        assert all(workers(kube, namespace, f"small-{i}") == [] for i in range(2)), "a small job took big's node"
        assert status(kube, namespace, "filler").get("phase") in ("Running", "Succeeded")
        time.sleep(0.3)
    for name in ("small-0", "small-1"):
        wait_phase(kube, namespace, name, "Succeeded", timeout=60)
        assert started_at(kube, namespace, name) >= started_at(kube, namespace, "big")
    assert any(e.startswith("Reserved") for e in events_of(kube, namespace, "big"))
    assert any(e.startswith("Admitted") for e in events_of(kube, namespace, "big"))


@pytest.mark.kwok
def test_a_checkpointing_job_backfills_onto_a_reservation_and_yields_it_when_the_holder_can_start(
    kube: Kube, namespace: str
) -> None:
    kube.apply(a100_job("filler", 3, exit_code=0, run_for="15s"), namespace)
    wait_phase(kube, namespace, "filler", "Running")
    kube.apply(a100_job("big", 4, exit_code=0, run_for="4s"), namespace)
    wait_for(lambda: status(kube, namespace, "big").get("queue", {}).get("reservedNodes"), what="big's reservation")
    kube.apply(a100_job("resumable", 1, checkpoint={"path": "/ckpt"}), namespace)  # runs until stopped
    wait_phase(kube, namespace, "resumable", "Running", timeout=30)
    preempted = wait_for(
        lambda: (s := status(kube, namespace, "resumable")) and condition(s, "Preempted").get("status") == "True" and s,
        timeout=60,
        what="resumable preempted once filler ended",
    )
    assert f"for {namespace}/big (backfill, queued after it)" in condition(preempted, "Preempted")["message"]
    wait_phase(kube, namespace, "big", "Succeeded", timeout=60)
    back = wait_phase(kube, namespace, "resumable", "Running", timeout=60)
    assert back["restarts"] == 0, "a preemption is not a failure"


@pytest.fixture
def priority_classes(kube: Kube, namespace: str) -> Iterator[str]:
    high = f"{namespace}-high"
    kube.apply({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": high},
                "value": 1000, "description": "test_queue"})  # fmt: skip
    yield high
    kube.kubectl("delete", "priorityclass", high, check=False)


@pytest.mark.kwok
def test_a_high_priority_job_preempts_and_the_preempted_one_comes_back(
    kube: Kube, namespace: str, priority_classes: str
) -> None:
    kube.apply(a100_job("low", 4), namespace)  # runs until stopped
    wait_phase(kube, namespace, "low", "Running")
    kube.apply(a100_job("high", 2, exit_code=0, run_for="5s", priorityClassName=priority_classes), namespace)
    preempted = wait_for(
        lambda: (s := status(kube, namespace, "low")) and condition(s, "Preempted").get("status") == "True" and s,
        what="low Preempted",
    )
    assert "for " + namespace + "/high (priority 1000 > 0)" in condition(preempted, "Preempted")["message"]
    wait_phase(kube, namespace, "high", "Running", timeout=60)
    low = status(kube, namespace, "low")
    assert low["phase"] == "Queued" and low["queue"]["position"] == 1, low
    assert any(e.startswith("Preempted") for e in events_of(kube, namespace, "low"))
    wait_phase(kube, namespace, "high", "Succeeded", timeout=60)
    back = wait_phase(kube, namespace, "low", "Running", timeout=60)
    assert back["ready"] == "4/4" and back["restarts"] == 0, "a preemption is not a failure"
    assert condition(back, "Preempted") == {**condition(back, "Preempted"), "status": "False", "reason": "Readmitted"}


@pytest.mark.kwok
def test_an_elastic_job_starts_at_what_fits_and_grows_when_capacity_frees(kube: Kube, namespace: str) -> None:
    kube.apply(a100_job("blocker", 2, exit_code=0, run_for="6s"), namespace)
    wait_phase(kube, namespace, "blocker", "Running")
    kube.apply(a100_job("elastic", {"minReplicas": 1, "maxReplicas": 4}), namespace)
    first = wait_phase(kube, namespace, "elastic", "Running", timeout=60)
    assert first["ready"] == "2/2", first
    grown = wait_for(
        lambda: (s := status(kube, namespace, "elastic")).get("ready") == "4/4" and s.get("phase") == "Running" and s,
        timeout=90,
        what="elastic grown to 4 workers",
    )
    assert condition(grown, "Resized")["status"] == "False" and grown["restarts"] == 0
    assert any(e.startswith("ElasticGrow: growing from 2 to 4 workers") for e in events_of(kube, namespace, "elastic"))
    assert len(workers(kube, namespace, "elastic")) == 4


def gpu_quota(namespace: str, gpus: int, borrowing: bool = False) -> dict:
    return {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "GPUQuota", "metadata": {"name": namespace},
            "spec": {"gpus": gpus, "borrowing": borrowing}}  # fmt: skip


@pytest.fixture
def lender(kube: Kube) -> Iterator[str]:
    """A second namespace; both namespaces' GPUQuotas go with it."""
    name = kube.new_namespace()
    yield name
    kube.kubectl("delete", "gpuquota", name, check=False)
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.kwok
def test_a_namespace_waits_at_its_gpu_quota_borrows_idle_quota_and_gives_it_back(
    kube: Kube, namespace: str, lender: str
) -> None:
    refused = kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({**gpu_quota(namespace, 8), "spec": {}}),
                           check=False)  # fmt: skip
    assert refused.returncode != 0 and "set gpus, gpusPerType or both" in refused.stderr, refused.stderr
    try:
        kube.apply(gpu_quota(namespace, 8))
        kube.apply(gpu_quota(lender, 24))
        kube.apply(a100_job("mine", 1), namespace)  # jobs run until stopped
        wait_phase(kube, namespace, "mine", "Running")
        kube.apply(a100_job("extra", 2), namespace)
        over = wait_for(
            lambda: (s := status(kube, namespace, "extra")).get("queue", {}).get("reason") == "QuotaExceeded" and s,
            what="extra waiting for quota",
        )
        assert over["phase"] == "Queued" and over["queue"]["message"].startswith(
            f"namespace {namespace} holds 8 of its 8 GPU quota and this job needs 16"
        ), over["queue"]
        kube.apply(gpu_quota(namespace, 8, borrowing=True))  # the lender's 24 idle GPUs may be borrowed
        wait_phase(kube, namespace, "extra", "Running", timeout=60)
        kube.apply(a100_job("owner", 3), lender)  # within its own quota, but only 8 GPUs are free: take them back
        wait_phase(kube, lender, "owner", "Running", timeout=60)
        extra = wait_for(
            lambda: (s := status(kube, namespace, "extra")).get("queue", {}).get("reason") == "QuotaExceeded" and s,
            what="extra preempted and waiting for quota again",
        )
        assert condition(extra, "Preempted")["status"] == "True", extra
        assert f"taken back for {lender}/owner" in condition(extra, "Preempted")["message"]
        assert status(kube, namespace, "mine")["phase"] == "Running", "a gang within its own quota is not touched"
    finally:
        kube.kubectl("delete", "gpuquota", namespace, check=False)
