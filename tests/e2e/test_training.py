"""TrainingJob end to end: the operator as a process, the real apiserver and scheduler, KWOK-simulated workers."""

from __future__ import annotations

import time

import pytest
import yaml

from modelfleet.devcluster.nodes import default_inventory, fake_nodes
from tests.support.kube import Kube, wait_for
from tests.support.operator import OperatorProcess
from tests.support.progress import rank_zero_progress
from tests.support.training import (
    condition,
    env_of,
    events_of,
    status,
    training_job,
    wait_phase,
    workers,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]


def bound_counts(kube: Kube, namespace: str, names: list[str]) -> dict[str, int]:
    return {n: sum(bool(p["spec"].get("nodeName")) for p in workers(kube, namespace, n)) for n in names}


@pytest.mark.kwok
def test_four_h100_workers_run_and_succeed_with_torch_env_and_pinned_affinity(kube: Kube, namespace: str) -> None:
    kube.apply(training_job("mlp", workers=4, gpus=4, regions=("cn-hangzhou",), exit_code=0, run_for="4s"), namespace)
    running = wait_phase(kube, namespace, "mlp", "Running")
    assert running["ready"] == "4/4" and running["gpus"] == 16 and running["region"] == "cn-hangzhou"
    assert condition(running, "Scheduled")["reason"] == "GangPlaced"
    pods = workers(kube, namespace, "mlp")
    nodes = {n["metadata"]["name"]: n for n in kube.get_json("nodes")["items"]}
    assert [p["metadata"]["name"] for p in pods] == [f"mlp-worker-{i}" for i in range(4)]
    for i, pod in enumerate(pods):
        env = env_of(pod)
        assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "mlp-worker-0.mlp"
        assert env["MASTER_PORT"] == "29500" and env["WORLD_SIZE"] == "4" and env["RANK"] == str(i)
        assert env["PET_NNODES"] == "4" and env["PET_NODE_RANK"] == str(i) and env["LOCAL_WORLD_SIZE"] == "4"
        assert pod["spec"]["hostname"] == f"mlp-worker-{i}" and pod["spec"]["subdomain"] == "mlp"
        assert not pod["spec"].get("schedulingGates")
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        exprs = {e["key"]: e["values"] for e in terms["nodeSelectorTerms"][0]["matchExpressions"]}
        assert exprs["kubernetes.io/hostname"] == [pod["spec"]["nodeName"]]
        assert exprs["topology.kubernetes.io/region"] == ["cn-hangzhou"]
        node_labels = nodes[pod["spec"]["nodeName"]]["metadata"]["labels"]
        assert node_labels["nvidia.com/gpu.product"] == "H100"
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert pod["metadata"]["labels"]["modelfleet.dev/replica-index"] == str(i)
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"
    assert len({p["spec"]["nodeName"] for p in pods}) == 2, "Pack: 4 x 4 GPUs on two 8-GPU nodes"
    service = kube.get_json("service", "mlp", "-n", namespace)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    done = wait_phase(kube, namespace, "mlp", "Succeeded", timeout=30)
    assert done["completionTime"] and condition(done, "Succeeded")["status"] == "True"
    assert any(e.startswith("GangPlaced") for e in events_of(kube, namespace, "mlp"))


@pytest.mark.kwok
def test_job_too_big_waits_with_the_reason_and_starts_when_capacity_frees(kube: Kube, namespace: str) -> None:
    kube.apply(training_job("first", workers=2, regions=("us-west-1",), exit_code=0, run_for="6s"), namespace)
    wait_phase(kube, namespace, "first", "Running")
    kube.apply(training_job("second", workers=2, regions=("us-west-1",), exit_code=0), namespace)
    pending = wait_for(
        lambda: (
            condition(status(kube, namespace, "second"), "Scheduled").get("reason") == "Unschedulable"
            and status(kube, namespace, "second")
        ),
        what="second Unschedulable",
    )
    assert pending["phase"] == "Queued"
    assert condition(pending, "Scheduled")["message"].startswith(
        "needs 2 workers x 8 H100 GPUs (16 in all) in us-west-1: at most 0 fit"
    )
    assert workers(kube, namespace, "second") == []
    wait_phase(kube, namespace, "second", "Running", timeout=60)
    wait_phase(kube, namespace, "first", "Succeeded", timeout=5)


