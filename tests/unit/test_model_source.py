from __future__ import annotations

from modelfleet.api.inference import InferenceServiceSpec
from modelfleet.contract import MODEL_DIGEST_ENV
from modelfleet.inference.builders import pod_template
from modelfleet.inference.model_source import Resolved, Waiting, resolve, services_serving

SPEC = InferenceServiceSpec.model_validate(
    {"model": {"fromTrainingJob": "mlp", "quantization": "int8"}, "regions": [{"name": "local"}]}
)
ARTIFACT = {"uri": "pvc://models/mlp", "digest": "sha256:aa", "metrics": {"loss": 0.1}, "jobUid": "u1"}


def job(phase: str, artifact: dict | None = None) -> dict:
    return {"metadata": {"uid": "u1"}, "status": {"phase": phase, **({"artifact": artifact} if artifact else {})}}


def test_a_plain_uri_is_served_as_it_is() -> None:
    spec = InferenceServiceSpec.model_validate({"model": {"uri": "/m/model.pt"}, "regions": [{"name": "local"}]})
    assert resolve(spec, None, None) == Resolved(spec, None)


def test_waits_until_the_job_succeeded_with_an_artifact() -> None:
    assert isinstance(resolve(SPEC, None, None), Waiting)
    waiting = resolve(SPEC, job("Running"), None)
    assert isinstance(waiting, Waiting) and waiting.reason == "WaitingForTrainingJob"
    no_output = resolve(SPEC, job("Succeeded"), None)
    assert isinstance(no_output, Waiting) and "outputPath" in no_output.message


def test_the_artifact_is_served_and_its_digest_is_in_the_pod_template() -> None:
    resolved = resolve(SPEC, job("Succeeded", ARTIFACT), None)
    assert isinstance(resolved, Resolved)
    assert resolved.artifact == {"uri": "pvc://models/mlp", "digest": "sha256:aa", "trainingJob": "mlp", "jobUid": "u1"}
    assert resolved.spec.model.uri == "pvc://models/mlp" and resolved.spec.model.quantization == "int8"
    template = pod_template("svc", resolved.spec, "local")
    env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
    assert env[MODEL_DIGEST_ENV] == "sha256:aa" and env["MODELFLEET_MODEL_PATH"] == "/mnt/models/models/mlp"
    newer = resolve(SPEC, job("Succeeded", {**ARTIFACT, "digest": "sha256:bb"}), resolved.artifact)
    assert isinstance(newer, Resolved)
    assert pod_template("svc", newer.spec, "local") != template, "a new digest is a new revision"


def test_a_newer_run_under_way_keeps_the_served_artifact() -> None:
    served = {"uri": "pvc://models/mlp", "digest": "sha256:aa", "trainingJob": "mlp", "jobUid": "u1"}
    for current in (job("Running"), None):
        kept = resolve(SPEC, current, served)
        assert isinstance(kept, Resolved) and kept.artifact == served


def test_services_serving_a_job() -> None:
    bodies = {
        ("ns", "a"): {"spec": {"model": {"fromTrainingJob": "mlp"}}},
        ("ns", "b"): {"spec": {"model": {"uri": "/x"}}},
        ("other", "c"): {"spec": {"model": {"fromTrainingJob": "mlp"}}},
    }
    assert services_serving(bodies, "ns", "mlp") == [("ns", "a")]
