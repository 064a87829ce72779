from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelfleet.api import InferenceServiceSpec, TrainingJobSpec
from modelfleet.api.common import Condition, set_condition


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