@pytest.mark.kwok
def test_competing_gangs_never_both_half_placed(kube: Kube, namespace: str) -> None:
    names = ["gang-a", "gang-b"]
    text = yaml.safe_dump_all(
        [training_job(n, workers=2, regions=("us-west-1",), exit_code=0, run_for="4s") for n in names]
    )
    kube.kubectl("apply", "-n", namespace, "-f", "-", stdin=text)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = bound_counts(kube, namespace, names)
        assert sorted(counts.values()) in ([0, 0], [0, 2], [2, 2]) or counts == {}, counts
        phases = [status(kube, namespace, n).get("phase") for n in names]
        if phases == ["Succeeded", "Succeeded"]:
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"both gangs did not finish: {phases}")


@pytest.mark.kwok
def test_worker_failure_restarts_the_gang_until_backoff_limit(kube: Kube, namespace: str) -> None:
    kube.apply(
        training_job("flaky", workers=3, gpu_type="A100", regions=("cn-beijing",), exit_code=3, backoffLimit=2),
        namespace,
    )
    failed = wait_phase(kube, namespace, "flaky", "Failed", timeout=90)
    assert failed["restarts"] == 2, "every rank failing counts one restart per attempt"
    cond = condition(failed, "Failed")
    assert cond["reason"] == "BackoffLimitExceeded"
    assert "exited with code 3" in cond["message"]
    events = events_of(kube, namespace, "flaky")
    assert sum(e.startswith("GangRestart") for e in events) == 2
    assert all(p["metadata"]["labels"]["modelfleet.dev/attempt"] == "2" for p in workers(kube, namespace, "flaky"))


@pytest.mark.kwok
def test_exit_code_policy_fails_at_once_on_a_code_it_does_not_retry(kube: Kube, namespace: str) -> None:
    kube.apply(
        training_job(
            "strict", workers=1, gpu_type="T4", gpus=1, exit_code=2,
            restartPolicy="ExitCode", retryableExitCodes=[137],
        ),
        namespace,
    )  # fmt: skip
    failed = wait_phase(kube, namespace, "strict", "Failed", timeout=60)
    assert failed["restarts"] == 0
    assert condition(failed, "Failed")["reason"] == "ExitCodeNotRetryable"


@pytest.fixture
def restore_nodes(kube: Kube):
    yield
    kube.apply(yaml.safe_dump_all(fake_nodes(default_inventory())))


@pytest.mark.kwok
def test_lost_node_leads_to_replacement_on_healthy_nodes(kube: Kube, namespace: str, restore_nodes: None) -> None:
    kube.apply(
        training_job("survivor", workers=2, gpu_type="A100", regions=("cn-beijing",), policy="Spread"), namespace
    )
    running = wait_phase(kube, namespace, "survivor", "Running")
    lost = running["placement"][1]["node"]
    kube.kubectl("delete", "node", lost, "--wait=false")
    wait_for(lambda: status(kube, namespace, "survivor").get("restarts") == 1, timeout=60, what="gang restart")
    again = wait_phase(kube, namespace, "survivor", "Running", timeout=60)
    assert lost not in {p["node"] for p in again["placement"]}
    assert {p["spec"]["nodeName"] for p in workers(kube, namespace, "survivor")}.isdisjoint({lost})
    assert any("NodeLost" in e or f"node {lost}" in e for e in events_of(kube, namespace, "survivor"))


