"""Pod security end to end: in a namespace that enforces the Pod Security Standard `restricted`, a TrainingJob
and an InferenceService run through their lives on the operator's defaults, and a job that asks for a privileged
or escalating container ends Created=False with the API's message."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.kube import Kube, wait_for
from tests.support.training import condition, status, training_job, wait_phase, workers

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]

RESTRICTED = "restricted:latest"


def enforce_restricted(kube: Kube, namespace: str) -> None:
    kube.kubectl(
        "label", "namespace", namespace,
        "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest",
    )  # fmt: skip


def secure_job(name: str, **spec: object) -> dict:
    return training_job(name, workers=2, gpus=1, gpu_type="T4", regions=("us-west-1",), exit_code=0, **spec)


def inference_service(name: str, **spec: object) -> dict:
    return {
        "apiVersion": "modelfleet.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "file:///models/m/model.pt"},
            "regions": [{"name": "cn-hangzhou", "minReplicas": 2}],
            **spec,
        },
    }


@pytest.mark.kwok
def test_a_job_and_a_service_live_their_lives_in_a_restricted_namespace(kube: Kube, namespace: str) -> None:
    enforce_restricted(kube, namespace)
    kube.apply(secure_job("secure", run_for="3s"), namespace)
    running = wait_phase(kube, namespace, "secure", "Running")
    assert condition(running, "Created")["status"] == "True"
    for pod in workers(kube, namespace, "secure"):
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        context = pod["spec"]["containers"][0]["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}
        assert pod["spec"]["automountServiceAccountToken"] is False  # and so the API mounted no token:
        assert not [v for v in pod["spec"]["volumes"] if "projected" in v], pod["spec"]["volumes"]
    assert [v for v in _admitted_plain_pod(kube, namespace)["spec"]["volumes"] if "projected" in v], (
        "the control: this API server mounts the default account's token into a pod that does not opt out"
    )
    wait_phase(kube, namespace, "secure", "Succeeded", timeout=30)

    kube.apply(inference_service("secure"), namespace)
    ready = wait_for(
        lambda: (
            (s := kube.get_json("mfis", "secure", "-n", namespace).get("status") or {}).get("readyReplicas") == 2 and s
        ),
        what="2 replicas ready",
    )
    assert ready["phase"] == "Ready"


def _admitted_plain_pod(kube: Kube, namespace: str) -> dict:
    """A restricted pod with no word about its token, as the API server would store it (server-side dry run)."""
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain", "namespace": namespace},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "example.com/c:1", "securityContext": {
                "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
        },
    }  # fmt: skip
    out = kube.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(pod))
    return json.loads(out.stdout)


ASKS_TOO_MUCH = {
    # a cluster whose apiserver runs without --allow-privileged (the test cluster) refuses this before Pod Security
    # does (InvalidSpec); one that allows it (kind) leaves it to the namespace's level (CreateFailed)
    "privileged": ({"privileged": True}, ("InvalidSpec", "CreateFailed"), "securityContext.privileged"),
    "escalation-and-capability": (
        {"allowPrivilegeEscalation": True, "capabilities": {"add": ["NET_ADMIN"]}},
        ("CreateFailed",),
        f'violates PodSecurity "{RESTRICTED}": allowPrivilegeEscalation != false',
    ),
}


@pytest.mark.kwok
@pytest.mark.parametrize("case", sorted(ASKS_TOO_MUCH))
def test_a_job_asking_more_than_the_namespace_allows_is_refused_and_heals_without_it(
    kube: Kube, namespace: str, case: str
) -> None:
    enforce_restricted(kube, namespace)
    context, reasons, message = ASKS_TOO_MUCH[case]
    kube.apply(secure_job("greedy", containerSecurityContext=context), namespace)
    refused = wait_for(
        lambda: (s := status(kube, namespace, "greedy")) and condition(s, "Created").get("status") == "False" and s,
        what="Created=False",
    )
    created = condition(refused, "Created")
    assert created["reason"] in reasons and message in created["message"], created
    assert workers(kube, namespace, "greedy") == []
    patch = json.dumps({"spec": {"containerSecurityContext": None}})
    kube.kubectl("patch", "trainingjob", "greedy", "-n", namespace, "--type=merge", "-p", patch)
    healed = wait_phase(kube, namespace, "greedy", "Succeeded", timeout=90)
    assert condition(healed, "Created")["status"] == "True"


def test_a_service_asking_to_escalate_gets_no_pods_and_its_deployment_says_why(kube: Kube, namespace: str) -> None:
    enforce_restricted(kube, namespace)
    kube.apply(inference_service("greedy", containerSecurityContext={"allowPrivilegeEscalation": True}), namespace)

    def replica_failure() -> dict:
        got = kube.kubectl("get", "deployment", "greedy-cn-hangzhou", "-n", namespace, "-o", "json", check=False)
        conditions = json.loads(got.stdout).get("status", {}).get("conditions", []) if got.returncode == 0 else []
        return next((c for c in conditions if c["type"] == "ReplicaFailure"), {})

    failure = wait_for(replica_failure, what="the Deployment's ReplicaFailure")
    assert failure["reason"] == "FailedCreate" and f'violates PodSecurity "{RESTRICTED}"' in failure["message"]
    assert kube.get_json("pods", "-n", namespace, "-l", "modelfleet.dev/service-name=greedy")["items"] == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"securityContext": {"runAsUser": 0}}, "runAsUser 0 (root) needs runAsNonRoot: false"),
        ({"containerSecurityContext": {"runAsUser": 0}}, "runAsUser 0 (root) needs runAsNonRoot: false"),
        (
            {"securityContext": {"seccompProfile": {"type": "RuntimeDefault", "localhostProfile": "p.json"}}},
            "localhostProfile is set exactly when type is Localhost",
        ),
        ({"volumes": [{"name": "modelfleet-tmp", "emptyDir": {}}]}, "the volume name 'modelfleet-tmp' is taken"),
    ],
    ids=["pod-root", "container-root", "seccomp-profile", "scratch-volume"],
)
def test_security_fields_that_could_never_start_are_refused_at_apply(
    kube: Kube, namespace: str, spec: dict, message: str
) -> None:
    with pytest.raises(AssertionError, match=re.escape(message)):
        kube.apply(secure_job("never", **spec), namespace)
