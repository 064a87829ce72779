"""Placement quality: modelfleet's gang planner (Pack) vs a first-fit spread baseline without gang awareness
(each worker placed on its own as the default scheduler would, holding its GPUs while the rest wait).

    python -m benchmarks.placement [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from modelfleet.scheduling.cluster import NodeInfo
from modelfleet.scheduling.gpus import gpu_type_matches
from modelfleet.scheduling.planner import GangDemand, Plan, plan_gang

REGIONS = ("cn-hangzhou", "cn-beijing", "us-west-1")
SHAPES = [(1, 1), (1, 2), (1, 4), (1, 8), (2, 8), (4, 8), (8, 8), (2, 4), (4, 4)]  # (workers, gpus per worker)


@dataclass
class Job:
    id: int
    arrival: int
    duration: int
    workers: int
    gpus: int
    gpu_type: str | None
    region: str | None
    start: int | None = None
    nodes: list[str] = field(default_factory=list)


def cluster() -> dict[str, NodeInfo]:
    nodes = {}
    for region in REGIONS:
        for i in range(24):
            product = ("H100", "A100", "T4")[i % 3]
            name = f"{region}-{product.lower()}-{i}"
            nodes[name] = NodeInfo(name, region, f"{region}{'ab'[i % 2]}", product, 8, 8)
    return nodes


def job_stream(count: int, seed: int) -> list[Job]:
    rng = random.Random(seed)
    jobs, t = [], 0
    for i in range(count):
        t += int(rng.expovariate(1 / 4))
        workers, gpus = rng.choice(SHAPES)
        jobs.append(Job(i, t, int(rng.lognormvariate(4.2, 0.7)) + 5, workers, gpus,
                        rng.choice([None, "H100", "A100"]), rng.choice([None, *REGIONS])))  # fmt: skip
    return jobs


def with_free(node: NodeInfo, free: int) -> NodeInfo:
    return NodeInfo(node.name, node.region, node.zone, node.gpu_type, node.gpus, free, taints=node.taints)


def fits(node: NodeInfo, job: Job, free: int) -> bool:
    return free >= job.gpus and gpu_type_matches(node.gpu_type, job.gpu_type) and (job.region in (None, node.region))


def simulate(jobs: list[Job], gang: bool) -> dict:
    nodes = cluster()
    free = {n: nodes[n].gpus for n in nodes}
    total = sum(free.values())
    waiting: list[Job] = []
    running: list[Job] = []
    held: dict[int, list[str]] = {}  # baseline: workers already bound for a gang that has not started
    pending = sorted(jobs, key=lambda j: j.arrival)
    alloc_samples, useful_samples, stranded_samples = [], [], []
    half_placed_max, t = 0, 0
    horizon = max(j.arrival for j in jobs) + 600
    while t < horizon and (pending or waiting or running):
        for job in [j for j in running if j.start + j.duration <= t]:
            running.remove(job)
            for n in job.nodes:
                free[n] += job.gpus
        while pending and pending[0].arrival <= t:
            waiting.append(pending.pop(0))
        for job in list(waiting):
            if gang:
                view = [with_free(nodes[n], free[n]) for n in nodes]
                plan = plan_gang(
                    view, GangDemand(job.workers, job.gpus, job.gpu_type, (job.region,) if job.region else ())
                )
                if isinstance(plan, Plan):
                    job.nodes = [n.name for n in plan.nodes]
            else:
                bound = held.setdefault(job.id, [])
                for _ in range(job.workers - len(bound)):
                    candidates = [n for n in nodes if fits(nodes[n], job, free[n])]
                    if not candidates:
                        break
                    best = max(candidates, key=lambda n: (free[n], n))  # spread: least allocated first
                    free[best] -= job.gpus
                    bound.append(best)
                if len(bound) == job.workers:
                    job.nodes = held.pop(job.id)
            if job.nodes:
                if gang:
                    for n in job.nodes:
                        free[n] -= job.gpus
                job.start = t
                waiting.remove(job)
                running.append(job)
        used = total - sum(free.values())
        useful = sum(j.gpus * j.workers for j in running)
        alloc_samples.append(used / total)
        useful_samples.append(useful / total)
        smallest = min((j.gpus for j in waiting), default=None)
        stranded_samples.append(sum(f for f in free.values() if smallest and 0 < f < smallest) / total)
        half_placed_max = max(half_placed_max, sum(1 for b in held.values() if b))
        t += 1
    delays = sorted(j.start - j.arrival for j in jobs if j.start is not None)
    never = sum(1 for j in jobs if j.start is None)
    return {
        "gpu_allocated_ratio": round(statistics.mean(alloc_samples), 4),
        "gpu_useful_ratio": round(statistics.mean(useful_samples), 4),
        "queue_delay_p50": delays[len(delays) // 2] if delays else None,
        "queue_delay_p99": delays[int(len(delays) * 0.99) - 1] if delays else None,
        "stranded_gpu_ratio": round(statistics.mean(stranded_samples), 4),
        "half_placed_gangs_peak": half_placed_max,
        "jobs_never_started": never,
        "jobs": len(jobs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/placement.json"))
    args = parser.parse_args()
    count = 300 if args.quick else 1200
    results = {"modelfleet-pack": simulate(job_stream(count, args.seed), gang=True),
               "first-fit-spread": simulate(job_stream(count, args.seed), gang=False)}  # fmt: skip
    table = Table(title=f"Placement: {count} jobs on 72 8-GPU nodes in 3 regions (seed {args.seed}); time in minutes")
    for col in ("figure", "modelfleet (Pack, gang)", "first-fit spread", "ratio", "better"):
        table.add_column(col, justify="right")
    higher_better = {"gpu_allocated_ratio", "gpu_useful_ratio"}
    ours, base = results["modelfleet-pack"], results["first-fit-spread"]
    for key in ours:
        a, b = ours[key], base[key]
        r = "-" if not b else f"{a / b:.2f}"
        better = "higher" if key in higher_better else "lower"
        table.add_row(key, str(a), str(b), r, better)
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"raw figures: {args.out}")


if __name__ == "__main__":
    main()
