"""A TrainingJob's gang as real processes: `python -m modelfleet.runtime.train` per rank, gloo on loopback, each
with the env the operator's builder writes for that spec (what the benchmarks of training run)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelfleet.api.training import TrainingJobSpec
from modelfleet.scheduling.nodes import NodeInfo
from modelfleet.training.builders import worker_env, worker_weights

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gang_env(spec: Mapping[str, Any], gpu_types: Sequence[str]) -> list[dict[str, str]]:
    """Each rank's env as the operator builds it for `spec` on nodes of `gpu_types`, rendezvous on loopback."""
    job = TrainingJobSpec.model_validate({"workers": {"replicas": len(gpu_types)}, "resources": {"gpus": 1}, **spec})
    nodes = [NodeInfo(f"n{i}", "r1", "z1", t, 8, 8) for i, t in enumerate(gpu_types)]
    weights = worker_weights(job, nodes)
    meta = {"name": "bench", "namespace": "bench", "uid": "bench"}
    port = str(free_port())
    envs = []
    for rank in range(len(gpu_types)):
        env = {e["name"]: e["value"] for e in worker_env(meta, job, rank, len(gpu_types), weights, 0) if "value" in e}
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "MODELFLEET_METRICS_HOST": "127.0.0.1"}
        env |= {"MODELFLEET_METRICS_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
        envs.append(env)
    return envs


def run_gang(envs: Sequence[Mapping[str, str]], args: Sequence[str], logs: Path, timeout: float = 900) -> dict:
    """Runs every rank to the end; rank 0's final report (`{"trainSeconds", "loss", "accuracy", "shares", ...}`)."""
    logs.mkdir(parents=True, exist_ok=True)
    base = {**os.environ, "PYTHONPATH": f"{ROOT / 'operator'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "modelfleet.runtime.train", *args],
            env={**base, **env},
            stdout=open(logs / f"rank{i}.log", "wb"),  # noqa: SIM115 - the child keeps it open
            stderr=subprocess.STDOUT,
        )
        for i, env in enumerate(envs)
    ]
    for i, proc in enumerate(procs):
        if proc.wait(timeout=timeout) != 0:
            raise RuntimeError(f"rank {i} failed:\n{(logs / f'rank{i}.log').read_text()[-3000:]}")
    lines = (logs / "rank0.log").read_text().splitlines()
    return json.loads(next(line for line in lines if line.startswith('{"final"')))["final"]
