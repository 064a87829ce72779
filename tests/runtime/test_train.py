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
from modelfleet.runtime.modelio import load_model
from modelfleet.runtime.models import build_model
from modelfleet.scheduling.nodes import NodeInfo
from modelfleet.training.builders import worker_env, worker_weights
from modelfleet.training.progress import progress_from_metrics
from tests.support.processes import ServerProcess, env_with

pytestmark = pytest.mark.runtime
WORKER = ("-m", "modelfleet.runtime.train")
TORCHRUN = ("-m", "torch.distributed.run", *WORKER)
"""What a pod runs when the user's command is torchrun (elastic: c10d hands out the ranks)."""
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


def launch(
    envs: list[dict[str, str]], args: list[str], logs: Path, runner: tuple[str, ...] = WORKER
) -> list[subprocess.Popen]:
    logs.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [sys.executable, *runner, *args],
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
    out, logs = tmp / "single", tmp / "single-logs"
    finish(launch([{"WORLD_SIZE": "1", "RANK": "0", **on_loopback()}], [*args, "--output-dir", str(out)], logs), logs)
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


def final_report(log: Path) -> dict:
    """The `{"final": ...}` line a worker prints on success."""
    line = next(line for line in log.read_text().splitlines() if line.startswith('{"final"'))
    return json.loads(line)["final"]


@pytest.mark.parametrize("world", [2, 4], ids=["2-ranks", "4-ranks"])
def test_adaptive_shares_leave_a_slow_rank_and_still_equal_single_process_training(tmp_path: Path, world: int) -> None:
    envs = gang_env(["A100"] * world, tmp_path, dataset={"sharding": "Adaptive", "rebalanceIntervalSteps": 4})
    envs[1]["MODELFLEET_DEBUG_DELAY_PER_SAMPLE"] = "0.002"  # rank 1 acts as a much slower GPU
    out = tmp_path / "adaptive"
    finish(launch(envs, [*ARGS, "--output-dir", str(out)], tmp_path / "logs"), tmp_path / "logs")
    reference = weights_of(single_process(tmp_path))
    for name, tensor in reference.items():
        assert torch.allclose(tensor, weights_of(out)[name], atol=1e-5), name
    shares = final_report(tmp_path / "logs" / "rank0.log")["shares"]
    assert sum(shares) == pytest.approx(1.0)
    assert shares[1] < 0.5 / world, f"the slow rank keeps {shares}"
    assert min(shares) > 0, "a slow rank keeps a few rows, so its speed stays measured"
    recorded = json.loads((out / "metadata.json").read_text())["shares"]
    assert recorded == {str(i): pytest.approx(s) for i, s in enumerate(shares)}, "per pod, by replica index"


def test_distilled_and_pruned_student_equals_single_process_and_records_its_figures(tmp_path: Path) -> None:
    teacher = single_process(tmp_path / "teacher", [*ARGS, "--epochs", "6"])
    compression = {"distillation": {"teacher": f"file://{teacher}", "temperature": 2.0, "alpha": 0.7},
                   "pruning": {"amount": 0.5, "atFraction": 0.5}}  # fmt: skip
    envs = gang_env(["H100", "A100"], tmp_path, compression=compression)
    assert envs[0]["MODELFLEET_DISTILL_TEACHER"] == str(teacher) and envs[0]["MODELFLEET_PRUNE_AMOUNT"] == "0.5"
    out = tmp_path / "student"
    finish(launch(envs, [*ARGS, "--output-dir", str(out)], tmp_path / "logs"), tmp_path / "logs")
    flags = ["--teacher", str(teacher), "--temperature", "2", "--alpha", "0.7", "--prune-amount", "0.5"]
    reference = weights_of(single_process(tmp_path / "one", [*ARGS, *flags]))
    student = weights_of(out)
    for name, tensor in reference.items():
        assert torch.allclose(tensor, student[name], atol=1e-5), name
    assert "distilling from" in (tmp_path / "logs" / "rank0.log").read_text()
    prunable = sum(student[k].numel() for k in student if k.endswith("weight"))
    zeros = sum(int((student[k] == 0).sum()) for k in student if k.endswith("weight"))
    assert zeros == prunable // 2, "half the weights are zero in the artifact: pruning is permanent"
    record = json.loads((out / "metadata.json").read_text())["compression"]
    assert record["after"]["nonzeroParameters"] == record["before"]["parameters"] - zeros
    assert record["after"]["flopsPerSample"] > record["after"]["nonzeroFlopsPerSample"] > 0
    assert 0.5 < record["accuracyAfter"] <= 1 and 0.5 < record["accuracyBeforePruning"] <= 1
    assert record["distillation"]["teacherAccuracy"] > 0.9
    loaded = load_model(out)  # what the server does: TorchScript, nothing pickled
    rows = torch.randn(5, 3)
    model, _, _ = build_model("paper-mlp")
    model.load_state_dict(student)
    assert torch.allclose(loaded.module(rows), model(rows), atol=1e-6)


