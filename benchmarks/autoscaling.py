"""Autoscaling on load traces: modelfleet's autoscaler vs Knative KPA and Kubernetes HPA, same simulator.

python -m benchmarks.autoscaling [--quick]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.autoscaling_sim import simulate
from benchmarks.peers import KnativeKPA, KubernetesHPA
from benchmarks.traces import TRACES
from modelfleet.api.inference import Autoscaling
from modelfleet.inference.autoscaler import RegionScaler, decide

CAPACITY = 10.0
MAX_REPLICAS = 50
METRICS = ("overload_seconds", "unserved_request_seconds", "replica_seconds", "scaling_changes")


def modelfleet_policy():
    policy = Autoscaling(target=CAPACITY)
    state = RegionScaler()

    def scale(now: float, concurrency: float | None, current: int, ready: int) -> int:
        state.add_sample(now, None if concurrency is None else concurrency / policy.target)
        decision = decide(policy, state, now, current, ready, 1, MAX_REPLICAS)
        state.record(now, decision, policy)
        return decision.desired

    return scale


PEERS = {
    "modelfleet": modelfleet_policy,
    "knative-kpa": lambda: KnativeKPA(CAPACITY),
    "k8s-hpa": lambda: KubernetesHPA(CAPACITY),
}


def run(quick: bool) -> list[dict]:
    rows = []
    for startup in (30, 120):
        for trace_name, make in TRACES.items():
            trace = make()
            if quick:
                trace = trace[: len(trace) // 2]
            for peer, factory in PEERS.items():
                result = simulate(trace, factory(), CAPACITY, startup=startup)
                rows.append(
                    {
                        "trace": trace_name,
                        "startup": startup,
                        "autoscaler": peer,
                        **{m: round(getattr(result, m), 1) for m in METRICS},
                    }
                )
    return rows


def ratio(ours: float, theirs: float) -> str:
    if theirs == 0:
        return "-" if ours == 0 else "inf"
    return f"{ours / theirs:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/autoscaling.json"))
    args = parser.parse_args()
    rows = run(args.quick)
    console = Console()
    table = Table(
        title=f"Autoscaling: replica capacity {CAPACITY:g} concurrent requests (lower is better; ratio = modelfleet / peer)"
    )
    for col in ("trace", "start-up s", "figure", "modelfleet", "knative-kpa", "ratio", "k8s-hpa", "ratio"):
        table.add_column(col, justify="right")
    index = {(r["trace"], r["startup"], r["autoscaler"]): r for r in rows}
    for trace, startup in dict.fromkeys((r["trace"], r["startup"]) for r in rows):
        for metric in METRICS:
            ours, kpa, hpa = (index[(trace, startup, p)][metric] for p in PEERS)
            table.add_row(
                trace, str(startup), metric, f"{ours:g}", f"{kpa:g}", ratio(ours, kpa), f"{hpa:g}", ratio(ours, hpa)
            )
        table.add_section()
    console.print(table)
    totals = {p: {m: sum(r[m] for r in rows if r["autoscaler"] == p) for m in METRICS} for p in PEERS}
    summary = Table(title="All traces together")
    for col in ("figure", *PEERS, "vs kpa", "vs hpa"):
        summary.add_column(col, justify="right")
    for m in METRICS:
        ours, kpa, hpa = (totals[p][m] for p in PEERS)
        summary.add_row(m, f"{ours:g}", f"{kpa:g}", f"{hpa:g}", ratio(ours, kpa), ratio(ours, hpa))
    console.print(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "totals": totals}, indent=1))
    console.print(f"raw figures: {args.out}")


if __name__ == "__main__":
    main()