def test_suspend_deletes_workers_and_resume_places_them_again(kube: Kube, namespace: str) -> None:
    kube.apply(training_job("pausable", workers=2, gpus=1, gpu_type="T4", regions=("cn-hangzhou",)), namespace)
    wait_phase(kube, namespace, "pausable", "Running")
    kube.kubectl("patch", "trainingjob", "pausable", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    suspended = wait_phase(kube, namespace, "pausable", "Suspended")
    assert condition(suspended, "Suspended")["status"] == "True"
    wait_for(lambda: workers(kube, namespace, "pausable") == [], what="workers deleted")
    kube.kubectl(
        "patch", "trainingjob", "pausable", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    resumed = wait_phase(kube, namespace, "pausable", "Running")
    assert condition(resumed, "Suspended")["reason"] == "Resumed"
    assert len(workers(kube, namespace, "pausable")) == 2


def test_active_deadline_fails_the_job(kube: Kube, namespace: str) -> None:
    kube.apply(training_job("slow", workers=1, gpus=1, gpu_type="T4", activeDeadlineSeconds=3), namespace)
    failed = wait_phase(kube, namespace, "slow", "Failed", timeout=30)
    assert condition(failed, "Failed")["reason"] == "DeadlineExceeded"
    wait_for(
        lambda: all(p["metadata"].get("deletionTimestamp") or p["status"]["phase"] != "Running"
                    for p in workers(kube, namespace, "slow")),
        what="workers stopped",
    )  # fmt: skip


@pytest.mark.kwok
def test_ttl_deletes_a_finished_job(kube: Kube, namespace: str) -> None:
    kube.apply(
        training_job("brief", workers=1, gpus=1, gpu_type="T4", exit_code=0, run_for="1s", ttlSecondsAfterFinished=2),
        namespace,
    )
    wait_phase(kube, namespace, "brief", "Succeeded", timeout=30)
    wait_for(
        lambda: "brief" not in kube.kubectl("get", "trainingjobs", "-n", namespace, "-o", "name").stdout,
        timeout=30,
        what="job deleted by TTL",
    )


@pytest.mark.kwok
def test_mixed_h100_and_a100_gang_gets_shard_weights_by_gpu_speed(kube: Kube, namespace: str) -> None:
    kube.apply(
        training_job("mixed", workers=6, gpus=8, gpu_type=None, regions=("cn-hangzhou",), exit_code=0, run_for="3s"),
        namespace,
    )
    running = wait_phase(kube, namespace, "mixed", "Running")
    by_type: dict[str, set[float]] = {}
    for entry in running["placement"]:
        by_type.setdefault(entry["gpuType"], set()).add(entry["shardWeight"])
    assert set(by_type) == {"H100", "A100"}
    (h100,), (a100,) = by_type["H100"], by_type["A100"]
    assert h100 / a100 == pytest.approx(2.5, rel=1e-3)
    weights = [float(w) for w in env_of(workers(kube, namespace, "mixed")[0])["MODELFLEET_SHARD_WEIGHTS"].split(",")]
    assert sum(weights) == pytest.approx(1.0, abs=1e-5) and len(weights) == 6
    wait_phase(kube, namespace, "mixed", "Succeeded", timeout=30)


@pytest.mark.kwok
def test_elastic_job_takes_the_most_workers_that_fit(kube: Kube, namespace: str) -> None:
    kube.apply(
        training_job("elastic", workers={"minReplicas": 1, "maxReplicas": 5}, gpus=8, regions=("us-west-1",),
                     exit_code=0, run_for="3s"),
        namespace,
    )  # fmt: skip
    running = wait_phase(kube, namespace, "elastic", "Running")
    assert running["ready"] == "2/2"
    env = env_of(workers(kube, namespace, "elastic")[0])
    assert env["PET_NNODES"] == "1:5" and env["PET_RDZV_BACKEND"] == "c10d"
    assert env["PET_RDZV_ENDPOINT"] == "elastic-worker-0.elastic:29500"
    wait_phase(kube, namespace, "elastic", "Succeeded", timeout=30)


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    kube: Kube, namespace: str, local_operator: OperatorProcess
) -> None:
    names = [f"crash-{i}" for i in range(3)]
    text = yaml.safe_dump_all(
        [training_job(n, workers=2, gpus=2, gpu_type="A100", regions=("cn-beijing",)) for n in names]
    )
    kube.kubectl("apply", "-n", namespace, "-f", "-", stdin=text)
    time.sleep(0.4)
    local_operator.kill()
    local_operator.start()
    for n in names:
        wait_phase(kube, namespace, n, "Running", timeout=60)
    pods = kube.get_json("pods", "-n", namespace)["items"]
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(f"{n}-worker-{i}" for n in names for i in range(2))
    assert not any(p["spec"].get("schedulingGates") for p in pods)
    assert all(status(kube, namespace, n)["restarts"] == 0 for n in names)


def test_rank_zero_progress_is_aggregated_into_status(kube: Kube, namespace: str) -> None:
    """Rank 0 serves its progress on its metrics port; the operator scrapes it (workers hold no API rights)."""
    kube.apply(training_job("reporter", workers=2, gpus=1, gpu_type="T4", regions=("us-west-1",)), namespace)
    wait_phase(kube, namespace, "reporter", "Running")
    with rank_zero_progress(kube, namespace, "reporter") as rank0:
        rank0.report(step=120, epoch=2, loss=0.31, samples_per_second=5400.0)
        progress = wait_for(lambda: status(kube, namespace, "reporter").get("progress"), what="progress in status")
    assert progress.pop("updatedAt").endswith("Z")
    assert progress == {"step": 120, "epoch": 2, "loss": 0.31, "samplesPerSecond": 5400.0}
    wide = kube.kubectl("get", "trainingjob", "reporter", "-n", namespace, "-o", "wide").stdout
    assert "120" in wide and "0.31" in wide
