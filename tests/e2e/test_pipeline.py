"""Training to serving, for real: `kubectl apply` of the examples in examples/pipeline trains the 3-4-2 network with
four real torch.distributed workers on the local cluster's run-pods nodes (a teacher, then a student distilled from
it and pruned), the operator records the artifact, an InferenceService with model.fromTrainingJob serves it
from the model store claim, and it answers."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelfleet.contract import MODEL_DIGEST_ENV
from tests.e2e.test_cli import cli
from tests.support.kube import Kube, wait_for
from tests.support.operator import OperatorProcess

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pipeline"


def example(name: str, **spec: Any) -> dict[str, Any]:
    manifest = yaml.safe_load((EXAMPLES / name).read_text())
    manifest["spec"].update(spec)
    return manifest


def get(kube: Kube, kind: str, namespace: str, name: str) -> dict[str, Any]:
    return kube.get_json(kind, name, "-n", namespace)


def finished(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return wait_for(
        lambda: (
            (st := get(kube, "tj", namespace, name).get("status", {})).get("phase") in ("Succeeded", "Failed") and st
        ),
        timeout=240,
        what=f"{name} to finish",
    )


def test_a_distilled_student_is_trained_served_and_answers(
    kube: Kube, namespace: str, operator: OperatorProcess, run_pods_nodes: None
) -> None:
    """Teacher -> distilled and pruned student (spec.compression) -> served -> a newer run rolled out: each step by
    kubectl apply."""
    kube.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "model-store.yaml"))
    args = ["--model", "paper-mlp", "--epochs", "10", "--samples", "2048", "--lr", "0.05"]
    teacher = example("trainingjob.yaml", masterPort=random.randrange(30000, 32000), args=args)
    teacher["metadata"]["name"], teacher["spec"]["outputPath"] = "mlp-teacher", "/models/mlp-teacher"
    kube.apply(teacher, namespace)
    kube.apply(example("inferenceservice.yaml"), namespace)

    waiting = wait_for(lambda: get(kube, "mfis", namespace, "mlp-local").get("status"), timeout=30, what="status")
    assert waiting["phase"] == "Pending", waiting
    assert next(c for c in waiting["conditions"] if c["type"] == "Ready")["reason"] == "TrainingJobNotFound"
    assert finished(kube, namespace, "mlp-teacher")["phase"] == "Succeeded"

    compression = {"distillation": {"teacher": "/models/mlp-teacher"}, "pruning": {"amount": 0.5, "atFraction": 0.5}}
    student = example("trainingjob.yaml", masterPort=random.randrange(32000, 34000), args=args, compression=compression)
    kube.apply(student, namespace)
    done = finished(kube, namespace, "mlp-local")
    assert done["phase"] == "Succeeded", done
    artifact = done["artifact"]
    assert artifact["uri"] == "pvc://models/mlp-local" and artifact["digest"].startswith("sha256:")
    assert artifact["metrics"]["accuracy"] > 0.5 and artifact["metrics"]["steps"] > 0, artifact
    assert done["progress"]["step"] > 0
    pods = kube.get_json("pods", "-n", namespace, "-l", "modelfleet.dev/job-name=mlp-local")["items"]
    assert len(pods) == 4 and all(p["spec"]["nodeName"].startswith("run-") for p in pods)

    serving = wait_for(
        lambda: (st := get(kube, "mfis", namespace, "mlp-local").get("status", {})).get("phase") == "Ready" and st,
        timeout=120,
        what="the service to serve the artifact",
    )
    assert serving["artifact"] == {
        "uri": artifact["uri"],
        "digest": artifact["digest"],
        "trainingJob": "mlp-local",
        "jobUid": artifact["jobUid"],
    }
    server = serving_pods(kube, namespace)[0]
    outputs = infer(server)
    assert outputs[0]["shape"] == [2, 2], outputs

    catalog = cli(kube, "models", "-n", namespace)
    assert catalog.returncode == 0, catalog.stderr
    row = next(line for line in catalog.stdout.splitlines() if "mlp-local" in line)
    assert artifact["uri"] in row and artifact["digest"][:19] in row and row.count("mlp-local") >= 2, catalog.stdout

    # A newer run of the job: the old artifact keeps serving while it trains; its own is rolled out once it succeeds.
    kube.kubectl("delete", "tj", "mlp-local", "-n", namespace)
    rerun_args = ["--model", "paper-mlp", "--epochs", "4", "--samples", "2048", "--lr", "0.05"]
    kube.apply(example("trainingjob.yaml", masterPort=random.randrange(34000, 36000), args=rerun_args), namespace)
    assert get(kube, "mfis", namespace, "mlp-local")["status"]["artifact"]["digest"] == artifact["digest"]
    rerun = finished(kube, namespace, "mlp-local")
    assert rerun["phase"] == "Succeeded" and rerun["artifact"]["digest"] != artifact["digest"], rerun
    wait_for(
        lambda: (
            get(kube, "mfis", namespace, "mlp-local")["status"]["artifact"]["digest"] == rerun["artifact"]["digest"]
        ),
        timeout=60,
        what="the service to name the newer artifact",
    )
    new_server = wait_for(
        lambda: next((p for p in serving_pods(kube, namespace) if serves(p, rerun["artifact"]["digest"])), None),
        timeout=120,
        what="a ready server pod of the newer artifact",
    )
    assert infer(new_server)[0]["shape"] == [2, 2]


def serving_pods(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return kube.get_json("pods", "-n", namespace, "-l", "modelfleet.dev/service-name=mlp-local")["items"]


def serves(pod: dict[str, Any], digest: str) -> bool:
    """The pod is ready and its template carries the artifact's digest."""
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))
    return ready and env.get(MODEL_DIGEST_ENV) == digest and not pod["metadata"].get("deletionTimestamp")


def infer(pod: dict[str, Any]) -> list[dict[str, Any]]:
    body = {
        "inputs": [{"name": "input__0", "shape": [2, 3], "datatype": "FP32", "data": [[0.1, 0.2, 0.3], [3, -2, 1]]}]
    }
    answer = httpx.post(
        f"http://{pod['status']['podIP']}:8080/v2/models/mlp-local/infer", json=body, timeout=10, trust_env=False
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["outputs"]


def test_both_or_neither_model_source_is_refused_at_apply(kube: Kube, namespace: str) -> None:
    for model in ({"uri": "/m/model.pt", "fromTrainingJob": "x"}, {"quantization": "int8"}):
        service = example("inferenceservice.yaml", model=model)
        result = kube.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(service), check=False)
        assert result.returncode != 0 and "exactly one of uri and fromTrainingJob" in result.stderr, result.stderr
