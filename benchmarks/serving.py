"""Serving: requests/s and p50/p99 latency of modelfleet's model server (fp32 and int8) side by side with KServe's
Python model server on the same TorchScript models: JSON and binary tensors over HTTP, and gRPC, at 1/16/64
concurrent clients; then 64-row requests (binary vs JSON); then the int8 model's accuracy against fp32. Each point
also gives the server's CPU per request; for 64-row requests, each modelfleet model's pass alone is timed too, which
bounds how far binary can beat JSON on it: a binary request costs at least its pass.

    python -m benchmarks.serving [--quick] [--no-kserve] [--repeats 3] [--seconds 3] [--models mlp|cnn] [--cnn cnn]

Servers run pinned to the first half of this process's cores, the load generator (benchmarks/loadgen.py, its own
process) to the other half, so client work does not steal the server's cores (on a 2-core machine: one each). Each
point is measured `--repeats` times (server restarted between repeats); the tables give the median and the spread
(min-max). The machine may be shared, so compare figures within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.models import mlp
from modelfleet.runtime.data import synthetic
from modelfleet.runtime.modelio import load_model, probe_inputs, save_artifact
from modelfleet.runtime.models import build_model
from modelfleet.runtime.processes import worker_plan
from modelfleet.runtime.quantize import seconds_per_pass

ROOT = Path(__file__).resolve().parents[1]
MODES = ("json", "binary", "grpc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def core_split() -> tuple[str | None, str | None]:
    """(server cores, client cores) for taskset, or (None, None) where there is one core or no taskset."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or not shutil.which("taskset"):
        return None, None
    half = len(cores) // 2
    return ",".join(map(str, cores[:half])), ",".join(map(str, cores[half:]))


def pinned(command: list[str], cores: str | None) -> list[str]:
    return ["taskset", "-c", cores, *command] if cores else command


