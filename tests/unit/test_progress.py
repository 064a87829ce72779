from __future__ import annotations

import json

import pytest

from modelfleet.api.common import PROGRESS_ANNOTATION
from modelfleet.training.builders import progress_of


def pod_reporting(raw: str) -> dict:
    return {"metadata": {"annotations": {PROGRESS_ANNOTATION: raw}}}


@pytest.mark.parametrize("loss", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_loss_is_left_out_and_the_rest_kept(loss: str) -> None:
    raw = f'{{"step": 7, "epoch": 1, "loss": {loss}, "samplesPerSecond": 12.5, "updatedAt": "t"}}'
    progress = progress_of(pod_reporting(raw))
    assert progress == {"step": 7, "epoch": 1, "samplesPerSecond": 12.5, "updatedAt": "t"}
    json.dumps(progress, allow_nan=False)  # what the status patch sends


def test_finite_progress_is_copied_as_it_is() -> None:
    report = {"step": 7, "epoch": 1, "loss": 0.25, "samplesPerSecond": 12.5, "updatedAt": "t"}
    assert progress_of(pod_reporting(json.dumps(report))) == report


@pytest.mark.parametrize("raw", ["", "not json", "[1, 2]", "NaN"])
def test_malformed_progress_is_none(raw: str) -> None:
    assert progress_of(pod_reporting(raw)) is None
    assert progress_of({"metadata": {}}) is None
