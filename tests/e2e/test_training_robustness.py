"""TrainingJob on a cluster as harsh as a real one: pods that take their grace period to go, specs only the API can
refuse, status writes that fail, NaN from a worker."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest
import yaml

from modelfleet.devcluster import DevCluster
from modelfleet.devcluster.nodes import default_inventory, fake_nodes
from tests.support.kube import Kube, wait_for
from tests.support.operator import OperatorProcess
from tests.support.progress import rank_zero_progress
from tests.support.training import condition, events_of, status, training_job, wait_phase, workers
from tests.support.watchgap import watch_gap

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]


def attempts_alive(kube: Kube, namespace: str, name: str) -> set[str]:
    """The gang attempts that have a pod (terminating or not) right now."""
    return {p["metadata"]["labels"]["modelfleet.dev/attempt"] for p in workers(kube, namespace, name)}


def test_restart_waits_until_the_previous_gang_is_gone(kube: Kube, namespace: str) -> None:
    """Worker 1 is deleted with a 1 s grace period, worker 0 then by the operator with the default 30 s: the name
    `patient-worker-1` frees long before the old gang is gone. No worker of the next attempt may start beside it."""
    kube.apply(
        training_job("patient", workers=2, gpus=1, gpu_type="T4", regions=("cn-hangzhou",), termination_delay=None),
        namespace,
    )
    wait_phase(kube, namespace, "patient", "Running")
    kube.kubectl("delete", "pod", "patient-worker-1", "-n", namespace, "--grace-period=1", "--wait=false")
    seen: list[set[str]] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        seen.append(attempts_alive(kube, namespace, "patient"))
        assert len(seen[-1]) <= 1, f"pods of two attempts side by side: {seen[-1]}"
        current = status(kube, namespace, "patient")
        if current.get("phase") == "Running" and seen[-1] == {"1"}:
            break
        time.sleep(0.2)
    time.sleep(3)
    again = wait_phase(kube, namespace, "patient", "Running", timeout=5)
    assert again["restarts"] == 1, "one deleted worker, one restart: the terminating window is no new failure"
    assert {"0"} in seen and attempts_alive(kube, namespace, "patient") == {"1"}
    assert sum(e.startswith("GangRestart") for e in events_of(kube, namespace, "patient")) == 1


HOLD_STATUS_POLICY = """
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: hold-restarts-NS}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [modelfleet.dev]
      apiVersions: ["*"]
      operations: [UPDATE]
      resources: [trainingjobs/status]
  validations:
  - expression: "!has(object.status) || !has(object.status.restarts) || object.status.restarts == 0"
    message: the test holds every status write that records a restart
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: hold-restarts-NS}
spec:
  policyName: hold-restarts-NS
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {kubernetes.io/metadata.name: NS}
"""


@pytest.mark.kwok
def test_no_worker_is_deleted_before_its_restart_is_recorded(kube: Kube, namespace: str) -> None:
    """The API refuses the status write that records the restart (as if the operator died right before it):
    the failed gang must stay as it is, so the failure is never lost; once writes pass, it restarts once."""
    policy = HOLD_STATUS_POLICY.replace("NS", namespace)
    kube.kubectl("apply", "-f", "-", stdin=policy)
    try:
        time.sleep(2)  # the policy reaches the apiserver's admission
        kube.apply(training_job("ledger", workers=2, gpus=1, gpu_type="T4", exit_code=0, fail_attempts=1), namespace)
        wait_for(
            lambda: any(p["status"].get("phase") == "Failed" for p in workers(kube, namespace, "ledger")),
            what="a failed worker",
        )
        time.sleep(5)
        pods = workers(kube, namespace, "ledger")
        assert len(pods) == 2 and not any(p["metadata"].get("deletionTimestamp") for p in pods), pods
        assert status(kube, namespace, "ledger").get("restarts", 0) == 0
    finally:
        kube.kubectl("delete", "-f", "-", stdin=policy, check=False)
    done = wait_phase(kube, namespace, "ledger", "Succeeded", timeout=90)
    assert done["restarts"] == 1


REFUSED = {
    "missing-service-account": (
        {"serviceAccountName": "nobody"}, "CreateFailed", 'serviceaccount "nobody" not found',
        {"serviceAccountName": None},
    ),
    "volume-of-two-types": (
        {"volumes": [{"name": "data", "emptyDir": {}, "configMap": {"name": "cfg"}}]}, "InvalidSpec",
        "may not specify more than 1 volume type", {"volumes": None},
    ),
    "volume-not-an-object": (
        {"volumes": [{"name": "data", "emptyDir": "/var/lib"}]}, "InvalidSpec", "emptyDir", {"volumes": None},
    ),
    "claim-without-name": (
        {"volumes": [{"name": "data", "persistentVolumeClaim": {}}]}, "InvalidSpec", "claimName",
        {"volumes": None},
    ),
    "secret-mode-out-of-range": (
        {"volumes": [{"name": "data", "secret": {"secretName": "s", "defaultMode": 99999}}]}, "InvalidSpec",
        "defaultMode", {"volumes": None},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_spec_only_the_api_refuses_ends_in_a_condition_holds_nothing_and_heals(
    kube: Kube, namespace: str, case: str
) -> None:
    bad, reason, message, fix = REFUSED[case]
    kube.apply(training_job("refused", workers=2, gpus=4, gpu_type="T4", regions=("us-west-1",), **bad), namespace)
    refused = wait_for(
        lambda: (s := status(kube, namespace, "refused")) and condition(s, "Created").get("status") == "False" and s,
        what="Created=False",
    )
    created = condition(refused, "Created")
    assert created["reason"] == reason and message in created["message"], created
    assert refused["phase"] == "Pending"
    time.sleep(6)  # a hot loop would retry (and post Events) many times in this window
    events = [e for e in events_of(kube, namespace, "refused") if e.startswith(reason)]
    assert len(events) == 1 and message in events[0], events
    assert workers(kube, namespace, "refused") == [], "no half gang, no GPUs held"
    # the refused job holds no reservation: a job needing every T4 GPU of us-west-1 fits
    kube.apply(training_job("neighbour", workers=2, gpus=4, gpu_type="T4", regions=("us-west-1",)), namespace)
    wait_phase(kube, namespace, "neighbour", "Running")
    kube.kubectl("delete", "trainingjob", "neighbour", "-n", namespace)
    kube.kubectl("patch", "trainingjob", "refused", "-n", namespace, "--type=merge", "-p", json.dumps({"spec": fix}))
    healed = wait_phase(kube, namespace, "refused", "Running", timeout=90)
    assert condition(healed, "Created")["status"] == "True"


def test_a_worker_the_api_refuses_takes_the_workers_created_with_it(kube: Kube, namespace: str) -> None:
    """A ResourceQuota of one pod: of a gang of two, the API admits one worker and refuses the other (403, exceeded
    quota). The one created is deleted at once, the job says why, nothing retries hot, and its GPUs are free."""
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "one-pod"},
        "spec": {"hard": {"pods": "1"}},
    }
    kube.apply(quota, namespace)
    wait_for(lambda: kube.get_json("resourcequota", "one-pod", "-n", namespace).get("status", {}).get("hard"),
             what="the quota counted")  # fmt: skip
    watch = subprocess.Popen(
        [str(kube.bin_dir / "kubectl"), "--kubeconfig", str(kube.kubeconfig), "get", "pods", "-n", namespace,
         "--watch", "--output-watch-events", "-o", "custom-columns=EVENT:.type,NAME:.object.metadata.name"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        kube.apply(training_job("quota", workers=2, gpus=4, gpu_type="T4", regions=("us-west-1",)), namespace)
        refused = wait_for(
            lambda: (s := status(kube, namespace, "quota")) and condition(s, "Created").get("status") == "False" and s,
            what="Created=False",
        )
        time.sleep(6)  # a hot loop would retry (and post Events) many times in this window
    finally:
        watch.terminate()
    seen = [line.split() for line in watch.communicate(timeout=10)[0].splitlines()[1:]]
    created = {name for event, name in seen if event == "ADDED"}
    assert len(created) == 1 and ["DELETED", created.pop()] in seen, f"one worker admitted, then deleted: {seen}"
    why = condition(refused, "Created")
    assert why["reason"] == "CreateFailed" and "exceeded quota" in why["message"], why
    events = [e for e in events_of(kube, namespace, "quota") if e.startswith("CreateFailed")]
    assert len(events) == 1, events
    assert workers(kube, namespace, "quota") == [], "no half gang"
    elsewhere = kube.new_namespace()  # the refused job holds no GPU: a job needing every T4 GPU of us-west-1 fits
    try:
        kube.apply(training_job("neighbour", workers=2, gpus=4, gpu_type="T4", regions=("us-west-1",)), elsewhere)
        wait_phase(kube, elsewhere, "neighbour", "Running")
    finally:
        kube.kubectl("delete", "namespace", elsewhere, "--wait=false")


@pytest.mark.kwok
def test_a_nan_loss_never_blocks_the_status(kube: Kube, namespace: str) -> None:
    kube.apply(training_job("diverged", workers=1, gpus=1, gpu_type="T4", exit_code=0, run_for="15s"), namespace)
    wait_phase(kube, namespace, "diverged", "Running")
    with rank_zero_progress(kube, namespace, "diverged") as rank0:
        rank0.report(step=7, epoch=0, loss=float("nan"), samples_per_second=float("inf"))
        done = wait_phase(kube, namespace, "diverged", "Succeeded", timeout=45)
    assert done.get("progress", {}).get("step") == 7 and "loss" not in done["progress"]


@pytest.mark.kwok
def test_a_job_deleted_in_a_watch_gap_stops_and_frees_its_gpus(
    kube: Kube, namespace: str, cluster: DevCluster, local_operator: OperatorProcess
) -> None:
    """The job and its workers vanish while the operator's watches are broken: the re-list brings no DELETED
    event, yet its loop must stop (no worker made again for a dead owner) and its GPUs must count as free."""
    hog = training_job("hog", workers=2, gpus=8, gpu_type="H100", regions=("us-west-1",))
    kube.apply(hog, namespace)
    wait_phase(kube, namespace, "hog", "Running")

    def delete_hog_and_its_workers() -> None:
        kube.kubectl("delete", "trainingjob", "hog", "-n", namespace, "--wait=false")
        kube.kubectl("delete", "pods", "-n", namespace, "-l", "modelfleet.dev/job-name=hog", "--grace-period=0",
                     "--force", "--wait=false")  # fmt: skip

    gap = watch_gap(cluster, kube, local_operator, during=delete_hog_and_its_workers)
    assert gap.gone, "the operator's watches resumed without a 410: no gap was made"
    kube.apply(training_job("next", workers=2, gpus=8, gpu_type="H100", regions=("us-west-1",)), namespace)
    wait_phase(kube, namespace, "next", "Running", timeout=90)
    time.sleep(5)
    assert workers(kube, namespace, "hog") == [], "workers made again for a deleted job"


@pytest.fixture
def restore_nodes(kube: Kube) -> Iterator[None]:
    yield
    kube.apply(yaml.safe_dump_all(fake_nodes(default_inventory())))


@pytest.mark.kwok
def test_a_node_deleted_in_a_watch_gap_is_never_planned_on(
    kube: Kube, namespace: str, cluster: DevCluster, local_operator: OperatorProcess, restore_nodes: None
) -> None:
    lost = "us-west-1b-h100-0"
    gap = watch_gap(cluster, kube, local_operator, during=lambda: kube.kubectl("delete", "node", lost))
    assert gap.gone
    kube.apply(training_job("wide", workers=2, gpus=8, gpu_type="H100", regions=("us-west-1",)), namespace)
    pending = wait_for(
        lambda: (s := status(kube, namespace, "wide")) and condition(s, "Scheduled").get("reason") == "Unschedulable"
        and "at most 1 fit" in condition(s, "Scheduled")["message"] and s,
        timeout=60,
        what="Unschedulable on the one H100 node left",
    )  # fmt: skip
    assert pending["phase"] == "Queued" and workers(kube, namespace, "wide") == []
