"""The CLI against the real control plane: one-line deploy and train, and the status table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.kube import Kube, wait_for
from tests.support.training import wait_phase

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]


def cli(kube: Kube, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "modelfleet.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_deploy_train_and_status(kube: Kube, namespace: str) -> None:
    out = cli(
        kube, "deploy", "file:///models/mlp", "--name", "mlp", "--regions", "cn-hangzhou,us-west-1", "-n", namespace
    )
    assert out.returncode == 0, out.stderr
    out = cli(kube, "train", "--name", "job", "--workers", "2", "--gpus", "1", "--gpu-type", "T4", "-n", namespace)
    assert out.returncode == 0, out.stderr
    wait_phase(kube, namespace, "job", "Running")
    wait_for(
        lambda: kube.get_json("mfis", "mlp", "-n", namespace).get("status", {}).get("phase") == "Ready",
        what="mlp Ready",
    )
    table = cli(kube, "status", "-n", namespace).stdout
    assert "job" in table and "Running" in table and "mlp" in table and "cn-hangzhou" in table
    refused = cli(
        kube,
        "deploy",
        "file:///models/m.pt",
        "--name",
        "bad",
        "--regions",
        "cn-hangzhou",
        "--gpus",
        "0",
        "--quantize",
        "fp16",
        "-n",
        namespace,
    )
    assert refused.returncode == 2 and "need resources.gpus" in refused.stdout
