"""Compression: a teacher trained by a TrainingJob's gang, and a distilled + pruned student served int8.

    python -m benchmarks.compression [--quick] [--repeats 3]

The teacher (`cnn`) and the students (`cnn-tiny`) are trained the way a TrainingJob trains them: two gloo ranks of
`python -m modelfleet.runtime.train` with the env the operator writes for the spec (the student's spec has
`compression.distillation` from the teacher's artifact and `compression.pruning`). The models are then loaded as the
model server loads them (`load_model`: the teacher fp32, the students `int8`) and measured: parameters (non-zero),
FLOPs per sample (torch.utils.flop_counter; non-zero: counting only non-zero weights), served size, latency of one
1-row request on one thread (median and spread over `--repeats` rounds), and accuracy on held-out rows. A student
trained on the labels alone (same model, same steps) shows what distillation adds. The target: compute per request
at most 1/8 of the teacher's, accuracy within 1 point. The machine may be shared and noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.gang import gang_env, run_gang
from modelfleet.runtime.compression import model_figures
from modelfleet.runtime.data import synthetic
from modelfleet.runtime.modelio import load_model
from modelfleet.runtime.models import build_model

SEED = 0
STUDENT = "student (cnn-tiny distilled from it, pruned 50%), int8"


def train(spec: dict, model: str, args: argparse.Namespace, out: Path) -> Path:
    data = ["--samples", str(args.samples), "--eval-samples", str(args.eval_samples), "--seed", str(SEED)]
    flags = ["--model", model, "--epochs", str(args.epochs), "--lr", "0.05", *data, "--output-dir", str(out)]
    run_gang(gang_env(spec, ["A100", "A100"]), flags, out.parent / f"{out.name}-logs")
    return out


def latency_ms(module: torch.nn.Module, row: torch.Tensor, calls: int) -> float:
    """Median milliseconds of one 1-row forward pass."""
    times = []
    with torch.inference_mode():
        for _ in range(calls):
            began = time.perf_counter()
            module(row)
            times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def measure(artifact: Path, quantization: str, args: argparse.Namespace) -> dict:
    served = load_model(artifact, quantization=quantization, batch_rows=64)  # as a server with maxBatchSize 64
    metadata = json.loads((artifact / "metadata.json").read_text())
    eager, shape, classes = build_model(metadata["model"])
    eager.load_state_dict(torch.load(artifact / "weights.pt", weights_only=True))
    x, y = synthetic(shape, classes, args.samples + args.eval_samples, SEED)
    x_eval, y_eval = x[-args.eval_samples :], y[-args.eval_samples :]
    with torch.inference_mode():
        accuracy = float((served.module(x_eval).argmax(dim=1) == y_eval).float().mean())
    rounds = [latency_ms(served.module, x_eval[:1], args.calls) for _ in range(args.repeats)]
    batch_rounds = [latency_ms(served.module, x_eval[:64], args.calls // 10) for _ in range(args.repeats)]
    return {
        **model_figures(eager, shape),
        "servedBytes": served.served_bytes,
        "served": served.quantization.applied,  # int8 is kept only where smaller and faster: say what served
        "latencyMs": rounds,
        "batchLatencyMs": batch_rounds,
        "accuracy": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rows, epochs and calls")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--eval-samples", type=int, default=2048)
    parser.add_argument("--calls", type=int, default=2000, help="1-row requests per latency round")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compression.json"))
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.samples, args.eval_samples, args.calls = 3, 4096, 1024, 500
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = train({}, "cnn", args, Path(tmp) / "teacher")
        compression = {
            "distillation": {"teacher": f"file://{teacher}", "temperature": 2.0, "alpha": 0.7},
            "pruning": {"amount": 0.5, "atFraction": 0.5},
        }
        student = train({"compression": compression}, "cnn-tiny", args, Path(tmp) / "student")
        plain = train({}, "cnn-tiny", args, Path(tmp) / "plain")
        rows = {
            "teacher (cnn, fp32)": measure(teacher, "none", args),
            "the same student, fp32": measure(student, "none", args),
            STUDENT: measure(student, "int8", args),
            "cnn-tiny on labels only, int8": measure(plain, "int8", args),
        }
        recorded = json.loads((student / "metadata.json").read_text())["compression"]
    teacher_row = rows["teacher (cnn, fp32)"]
    table = Table(title="Teacher vs student (latency on one thread, in process; median, min-max)")
    for column in ("model", "parameters (non-zero)", "FLOPs/sample (non-zero)", "served size", "1-row latency",
                   "64-row latency", "accuracy", "FLOPs vs teacher", "accuracy vs teacher"):  # fmt: skip
        table.add_column(column)
    for name, row in rows.items():
        latency = row["latencyMs"]
        table.add_row(
            name,
            f"{row['parameters']:,} ({row['nonzeroParameters']:,})",
            f"{row['flopsPerSample']:,} ({row['nonzeroFlopsPerSample']:,})",
            f"{row['servedBytes'] / 1024:.1f} KiB ({row['served']})",
            f"{statistics.median(latency):.3f} ms ({min(latency):.3f}-{max(latency):.3f})",
            f"{statistics.median(batch := row['batchLatencyMs']):.3f} ms ({min(batch):.3f}-{max(batch):.3f})",
            f"{100 * row['accuracy']:.2f} %",
            f"1/{teacher_row['flopsPerSample'] / row['flopsPerSample']:.1f}"
            f" (non-zero 1/{teacher_row['nonzeroFlopsPerSample'] / row['nonzeroFlopsPerSample']:.1f})",
            f"{100 * (row['accuracy'] - teacher_row['accuracy']):+.2f} points",
        )
    Console(width=220).print(table)
    student_row = rows[STUDENT]
    ratio = teacher_row["flopsPerSample"] / student_row["flopsPerSample"]
    drop = 100 * (teacher_row["accuracy"] - student_row["accuracy"])
    print(f"target compute <= 1/8 of the teacher's: 1/{ratio:.1f} ({'met' if ratio >= 8 else 'NOT met'}); "
          f"accuracy within 1 point: {drop:+.2f} points below ({'met' if drop <= 1 else 'NOT met'})")  # fmt: skip
    print("the student's metadata.json compression record:", json.dumps(recorded))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