def test_structured_pruning_removes_whole_hidden_units(tmp_path: Path) -> None:
    out = single_process(tmp_path, [*ARGS, "--prune-amount", "0.5", "--prune-structured", "--prune-at", "1"])
    weights = weights_of(out)
    dead = (weights["hidden.weight"] == 0).all(dim=1)
    assert int(dead.sum()) == 2, "2 of the 4 hidden units, by L2 norm"
    assert bool((weights["out.weight"] != 0).all()), "the output layer (the classes) stays whole"
    record = json.loads((out / "metadata.json").read_text())["compression"]
    assert record["pruning"] == {"amount": 0.5, "structured": True, "at": 1.0}


@pytest.mark.parametrize("how", ["torchrun", "swapped-ranks"])
def test_elastic_weights_follow_the_pod_not_the_rank(tmp_path: Path, how: str) -> None:
    """c10d hands out ranks in any order (torchrun here; `swapped-ranks` makes the order certain: pod 0 gets rank
    1): each pod still takes the share planned for its node's GPU."""
    envs = gang_env(["T4", "H100"], tmp_path, workers={"minReplicas": 2, "maxReplicas": 2})
    endpoint = f"127.0.0.1:{free_port()}"
    for env in envs:
        env.update(PET_MASTER_ADDR="127.0.0.1", PET_RDZV_ENDPOINT=endpoint, MODELFLEET_METRICS_PORT=str(free_port()))
    if how == "swapped-ranks":
        envs[0]["RANK"], envs[1]["RANK"] = "1", "0"
    out, logs = tmp_path / "elastic", tmp_path / "logs"
    procs = launch(envs, [*ARGS, "--output-dir", str(out)], logs, runner=TORCHRUN if how == "torchrun" else WORKER)
    finish(procs, logs)
    planned = [float(w) for w in envs[0]["MODELFLEET_SHARD_WEIGHTS"].split(",")]
    shares = json.loads((out / "metadata.json").read_text())["shares"]
    assert shares == {"0": pytest.approx(planned[0], abs=1e-6), "1": pytest.approx(planned[1], abs=1e-6)}
    reference = weights_of(single_process(tmp_path))
    for name, tensor in reference.items():
        assert torch.allclose(tensor, weights_of(out)[name], atol=1e-5), name


def test_a_pruned_checkpoint_resumes_with_its_masks(tmp_path: Path) -> None:
    flags = ["--prune-amount", "0.5", "--prune-at", "0.25", "--checkpoint-dir", str(tmp_path / "ckpt")]
    single_process(tmp_path / "first", [*ARGS, *flags, "--checkpoint-interval", "20"])
    resumed = single_process(tmp_path / "second", [*ARGS, "--epochs", "4", *flags])
    assert "resumed from step 40" in (tmp_path / "second" / "single-logs" / "rank0.log").read_text()
    weights = weights_of(resumed)
    zeros = sum(int((weights[k] == 0).sum()) for k in ("hidden.weight", "out.weight"))
    assert zeros == (12 + 8) // 2, "the masks came back with the checkpoint and stayed permanent"
