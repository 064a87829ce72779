from __future__ import annotations

import pytest
import yaml

from modelfleet.cli import main


def test_deploy_from_a_training_job(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["deploy", "--from-job", "mlp-train", "--name", "mlp", "--regions", "local", "--quantize", "int8"]
    assert main([*args, "--dry-run"]) == 0
    spec = yaml.safe_load(capsys.readouterr().out)["spec"]
    assert spec["model"] == {"fromTrainingJob": "mlp-train", "quantization": "int8"}


def test_a_local_path_is_refused_with_what_to_do_instead(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "./model.pt", "--name", "m", "--regions", "local", "--dry-run"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "path on this machine" in out and "pvc://<claim>/<path>" in out and "--from-job" in out


def test_deploy_needs_exactly_one_model_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "--name", "m", "--regions", "local", "--dry-run"]) == 2
    assert main(["deploy", "pvc://m/x", "--from-job", "j", "--name", "m", "--regions", "local", "--dry-run"]) == 2
    assert "either a model URI or --from-job" in capsys.readouterr().out
