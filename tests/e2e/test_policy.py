"""The operator's policy on the real control plane: the operator (default policy) refuses node-level volumes and
pickled models with the field named, and the chart's ValidatingAdmissionPolicy refuses them at `kubectl apply`."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.test_chart import CHART, helm
from tests.support.kube import Kube, wait_for
from tests.support.training import condition, events_of, status, training_job, wait_phase, workers

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]
HOST_PATH = {"name": "data", "hostPath": {"path": "/var/lib"}}


def apply_or_skip_if_admission_refuses(kube: Kube, manifest: dict[str, Any], namespace: str) -> None:
    """Where the chart is installed with its admission policy (the kind run), the operator never sees the spec."""
    applied = kube.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest), check=False)
    if applied.returncode and "ValidatingAdmissionPolicy" in applied.stderr:
        pytest.skip("the chart's admission policy refuses the spec before the operator sees it")
    assert applied.returncode == 0, applied.stderr


def test_the_operator_refuses_a_host_path_volume_naming_the_field_and_heals(kube: Kube, namespace: str) -> None:
    job = training_job("host", workers=2, gpus=1, gpu_type="T4", volumes=[HOST_PATH])
    apply_or_skip_if_admission_refuses(kube, job, namespace)
    refused = wait_for(
        lambda: (s := status(kube, namespace, "host")) and condition(s, "Created").get("status") == "False" and s,
        what="Created=False",
    )
    created = condition(refused, "Created")
    assert created["reason"] == "PolicyDenied" and created["message"].startswith("spec.volumes[0].hostPath: "), created
    assert "policy.allowHostPath" in created["message"] and refused["phase"] == "Pending"
    time.sleep(5)  # a retrying loop would make pods or post more Events in this window
    assert workers(kube, namespace, "host") == [], "no pods for a refused spec"
    warnings = [e for e in events_of(kube, namespace, "host") if e.startswith("PolicyDenied")]
    assert warnings == [f"PolicyDenied: {created['message']}"], warnings
    kube.kubectl("patch", "trainingjob", "host", "-n", namespace, "--type=merge", "-p", '{"spec":{"volumes":null}}')
    healed = wait_phase(kube, namespace, "host", "Running", timeout=90)
    assert condition(healed, "Created")["status"] == "True"


def test_the_operator_refuses_a_pickled_model_naming_the_field(kube: Kube, namespace: str) -> None:
    service = {
        "apiVersion": "modelfleet.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "pickled"},
        "spec": {"model": {"uri": "file:///m.pt", "format": "pytorch"}, "regions": [{"name": "us-west-1"}]},
    }  # fmt: skip
    apply_or_skip_if_admission_refuses(kube, service, namespace)

    def refused() -> dict[str, Any] | None:
        st = kube.get_json("inferenceservice", "pickled", "-n", namespace).get("status") or {}
        return st if condition(st, "Ready").get("reason") == "PolicyDenied" else None

    st = wait_for(refused, what="Ready=False, reason PolicyDenied")
    ready = condition(st, "Ready")
    assert ready["status"] == "False" and st["phase"] == "Failed", st
    assert ready["message"].startswith("spec.model.format: pytorch") and "policy.allowPickledModels" in ready["message"]
    assert kube.kubectl("get", "deployment", "pickled-us-west-1", "-n", namespace, check=False).returncode != 0


@pytest.fixture
def admission_policy(kube: Kube) -> Iterator[list[dict[str, Any]]]:
    """The chart's ValidatingAdmissionPolicy and binding, rendered with the default values and applied alone."""
    rendered = helm(kube, "template", "mf", str(CHART), "--show-only", "templates/admission.yaml").stdout
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    assert [d["kind"] for d in objects] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    text = yaml.safe_dump_all(objects)
    kube.kubectl("apply", "-f", "-", stdin=text)
    yield objects
    kube.kubectl("delete", "-f", "-", "--wait=true", stdin=text, check=False)


def test_the_charts_admission_policy_refuses_at_apply(
    kube: Kube, namespace: str, admission_policy: list[dict[str, Any]]
) -> None:
    def dry_run(manifest: dict[str, Any]) -> subprocess.CompletedProcess:
        return kube.kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=json.dumps(manifest), check=False
        )

    volumes = [{"name": "scratch", "emptyDir": {}}, HOST_PATH]
    host = training_job("host", workers=1, gpus=1, gpu_type="T4", volumes=volumes)
    refused = wait_for(  # a new policy takes a moment to reach the apiserver's admission chain
        lambda: (r := dry_run(host)).returncode != 0 and r, what="hostPath refused at admission"
    )
    assert "spec.volumes[1].hostPath: " in refused.stderr and "policy.allowHostPath" in refused.stderr, refused.stderr
    flex = training_job(
        "flex", workers=1, gpus=1, gpu_type="T4", volumes=[{"name": "f", "flexVolume": {"driver": "a/b"}}]
    )
    assert "spec.volumes[0].flexVolume: " in dry_run(flex).stderr
    service = {
        "apiVersion": "modelfleet.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "pickled"},
        "spec": {"model": {"uri": "file:///m.pt", "format": "pytorch"}, "regions": [{"name": "us-west-1"}]},
    }  # fmt: skip
    pickled = dry_run(service)
    assert pickled.returncode != 0 and "spec.model.format: pytorch" in pickled.stderr, pickled.stderr
    service["spec"]["model"]["format"] = "torchscript"
    service["spec"]["volumes"] = volumes[:1]
    assert dry_run(service).returncode == 0, "a spec within the policy is admitted"
    assert dry_run(training_job("fine", workers=1, gpus=1, gpu_type="T4")).returncode == 0