def trained_cnn(name: str, seconds: float) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The built-in CNN `name` trained on the synthetic image task for about `seconds`: (model, calibration rows,
    test x, y)."""
    torch.manual_seed(0)
    model, shape, classes = build_model(name)
    x, y = synthetic(shape, classes, 6000, seed=1)
    test_x, test_y = x[5000:], y[5000:]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for start in range(0, 5000, 100):
            loss = torch.nn.functional.cross_entropy(model(x[start : start + 100]), y[start : start + 100])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), x[:256], test_x, test_y


def artifacts(
    tmp: Path, cnn_name: str, train_seconds: float
) -> tuple[dict[str, tuple[Path, tuple[int, ...]]], dict[str, float]]:
    model, shape, classes = mlp()
    small_mlp = save_artifact(model, "benchmarks.models:mlp", shape, classes, tmp / "mlp", {})
    cnn, calibration, test_x, test_y = trained_cnn(cnn_name, train_seconds)
    small_cnn = save_artifact(cnn, cnn_name, (1, 28, 28), 10, tmp / "cnn", {}, calibration=calibration)
    accuracy = {}
    for quantization in ("none", "int8"):
        loaded = load_model(small_cnn, quantization=quantization, batch_rows=64)
        with torch.inference_mode():
            predicted = loaded.module(test_x).argmax(1)
        accuracy[quantization] = float((predicted == test_y).float().mean()) * 100
        accuracy[f"{quantization} applied"] = loaded.quantization.reason  # type: ignore[assignment]
    return {"mlp": (small_mlp, shape), "cnn": (small_cnn, (1, 28, 28))}, accuracy


def wait_ready(url: str, proc: subprocess.Popen, path: str) -> None:
    deadline = time.monotonic() + 120
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


Server = tuple[subprocess.Popen, str, str]  # process, HTTP host:port, gRPC host:port


def start_modelfleet(artifact: Path, quantization: str, cores: str | None, log: Path) -> Server:
    http, grpc_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODELFLEET_MODEL_PATH": str(artifact), "MODELFLEET_MODEL_NAME": "m",
           "MODELFLEET_QUANTIZATION": quantization, "MODELFLEET_MAX_BATCH_SIZE": "64", "MODELFLEET_MAX_DELAY_MS": "2",
           "MODELFLEET_HOST": "127.0.0.1", "MODELFLEET_PORT": str(http), "MODELFLEET_GRPC_PORT": str(grpc_port),
           "MODELFLEET_MODEL_FACTORIES": "modelfleet.runtime.models,benchmarks.models"}  # fmt: skip
    command = pinned([sys.executable, "-m", "modelfleet.runtime.serve"], cores)
    proc = subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    wait_ready(f"http://127.0.0.1:{http}", proc, "/v2/health/ready")
    return proc, f"127.0.0.1:{http}", f"127.0.0.1:{grpc_port}"


def start_kserve(python: str, artifact: Path, cores: str | None, log: Path) -> Server:
    http, grpc_port = free_port(), free_port()
    script = str(ROOT / "benchmarks" / "kserve_server.py")
    command = [python, script, "--model_name", "m", "--model_path", str(artifact / "model.pt"),
               "--http_port", str(http), "--grpc_port", str(grpc_port),
               # tuned as a KServe user after throughput would run it: no log line per request
               "--enable_latency_logging", "false", "--configure_logging", "false"]  # fmt: skip
    threads = str(len(cores.split(","))) if cores else str(os.cpu_count())
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    proc = subprocess.Popen(pinned(command, cores), env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    wait_ready(f"http://127.0.0.1:{http}", proc, "/v2/models/m/ready")
    return proc, f"127.0.0.1:{http}", f"127.0.0.1:{grpc_port}"


def measure(server: Server, mode: str, shape: list[int], clients: int, seconds: float, cores: str | None) -> dict:
    target = server[2] if mode == "grpc" else server[1]
    command = [sys.executable, "-m", "benchmarks.loadgen", "--target", target, "--mode", mode,
               "--shape", ",".join(map(str, shape)), "--concurrency", str(clients), "--seconds", str(seconds),
               "--server-pid", str(server[0].pid)]  # fmt: skip
    out = subprocess.run(
        pinned(command, cores), capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(runs: list[dict], key: str) -> tuple[float, float, float]:
    values = [r[key] for r in runs]
    return statistics.median(values), min(values), max(values)


def run_points(
    starters: dict[str, Callable[[], Server]],
    points: list[tuple[str, str, list[int], int]],
    repeats: int,
    seconds: float,
    client_cores: str | None,
) -> list[dict]:
    """Every (model, mode, shape, clients) point on every server, `repeats` times with a fresh server each time."""
    rows: dict[tuple, list[dict]] = {}
    for label, start in starters.items():
        model = label.split()[0]
        for _ in range(repeats):
            server = start()
            try:
                measure(server, "json", next(p[2] for p in points if p[0] == model), 4, 1.0, client_cores)  # warm-up
                for point_model, mode, shape, clients in points:
                    if point_model == model:
                        result = measure(server, mode, shape, clients, seconds, client_cores)
                        rows.setdefault((label, mode, shape[0], clients), []).append(result)
            finally:
                server[0].terminate()
                server[0].wait(timeout=30)
    return [
        {"server": k[0], "mode": k[1], "rows": k[2], "clients": k[3], "runs": v, "errors": sum(r["errors"] for r in v),
         **{key: summary(v, key)[0] for key in ("rps", "p50_ms", "p99_ms", "server_cpu_ms")}}
        for k, v in rows.items()
    ]  # fmt: skip


def spread(runs: list[dict], key: str) -> str:
    median, low, high = summary(runs, key)
    return f"{median:g} ({low:g}-{high:g})" if len(runs) > 1 else f"{median:g}"


def print_table(title: str, results: list[dict]) -> None:
    table = Table(title=title)
    for column in ("server", "mode", "rows", "clients", "req/s median (min-max)", "p50 ms", "p99 ms", "errors",
                   "req/s ratio", "p99 ratio", "server CPU ms/req", "client CPU %"):  # fmt: skip
        table.add_column(column, justify="right")
    index = {(r["server"], r["mode"], r["rows"], r["clients"]): r for r in results}
    for r in results:
        model, _, kind = r["server"].partition(" ")
        peer = index.get((f"{model} kserve fp32", r["mode"], r["rows"], r["clients"]))
        mine = peer is not None and not kind.startswith("kserve") and peer["rps"] > 0
        table.add_row(
            r["server"], r["mode"], str(r["rows"]), str(r["clients"]), spread(r["runs"], "rps"),
            spread(r["runs"], "p50_ms"), spread(r["runs"], "p99_ms"), str(r["errors"]),
            f"{r['rps'] / peer['rps']:.2f}" if mine else "-", f"{r['p99_ms'] / peer['p99_ms']:.2f}" if mine else "-",
            spread(r["runs"], "server_cpu_ms"), spread(r["runs"], "client_cpu"),
        )  # fmt: skip
    Console(width=160).print(table)


def passes_per_second(artifact: Path, quantization: str, rows: int, cores: str | None) -> tuple[float, float]:
    """(ms of the fastest pass of `rows` rows, passes a second) of the model as modelfleet's server loads it, with
    its worker plan for `cores`: as many requests of `rows` rows as the server could answer a second if a request
    cost it nothing but its pass."""
    plan = worker_plan(0, "cpu", cores=len(cores.split(",")) if cores else os.cpu_count() or 1)
    threads, affinity = torch.get_num_threads(), os.sched_getaffinity(0)
    torch.set_num_threads(plan.threads)
    if cores:
        os.sched_setaffinity(0, {int(core) for core in cores.split(",")})
    try:
        loaded = load_model(artifact, quantization=quantization, batch_rows=rows)
        seconds = seconds_per_pass([loaded.module], probe_inputs(loaded.signature, rows), budget=2.0)[0]
    finally:
        torch.set_num_threads(threads)
        os.sched_setaffinity(0, affinity)
    return seconds * 1000, plan.workers / seconds


def binary_over_json(label: str, results: list[dict], passes: tuple[float, float] | None) -> str:
    """Binary / JSON req/s of one server, with its CPU per request; given the pass alone (ms, passes a second),
    also the most that ratio could be with a binary request that cost nothing else (the JSON point as measured)."""
    by_mode = {r["mode"]: r for r in results if r["server"] == label}
    json_point, binary = by_mode["json"], by_mode["binary"]
    line = (
        f"{label}, 64 rows: binary / JSON req/s = {binary['rps'] / json_point['rps']:.2f}; server CPU per request "
        f"binary {binary['server_cpu_ms']:.2f} ms, JSON {json_point['server_cpu_ms']:.2f} ms"
    )
    if passes is None:
        return line
    pass_ms, most = passes
    return line + f"; the pass alone {pass_ms:.2f} ms: at most {most / json_point['rps']:.2f} with nothing else"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 2 s points, 1 and 16 clients")
    parser.add_argument("--no-kserve", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--cnn", default="cnn-wide", help="the built-in CNN measured as `cnn` (cnn: 8/16 channels, too small for int8 "
        "to pay at one row; cnn-wide: 32/64)",
    )  # fmt: skip
    parser.add_argument("--models", default="mlp,cnn", help="which models to measure (one part of a run: mlp or cnn)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving.json"))
    args = parser.parse_args()
    repeats, seconds = (1, 2.0) if args.quick else (args.repeats, args.seconds)
    concurrencies = (1, 16) if args.quick else (1, 16, 64)
    server_cores, client_cores = core_split()
    tmp = Path(tempfile.mkdtemp(prefix="modelfleet-bench-"))
    made, accuracy = artifacts(tmp, args.cnn, 10 if args.quick else 30)
    models = {name: made[name] for name in args.models.split(",")}
    kserve_python = None
    if not args.no_kserve:
        setup = ROOT / "benchmarks" / "setup_kserve.sh"
        out = subprocess.run(["bash", str(setup)], capture_output=True, text=True, check=True)
        kserve_python = out.stdout.strip().splitlines()[-1]
    log = tmp / "servers.log"
    starters: dict[str, Callable[[], Server]] = {}
    for name, (artifact, _) in models.items():
        for quantization in ("none", "int8"):
            label = f"{name} modelfleet {'fp32' if quantization == 'none' else quantization}"
            starters[label] = lambda a=artifact, q=quantization: start_modelfleet(a, q, server_cores, log)
        if kserve_python:
            starters[f"{name} kserve fp32"] = lambda a=artifact: start_kserve(kserve_python, a, server_cores, log)
    single = [(m, mode, [1, *shape], c) for m, (_, shape) in models.items() for mode in MODES for c in concurrencies]
    print(f"server cores {server_cores or 'all'}, load generator cores {client_cores or 'all'}; {repeats} repeats")
    print(f"models: mlp = 64-512-512-10 MLP, cnn = the built-in {args.cnn!r}")
    results = run_points(starters, single, repeats, seconds, client_cores)
    print_table("One row per request; ratios: modelfleet / KServe at the same point", results)
    batched = [(m, mode, [64, *shape], 16) for m, (_, shape) in models.items() for mode in MODES]
    without_mlp_int8 = {k: v for k, v in starters.items() if k != "mlp modelfleet int8"}
    big = run_points(without_mlp_int8, batched, repeats, seconds, client_cores)
    print_table("64 rows per request, 16 clients", big)
    for label in dict.fromkeys(r["server"] for r in big):
        model, _, kind = label.partition(" ")
        quantization = {"modelfleet fp32": "none", "modelfleet int8": "int8"}.get(kind)
        passes = passes_per_second(models[model][0], quantization, 64, server_cores) if quantization else None
        print(binary_over_json(label, big, passes))
    for rows, table in ((1, results), (64, big)) if "cnn" in models else ():
        for mode in MODES:
            rps = {r["server"]: r["rps"] for r in table if r["mode"] == mode and r["clients"] == 16}
            ratio = rps["cnn modelfleet int8"] / rps["cnn modelfleet fp32"]
            print(f"cnn int8 / fp32 req/s, {rows} row(s) per request, 16 clients, {mode}: {ratio:.2f}")
    print(
        f"cnn accuracy on 1,000 held-out synthetic images: fp32 {accuracy['none']:.1f} %, int8 {accuracy['int8']:.1f} %"
    )
    print(f"  int8 at load: {accuracy['int8 applied']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"single": results, "batched": big, "accuracy": accuracy}, indent=1))
    print(f"raw figures: {args.out}")


if __name__ == "__main__":
    main()
