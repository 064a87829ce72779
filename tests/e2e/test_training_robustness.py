"""TrainingJob on a cluster as harsh as a real one: pods that take their grace period to go, specs only the API can
refuse, status writes that fail, NaN from a worker."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.kube import Kube, wait_for
from tests.support.training import condition, events_of, status, training_job, wait_phase, workers

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]


def attempts_alive(kube: Kube, namespace: str, name: str) -> set[str]:
    """The gang attempts that have a pod (terminating or not) right now."""
    return {p["metadata"]["labels"]["modelfleet.dev/attempt"] for p in workers(kube, namespace, name)}


def test_restart_waits_until_the_previous_gang_is_gone(kube: Kube, namespace: str) -> None:
    kube.apply(
        training_job("patient", workers=2, gpus=1, gpu_type="T4", exit_code=0, run_for="2s",
                     termination_delay="5s", fail_attempts=1),
        namespace,
    )  # fmt: skip
    seen: list[set[str]] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        seen.append(attempts_alive(kube, namespace, "patient"))
        assert len(seen[-1]) <= 1, f"pods of two attempts side by side: {seen[-1]}"
        if status(kube, namespace, "patient").get("phase") == "Succeeded":
            break
        time.sleep(0.2)
    done = wait_phase(kube, namespace, "patient", "Succeeded", timeout=5)
    assert done["restarts"] == 1, "one failure, one restart: the terminating window never looks like a new failure"
    assert {"0"} in seen and {"1"} in seen
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
        {"volumes": [{"name": "data", "hostPath": "/var/lib"}]}, "InvalidSpec", "hostPath", {"volumes": None},
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


def test_a_nan_loss_never_blocks_the_status(kube: Kube, namespace: str) -> None:
    kube.apply(training_job("diverged", workers=1, gpus=1, gpu_type="T4", exit_code=0, run_for="5s"), namespace)
    wait_phase(kube, namespace, "diverged", "Running")
    report = '{"step": 7, "loss": NaN, "samplesPerSecond": Infinity}'
    kube.kubectl("annotate", "pod", "diverged-worker-0", "-n", namespace, f"modelfleet.dev/progress={report}")
    done = wait_phase(kube, namespace, "diverged", "Succeeded", timeout=30)
    assert done.get("progress", {}).get("step") == 7 and "loss" not in done["progress"]
