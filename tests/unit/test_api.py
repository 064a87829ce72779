from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelfleet.api import InferenceServiceSpec, TrainingJobSpec
from modelfleet.api.common import Condition, set_condition, validation_message


def test_training_job_defaults_and_camel_case() -> None:
    spec = TrainingJobSpec.model_validate({"workers": {"replicas": 2}, "resources": {"gpus": 1, "gpuType": "H100"}})
    assert spec.resources.gpu_type == "H100"
    assert spec.restart_policy == "OnFailure"
    assert spec.to_api()["masterPort"] == 29500


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        TrainingJobSpec.model_validate({"workers": {"replicas": 2}, "worker": {}})


def test_inference_service_needs_a_region() -> None:
    with pytest.raises(ValidationError):
        InferenceServiceSpec.model_validate({"model": {"uri": "file:///m.pt"}, "regions": []})


def test_set_condition_keeps_transition_time_while_status_is_unchanged() -> None:
    first = set_condition([], Condition(type="Ready", status="False", reason="Waiting", last_transition_time="t0"))
    second = set_condition(first, Condition(type="Ready", status="False", reason="StillWaiting"))
    assert second[0]["lastTransitionTime"] == "t0" and second[0]["reason"] == "StillWaiting"
    third = set_condition(second, Condition(type="Ready", status="True", reason="Up"))
    assert third[0]["lastTransitionTime"] != "t0"
    assert len(third) == 1


def test_invalid_spec_status_names_the_field_and_keeps_the_rest() -> None:
    from modelfleet.api.common import invalid_spec_status, validation_message

    with pytest.raises(ValidationError) as caught:
        TrainingJobSpec.model_validate({"workers": {"replicas": "many"}})
    message = validation_message(caught.value)
    assert message.startswith("workers.replicas:")
    status = invalid_spec_status({"restarts": 2}, 5, message, "Created", "Pending")
    assert status["restarts"] == 2 and status["observedGeneration"] == 5 and status["phase"] == "Pending"
    assert status["conditions"][0]["reason"] == "InvalidSpec" and status["conditions"][0]["status"] == "False"


TJ = {"workers": {"replicas": 1}}
IS = {"model": {"uri": "file:///m.pt"}, "regions": [{"name": "cn-hangzhou"}]}
BOTH = pytest.mark.parametrize(("model", "base"), [(TrainingJobSpec, TJ), (InferenceServiceSpec, IS)], ids=["tj", "is"])


def refused(model: type[TrainingJobSpec | InferenceServiceSpec], spec: dict) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(spec)
    return validation_message(caught.value)


@pytest.mark.parametrize("speed", [0, -1.5])
def test_gpu_speeds_must_be_above_zero(speed: float) -> None:
    message = refused(TrainingJobSpec, {**TJ, "dataset": {"gpuSpeeds": {"H100": speed}}})
    assert message.startswith("dataset.gpuSpeeds.H100:") and "greater than 0" in message
    assert TrainingJobSpec.model_validate({**TJ, "dataset": {"gpuSpeeds": {"H100": 0.5}}}).dataset.gpu_speeds


@BOTH
@pytest.mark.parametrize(
    "key", ["bad key!", "k" * 64, "Example.com/team", "-team", "team-", "a/b/c", f"{'p' * 254}/team", "/team", ""]
)
def test_label_and_annotation_keys_must_be_qualified_names(model: type, base: dict, key: str) -> None:
    for field in ("labels", "annotations"):
        assert "keys must be qualified names" in refused(model, {**base, "podMetadata": {field: {key: "x"}}})


@BOTH
@pytest.mark.parametrize("key", ["team", "k" * 63, "example.com/team", "a.b_c-D9", f"{'p' * 253}/team"])
def test_qualified_names_are_accepted(model: type, base: dict, key: str) -> None:
    model.model_validate({**base, "podMetadata": {"labels": {key: ""}, "annotations": {key: "any text at all"}}})


@BOTH
@pytest.mark.parametrize("value", ["a b", "v" * 64, "a/b", "-a", "a."])
def test_label_values_are_checked(model: type, base: dict, value: str) -> None:
    assert refused(model, {**base, "podMetadata": {"labels": {"team": value}}}).startswith("podMetadata.labels.team:")


@BOTH
@pytest.mark.parametrize("name", ["BAD NAME=", "1VAR", "A=B", ""])
def test_env_names_are_checked(model: type, base: dict, name: str) -> None:
    assert refused(model, {**base, "env": [{"name": name}]}).startswith("env.0.name:")
    model.model_validate({**base, "env": [{"name": "_my-var.Name_2"}]})


