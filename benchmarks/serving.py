"""Serving: requests/s and p50/p99 latency of modelfleet's model server at several concurrencies (batching on
and off, fp32 and int8), side by side with KServe's Python model server serving the same TorchScript model.

    python -m benchmarks.serving [--quick] [--no-kserve]

Client and servers share this machine's cores, so figures are for comparison within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.models import mlp
from modelfleet.runtime.modelio import save_artifact
from modelfleet.runtime.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def artifacts(tmp: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    model, shape, classes = mlp()
    small_mlp = save_artifact(model, "benchmarks.models:mlp", shape, classes, tmp / "mlp", {})
    torch.manual_seed(0)
    cnn, cnn_shape, cnn_classes = build_model("cnn")
    small_cnn = save_artifact(cnn, "cnn", cnn_shape, cnn_classes, tmp / "cnn", {})
    return {"mlp": (small_mlp, shape), "cnn": (small_cnn, cnn_shape)}


def wait_ready(url: str, proc: subprocess.Popen, path: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def start_modelfleet(artifact: Path, quantization: str, batch: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODELFLEET_MODEL_PATH": str(artifact), "MODELFLEET_MODEL_NAME": "m",
           "MODELFLEET_QUANTIZATION": quantization, "MODELFLEET_MAX_BATCH_SIZE": str(batch), "MODELFLEET_MAX_DELAY_MS": "2",
           "MODELFLEET_HOST": "127.0.0.1", "MODELFLEET_PORT": str(port)}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelfleet.runtime.serve"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, "/v2/health/ready")
    return proc, url


def start_kserve(python: str, artifact: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        python,
        str(ROOT / "benchmarks" / "kserve_server.py"),
        "--model_name",
        "m",
        "--model_path",
        str(artifact / "model.pt"),
        "--http_port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, "/v2/models/m/ready")
    return proc, url


async def load(url: str, shape: tuple[int, ...], concurrency: int, seconds: float) -> dict[str, float]:
    """`concurrency` clients in a closed loop for `seconds` (bounded in time and count)."""
    numel = 1
    for d in shape:
        numel *= d
    body = json.dumps(
        {"inputs": [{"name": "input__0", "shape": [1, *shape], "datatype": "FP32", "data": [0.1] * numel}]}
    )
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.monotonic() < stop and len(latencies) < 200_000:
            t = time.perf_counter()
            try:
                r = await c.post(f"{url}/v2/models/m/infer", content=body, headers={"content-type": "application/json"})
            except httpx.HTTPError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)
            errors += r.status_code != 200

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as c:
        start = time.monotonic()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        elapsed = time.monotonic() - start
    latencies.sort()
    return {
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-kserve", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving.json"))
    args = parser.parse_args()
    seconds = 3.0 if args.quick else 8.0
    concurrencies = (1, 16) if args.quick else (1, 8, 32)
    tmp = Path(tempfile.mkdtemp(prefix="modelfleet-bench-"))
    models = artifacts(tmp)
    kserve_python = None
    if not args.no_kserve:
        out = subprocess.run(
            ["bash", str(ROOT / "benchmarks" / "setup_kserve.sh")], capture_output=True, text=True, check=True
        )
        kserve_python = out.stdout.strip().splitlines()[-1]
    configs = [
        ("modelfleet fp32 no batching", "none", 1),
        ("modelfleet fp32 batching 32", "none", 32),
        ("modelfleet int8 batching 32", "int8", 32),
    ]
    rows = []
    for model_name, (artifact, shape) in models.items():
        servers = [(label, partial(start_modelfleet, artifact, q, b, tmp / "mf.log")) for label, q, b in configs]
        if kserve_python:
            servers.append(("kserve fp32", partial(start_kserve, kserve_python, artifact, tmp / "kserve.log")))
        for label, start in servers:
            proc, url = start()
            try:
                asyncio.run(load(url, shape, 4, 1.0))  # warm-up
                for c in concurrencies:
                    rows.append(
                        {
                            "model": model_name,
                            "server": label,
                            "concurrency": c,
                            **asyncio.run(load(url, shape, c, seconds)),
                        }
                    )
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    table = Table(title="Serving on this machine (client and server share the cores); ratio = modelfleet / kserve rps")
    for col in ("model", "server", "concurrency", "req/s", "p50 ms", "p99 ms", "errors", "rps ratio"):
        table.add_column(col, justify="right")
    index = {(r["model"], r["server"], r["concurrency"]): r for r in rows}
    for r in rows:
        peer = index.get((r["model"], "kserve fp32", r["concurrency"]))
        ratio = f"{r['rps'] / peer['rps']:.2f}" if peer and not r["server"].startswith("kserve") else "-"
        table.add_row(
            r["model"],
            r["server"],
            str(r["concurrency"]),
            f"{r['rps']:g}",
            f"{r['p50_ms']:g}",
            f"{r['p99_ms']:g}",
            str(r["errors"]),
            ratio,
        )
    Console(width=140).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"raw figures: {args.out}")


if __name__ == "__main__":
    main()
