"""Sharding: epoch time of a 4-rank gloo gang with 1 or 2 stragglers under Equal, Weighted and Adaptive shards.

    python -m benchmarks.sharding [--quick] [--repeats 3]

Each rank emulates a GPU with the worker's debug delay (`MODELFLEET_DEBUG_DELAY_PER_SAMPLE`): a fast rank sleeps
`--fast-ms` per row of its shard each step, a straggler three times as long, on top of the real forward and backward
of the model. Two cases: `known`, where the stragglers' nodes carry a slower GPU type (A10: 0.4 of an A100 in the
table, so Weighted starts close to the truth), and `load`, where every node says A100 and the stragglers are slow
from load the table cannot know (Weighted is then Equal). Every run is a real gang of processes with the env the
operator writes; epoch times are the training loop's (no start-up), as the mean over every epoch (Adaptive's first
epoch includes its settling) and as the last epoch. Medians and spread
(min-max) over `--repeats`; the machine may be shared and noisy, so compare within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.gang import gang_env, run_gang

MODES = ("Equal", "Weighted", "Adaptive")
WORLD = 4
SLOWDOWN = 3.0


def epoch_seconds(mode: str, stragglers: int, case: str, args: argparse.Namespace, logs: Path) -> dict:
    """One gang's epoch times: the mean over all epochs and the last one (Adaptive settled), and its final shares."""
    slow_type = "A10" if case == "known" else "A100"
    types = ["A100"] * (WORLD - stragglers) + [slow_type] * stragglers
    spec = {"dataset": {"sharding": mode, "rebalanceIntervalSteps": args.rebalance_steps}}
    envs = gang_env(spec, types)
    for rank, env in enumerate(envs):
        delay = args.fast_ms / 1000 * (SLOWDOWN if rank >= WORLD - stragglers else 1.0)
        env["MODELFLEET_DEBUG_DELAY_PER_SAMPLE"] = str(delay)
    train_args = ["--model", "cnn-tiny", "--epochs", str(args.epochs), "--samples", str(args.samples)]
    final = run_gang(envs, [*train_args, "--batch-size", "64", "--lr", "0.05"], logs)
    epochs = final["epochSeconds"]
    return {"mean": sum(epochs) / len(epochs), "last": epochs[-1], "shares": [round(s, 3) for s in final["shares"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 1 epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4096, help="rows per epoch (64 steps of 64)")
    parser.add_argument("--fast-ms", type=float, default=1.0, help="a fast rank's delay per row, ms")
    parser.add_argument("--rebalance-steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sharding.json"))
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.epochs = 1, 1
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in ("load", "known"):
            for stragglers in (1, 2):
                for mode in MODES:
                    runs = [
                        epoch_seconds(mode, stragglers, case, args, Path(tmp) / f"{case}{stragglers}{mode}{r}")
                        for r in range(args.repeats)
                    ]
                    results[f"{case}/{stragglers}/{mode}"] = {
                        "mean": [r["mean"] for r in runs],
                        "last": [r["last"] for r in runs],
                        "finalShares": runs[-1]["shares"],
                    }
    for which in ("mean", "last"):
        print_table(results, which, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))


def print_table(results: dict[str, dict], which: str, args: argparse.Namespace) -> None:
    title = "every epoch, mean" if which == "mean" else f"last of {args.epochs} epochs (Adaptive settled)"
    table = Table(title=f"Epoch time ({title}), {WORLD} gloo ranks, stragglers {SLOWDOWN:g}x slower; median, min-max")
    for column in ("case", "stragglers", *MODES, "Adaptive / Equal", "Adaptive / Weighted", "Adaptive's shares"):
        table.add_column(column)
    for case in ("load", "known"):
        for stragglers in (1, 2):
            medians = {m: statistics.median(results[f"{case}/{stragglers}/{m}"][which]) for m in MODES}
            cells = [
                f"{medians[m]:.2f} s ({min(t := results[f'{case}/{stragglers}/{m}'][which]):.2f}-{max(t):.2f})"
                for m in MODES
            ]
            table.add_row(
                case,
                str(stragglers),
                *cells,
                f"{medians['Adaptive'] / medians['Equal']:.3f}",
                f"{medians['Adaptive'] / medians['Weighted']:.3f}",
                str(results[f"{case}/{stragglers}/Adaptive"]["finalShares"]),
            )
    Console(width=220).print(table)


if __name__ == "__main__":
    main()