def test_training_job_region_names_follow_the_inference_service_rule() -> None:
    for region in ["CN HANGZHOU!", "r" * 41, "Cn-Hangzhou", ""]:
        assert refused(TrainingJobSpec, {**TJ, "placement": {"regions": [region]}}).startswith("placement.regions.0:")
        assert refused(InferenceServiceSpec, {**IS, "regions": [{"name": region}]}).startswith("regions.0.name:")


def test_the_client_refuses_a_bad_region_name_before_the_api_does() -> None:
    from modelfleet.client import training_job_manifest

    with pytest.raises(ValidationError):
        training_job_manifest("job", 2, regions=["CN HANGZHOU!"])


@BOTH
@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("serviceAccountName", "Bad_SA", "serviceAccountName"),
        ("serviceAccountName", "s" * 254, "serviceAccountName"),
        ("image", "example.com/my image:1", "image"),
        ("image", " example.com/image:1", "image"),
        ("volumes", [{"name": "Data", "emptyDir": {}}], "volumes.0.name"),
        ("volumes", [{"emptyDir": {}}], "volumes.0.name"),
        ("volumeMounts", [{"name": "data"}], "volumeMounts.0.mountPath"),
        ("resources", {"gpus": 1, "gpuType": "H100 SXM"}, "resources.gpuType"),
        ("resources", {"cpu": "lots"}, "resources.cpu"),
        ("resources", {"cpu": "-500m"}, "resources.cpu"),
        ("resources", {"memory": -5}, "resources.memory"),
        ("securityContext", {"runAsUser": -1}, "securityContext.runAsUser"),
        ("securityContext", {"seccompProfile": {"type": "Permissive"}}, "securityContext.seccompProfile.type"),
        ("securityContext", {"hostPID": True}, "securityContext.hostPID"),
        ("containerSecurityContext", {"privileged": "maybe"}, "containerSecurityContext.privileged"),
        ("containerSecurityContext", {"capabilities": {"add": [""]}}, "containerSecurityContext.capabilities.add.0"),
    ],
)
def test_what_the_api_would_refuse_on_the_pod_is_refused_on_the_spec(
    model: type, base: dict, field: str, value: object, where: str
) -> None:
    assert refused(model, {**base, field: value}).startswith(where)


@BOTH
def test_good_pod_fields_pass_and_volumes_stay_plain_dicts(model: type, base: dict) -> None:
    spec = model.model_validate(
        {
            **base,
            "serviceAccountName": "trainer.team-a",
            "resources": {"cpu": "500m", "memory": "16Gi"},
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
        }
    )
    assert spec.volumes == [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    assert spec.to_api()["volumeMounts"] == [{"name": "data", "mountPath": "/data", "readOnly": True}]
    for quantity in (4, "4", "0.5", "1e3", "128Mi", "+2"):
        model.model_validate({**base, "resources": {"cpu": quantity}})


@BOTH
def test_security_contexts_take_the_core_v1_shapes(model: type, base: dict) -> None:
    pod = {
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 2000,
        "fsGroupChangePolicy": "Always",
        "runAsNonRoot": True,
        "supplementalGroups": [3000],
        "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/train.json"},
    }
    container = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": False,
        "runAsUser": 1001,
        "runAsGroup": 1001,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    spec = model.model_validate({**base, "securityContext": pod, "containerSecurityContext": container})
    assert spec.to_api()["securityContext"] == pod and spec.to_api()["containerSecurityContext"] == container
    assert "securityContext" not in model.model_validate(base).to_api()


def test_the_longest_job_name_leaves_worker_hostnames_within_63() -> None:
    from modelfleet.api.training import MAX_NAME_LENGTH, MAX_WORKERS
    from modelfleet.training.builders import worker_name

    assert len(worker_name("j" * MAX_NAME_LENGTH, MAX_WORKERS - 1)) == 63


@pytest.mark.parametrize("uri", ["pvc:///model.pt", "pvc://My_Claim/model.pt", "pvc://models", "s3://b/m.pt", "/a b"])
def test_model_uris_name_a_valid_claim(uri: str) -> None:
    assert refused(InferenceServiceSpec, {**IS, "model": {"uri": uri}}).startswith("model.uri:")
    for good in ("pvc://models/mlp/model.pt", "file:///m.pt", "/models/m.pt"):
        InferenceServiceSpec.model_validate({**IS, "model": {"uri": good}})
