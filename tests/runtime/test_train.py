"""The training worker as real processes: gloo DDP with the env the TrainingJob builder writes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from modelfleet.api.training import TrainingJobSpec
from modelfleet.scheduling.cluster import NodeInfo
from modelfleet.training.builders import worker_env, worker_weights
from modelfleet.training.progress import progress_from_metrics
from tests.support.processes import ServerProcess, env_with

pytestmark = pytest.mark.runtime
ARGS = ["--model", "paper-mlp", "--epochs", "3", "--batch-size", "64", "--samples", "1024", "--lr", "0.2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gang_env(gpu_types: list[str], tmp: Path, **spec_fields: object) -> list[dict[str, str]]:
    """Each rank's env exactly as the operator builds it, with the rendezvous and rank 0's progress on loopback."""
    spec = TrainingJobSpec.model_validate(
        {"workers": {"replicas": len(gpu_types)}, "resources": {"gpus": 1}, **spec_fields}
    )
    nodes = [NodeInfo(f"n{i}", "r1", "z1", t, 8, 8) for i, t in enumerate(gpu_types)]
    weights = worker_weights(spec, nodes)
    meta = {"name": "job", "namespace": "ns", "uid": "uid-1"}
    port, metrics = str(free_port()), on_loopback()
    envs = []
    for rank in range(len(gpu_types)):
        env = {e["name"]: e["value"] for e in worker_env(meta, spec, rank, len(gpu_types), weights, 0) if "value" in e}
        loopback = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "MODELFLEET_COLLECTIVE_TIMEOUT": "60", **metrics}
        envs.append({**env, **loopback})
    return envs


def on_loopback() -> dict[str, str]:
    """Rank 0's progress endpoint on loopback and a free port (in a pod: 0.0.0.0 and the builder's port)."""
    return {"MODELFLEET_METRICS_HOST": "127.0.0.1", "MODELFLEET_METRICS_PORT": str(free_port())}


def launch(envs: list[dict[str, str]], args: list[str], logs: Path) -> list[subprocess.Popen]:
    logs.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [sys.executable, "-m", "modelfleet.runtime.train", *args],
            env=env_with(env),
            stdout=open(logs / f"rank{i}.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        for i, env in enumerate(envs)
    ]


def finish(procs: list[subprocess.Popen], logs: Path, timeout: float = 240) -> None:
    for i, proc in enumerate(procs):
        code = proc.wait(timeout=timeout)
        assert code == 0, (logs / f"rank{i}.log").read_text()[-3000:]


def weights_of(artifact: Path) -> dict[str, torch.Tensor]:
    return torch.load(artifact / "weights.pt")


def single_process(tmp: Path, args: list[str] = ARGS) -> Path:
    out = tmp / "single"
    finish(
        launch(
            [{"WORLD_SIZE": "1", "RANK": "0", **on_loopback()}], [*args, "--output-dir", str(out)], tmp / "single-logs"
        ),
        tmp,
    )
    return out


@pytest.mark.parametrize("gpus", [["H100", "A100"], ["H100", "A100", "T4", "A100"]], ids=["2-ranks", "4-ranks"])
def test_weighted_ddp_equals_single_process_training(tmp_path: Path, gpus: list[str]) -> None:
    envs = gang_env(gpus, tmp_path)
    assert len(set(envs[0]["MODELFLEET_SHARD_WEIGHTS"].split(","))) > 1, "shards really are unequal"
    out = tmp_path / "ddp"
    finish(launch(envs, [*ARGS, "--output-dir", str(out)], tmp_path / "logs"), tmp_path / "logs")
    reference = weights_of(single_process(tmp_path))
    distributed = weights_of(out)
    for name, tensor in reference.items():
        assert torch.allclose(tensor, distributed[name], atol=1e-5), name


def test_paper_network_learns_a_separable_task(tmp_path: Path) -> None:
    artifact = single_process(tmp_path, ["--model", "paper-mlp", "--epochs", "20", "--samples", "2048"])
    metrics = json.loads((artifact / "metadata.json").read_text())["metrics"]
    assert metrics["accuracy"] > 0.97, metrics


def test_killed_rank_resumes_from_checkpoint_after_gang_restart(tmp_path: Path) -> None:
    args = [*ARGS, "--epochs", "40", "--output-dir", str(tmp_path / "out")]
    envs = gang_env(["A100", "A100"], tmp_path, checkpoint={"path": str(tmp_path / "ckpt"), "intervalSteps": 20})
    procs = launch(envs, args, tmp_path / "first")
    deadline = time.monotonic() + 120
    while not (tmp_path / "ckpt" / "checkpoint.pt").exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no checkpoint written"
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)
    for p in procs:  # the operator restarts the whole gang
        p.kill()
        p.wait()
    saved = torch.load(tmp_path / "ckpt" / "checkpoint.pt")["step"]
    envs = [{**e, "MASTER_PORT": str(free_port()), "MODELFLEET_ATTEMPT": "1"} for e in envs]
    envs = [{**e, "MASTER_PORT": envs[0]["MASTER_PORT"]} for e in envs]
    finish(launch(envs, args, tmp_path / "second"), tmp_path / "second")
    log = (tmp_path / "second" / "rank0.log").read_text()
    assert f"resumed from step {saved}" in log and saved >= 20
    reference = weights_of(single_process(tmp_path, [*ARGS, "--epochs", "40"]))
    for name, tensor in reference.items():
        assert torch.allclose(tensor, weights_of(tmp_path / "out")[name], atol=1e-4), name


def test_rank_zero_serves_its_progress_while_training(tmp_path: Path) -> None:
    envs = gang_env(["A100", "A100"], tmp_path)
    url = f"http://127.0.0.1:{envs[0]['MODELFLEET_METRICS_PORT']}/metrics"
    procs = launch(envs, [*ARGS, "--epochs", "100000"], tmp_path)
    try:
        seen: list[dict] = []
        deadline = time.monotonic() + 120
        while len(seen) < 2 or seen[-1]["step"] == seen[0]["step"]:
            alive = all(p.poll() is None for p in procs)
            assert time.monotonic() < deadline and alive, (tmp_path / "rank0.log").read_text()[-3000:]
            try:
                progress = progress_from_metrics(httpx.get(url, timeout=1).text)
            except httpx.HTTPError:
                progress = None
            if progress:
                seen.append(progress)
            time.sleep(0.2)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    latest = seen[-1]
    assert latest["step"] > seen[0]["step"] > 0 and latest["loss"] > 0 and latest["samplesPerSecond"] > 0
    assert 0 <= latest["epoch"] <= latest["step"] // (1024 // 64)
    assert "progress metrics on http://127.0.0.1" in (tmp_path / "rank0.log").read_text()
    assert "progress metrics" not in (tmp_path / "rank1.log").read_text(), "only rank 0 serves"


def test_trained_artifact_is_served(tmp_path: Path) -> None:
    artifact = single_process(tmp_path)
    port = free_port()
    server = ServerProcess(
        {"MODELFLEET_MODEL_PATH": str(artifact), "MODELFLEET_MODEL_NAME": "mlp"},
        "127.0.0.1",
        port,
        tmp_path / "server.log",
    )
    try:
        server.wait_ready()
        rows = [[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]]
        body = {"inputs": [{"name": "input__0", "shape": [2, 3], "datatype": "FP32", "data": rows}]}
        answer = httpx.post(f"{server.url}/v2/models/mlp/infer", json=body).json()["outputs"][0]
        model = torch.jit.load(str(artifact / "model.pt"))
        expected = model(torch.tensor(rows))
        assert torch.allclose(torch.tensor(answer["data"]).reshape(answer["shape"]), expected, atol=1e-5)
    finally:
        server.stop()
