from __future__ import annotations

import pytest
import yaml

import modelfleet
from modelfleet.cli import build_parser, main


def test_deploy_dry_run_prints_a_valid_inference_service(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "deploy",
            "file:///models/mlp",
            "--name",
            "mlp",
            "--regions",
            "cn-hangzhou,us-west-1",
            "--gpus",
            "1",
            "--quantize",
            "int8",
            "--dry-run",
        ]
    )
    manifest = yaml.safe_load(capsys.readouterr().out)
    assert code == 0 and manifest["kind"] == "InferenceService"
    assert [r["name"] for r in manifest["spec"]["regions"]] == ["cn-hangzhou", "us-west-1"]
    assert manifest["spec"]["model"] == {"uri": "file:///models/mlp", "quantization": "int8"}


def test_train_dry_run_passes_program_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "train",
                "--name",
                "j",
                "--workers",
                "4",
                "--gpus",
                "2",
                "--gpu-type",
                "H100",
                "--dry-run",
                "--",
                "--epochs",
                "3",
            ]
        )
        == 0
    )
    spec = yaml.safe_load(capsys.readouterr().out)["spec"]
    assert spec["args"] == ["--epochs", "3"] and spec["resources"] == {"gpus": 2, "gpuType": "H100"}


def test_bad_option_is_refused_with_the_field_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "m.pt", "--name", "x", "--regions", "US West", "--dry-run"]) == 2
    assert "regions.0.name" in capsys.readouterr().out


def test_python_api_one_liner() -> None:
    manifest = modelfleet.deploy(
        "pvc://models/mlp/model.pt",
        name="mlp",
        regions=["cn-beijing"],
        gpus=1,
        gpu_type="T4",
        quantize="bf16",
        dry_run=True,
    )
    assert manifest["spec"]["resources"] == {"gpus": 1, "gpuType": "T4"}
    job = modelfleet.train(name="j", workers=2, regions=["us-west-1"], dry_run=True)
    assert job["spec"]["placement"]["regions"] == ["us-west-1"]


def test_operator_elects_a_leader_by_default() -> None:
    args = build_parser().parse_args(["operator"])
    assert args.leader_elect and args.lease_name == "modelfleet-operator" and args.lease_namespace is None
    assert (args.lease_duration, args.renew_deadline, args.retry_period) == (15, 10, 2)
    assert not build_parser().parse_args(["operator", "--no-leader-elect"]).leader_elect
    with pytest.raises(SystemExit):
        build_parser().parse_args(["operator", "--peering", "mf"])
