"""On a machine with a GPU: the worker trains on it and the model server's loader serves the artifact on it.

    python -m benchmarks.gpu [--model cnn-wide] [--epochs 3] [--serve SECONDS] [--out benchmarks/results/gpu.json]

Trains `--model` with `python -m modelfleet.runtime.train` (one rank: on `cuda` when torch sees a GPU), then loads
the artifact as the model server does (`load_model`): fp32 on CPU as the reference, and fp32, fp16 and bf16 on the
GPU. Prints, per precision, the largest logit difference from the CPU reference and the share of rows whose class
agrees, and the latency of one forward pass at 1, 64 and 1,024 rows (median of timed passes after warm-up, with the
device synchronised) and the rows per second that gives. Needs no cluster and no package beyond torch, numpy and
prometheus-client, so it runs on a bare GPU machine with `PYTHONPATH=operator`.

`--serve SECONDS` then runs the model server itself on the artifact, as a pod would: on the GPU (one server process
per GPU, fp32 and fp16) and on the first half of the machine's cores (one process per two cores, fp32 and int8),
under the serving benchmark's load generator pinned to the other half, SECONDS per point (JSON, binary and gRPC; one
row at 1/16/64 clients, 64 rows at 16). This part needs the model server's packages too (uvicorn, starlette, grpcio,
orjson, tritonclient, aiohttp, rich, httpx).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from modelfleet.runtime.data import synthetic
from modelfleet.runtime.modelio import load_model

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 64, 1024)
PRECISIONS = ("none", "fp16", "bf16")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(model: str, epochs: int, out: Path) -> dict:
    """One rank of the training worker, as a pod runs it; its final report line."""
    path = os.pathsep.join(filter(None, [str(ROOT / "operator"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "MODELFLEET_METRICS_HOST": "127.0.0.1"}
    env["MODELFLEET_METRICS_PORT"] = str(free_port())
    args = ["--model", model, "--epochs", str(epochs), "--samples", "16384", "--eval-samples", "2048"]
    done = subprocess.run(
        [sys.executable, "-m", "modelfleet.runtime.train", *args, "--lr", "0.05", "--output-dir", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-3000:])
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"final"')))["final"]


def latency_ms(module: torch.nn.Module, x: torch.Tensor, device: str, passes: int = 50) -> float:
    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        for i in range(passes + 10):
            sync()
            start = time.perf_counter()
            module(x)
            sync()
            if i >= 10:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def serve(artifact: Path, shape: tuple[int, ...], seconds: float) -> list[dict]:
    """The model server on the artifact, on the GPU and on CPU cores, under load (see the module's docstring)."""
    from benchmarks import serving
    from modelfleet.runtime.serve import DEVICE_ENV

    server_cores, client_cores = serving.core_split()
    log = artifact.parent / "servers.log"

    def start(device: str, precision: str) -> serving.Server:
        os.environ[DEVICE_ENV] = device  # start_modelfleet hands this process's environment to the server
        return serving.start_modelfleet(artifact, precision, server_cores, log)

    starters = {
        f"cnn {device} {precision}": lambda d=device, p=precision: start(d, p)
        for device, precisions in (("cuda", ("none", "fp16")), ("cpu", ("none", "int8")))
        if device == "cpu" or torch.cuda.is_available()
        for precision in precisions
    }
    points = [("cnn", mode, [1, *shape], clients) for mode in serving.MODES for clients in (1, 16, 64)]
    points += [("cnn", mode, [64, *shape], 16) for mode in serving.MODES]
    print(f"server cores {server_cores}, load generator cores {client_cores}")
    results = serving.run_points(starters, points, 1, seconds, client_cores)
    serving.print_table("The model server on the GPU and on CPU cores (req/s, ms)", results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn-wide")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--serve", type=float, metavar="SECONDS", help="then load the model server for this long a point"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    print(f"torch {torch.__version__}; GPU: {torch.cuda.get_device_name(0) if gpu else 'none (CPU only)'}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = train(args.model, args.epochs, Path(tmp) / "artifact")
        trained = {"wallSeconds": round(time.perf_counter() - start, 1), **report}
        print("trained:", json.dumps(trained))
        reference = load_model(Path(tmp) / "artifact")
        shape = tuple(reference.signature.inputs[0].shape[1:])
        x, _ = synthetic(shape, 10, max(BATCHES), seed=1)
        with torch.inference_mode():
            expected = reference.module(x)
        rows = []
        targets = [("cpu", "none")] + [("cuda", p) for p in PRECISIONS if gpu]
        for device, precision in targets:
            loaded = load_model(Path(tmp) / "artifact", quantization=precision, device=device)
            inputs = x.to(device=device, dtype=loaded.dtype)
            with torch.inference_mode():
                got = loaded.module(inputs).float().cpu()
            row = {
                "device": device,
                "precision": precision,
                "maxAbsDiff": float((got - expected).abs().max()),
                "classAgreement": float((got.argmax(1) == expected.argmax(1)).float().mean()),
            }
            for batch in BATCHES:
                ms = latency_ms(loaded.module, inputs[:batch], device)
                row[f"ms@{batch}"], row[f"rowsPerSecond@{batch}"] = round(ms, 4), round(batch / ms * 1000)
            rows.append(row)
            print(json.dumps(row))
        served = serve(Path(tmp) / "artifact", shape, args.serve) if args.serve else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"gpu": gpu, "trained": trained, "rows": rows, "served": served}, indent=2))


if __name__ == "__main__":
    main()
