"""How long one planning pass of the GPU queue takes (`plan_queue`, the call the operator makes on its event loop).

Two snapshots of the operator-at-scale cluster (492 nodes of 8 GPUs in 3 regions):
- `admit`: 1,000 waiting gangs of 1-6 one-GPU workers pinned to a region (the scale benchmark's jobs) on an empty
  cluster: nearly every gang is admitted, each on capacity the gangs before it left.
- `saturated`: the placement benchmark's shapes (1-8 workers x 1-8 GPUs, typed or not, pinned or not), 1,000
  waiting on a cluster that running gangs fill: reservations, preemption checks, backfill of the small gangs
  that still fit.

    python -m benchmarks.queue_pass [--repeats 5] [--gangs 1000] [--nodes-per-region 164]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from benchmarks.placement import REGIONS, SHAPES
from modelfleet.scheduling.nodes import NodeInfo
from modelfleet.scheduling.planner import GangDemand, Plan, plan_gang
from modelfleet.scheduling.queue import Admit, QueuedGang, RunningGang, plan_queue

Snapshot = tuple[list[NodeInfo], list[QueuedGang], list[RunningGang]]


def cluster(per_region: int) -> list[NodeInfo]:
    products = ("H100", "A100", "T4")
    return [
        NodeInfo(f"{region}-{i}", region, f"{region}{'ab'[i % 2]}", products[i % 3], 8, 8)
        for region in REGIONS
        for i in range(per_region)
    ]


def admit_snapshot(gangs: int, per_region: int, seed: int = 7) -> Snapshot:
    rng = random.Random(seed)
    queued = [
        QueuedGang(("bench", f"job-{i}"), GangDemand(rng.randint(1, 6), 1, regions=(rng.choice(REGIONS),)), 0, i)
        for i in range(gangs)
    ]
    return cluster(per_region), queued, []


def saturated_snapshot(gangs: int, per_region: int, seed: int = 7) -> Snapshot:
    """Running gangs placed one by one until the next does not fit, then `gangs` waiting."""
    rng = random.Random(seed)

    def demand() -> tuple[GangDemand, float]:
        workers, gpus = rng.choice(SHAPES)
        region = rng.choice([None, *REGIONS])
        typed = GangDemand(workers, gpus, rng.choice([None, "H100", "A100"]), (region,) if region else ())
        return typed, float(rng.randint(10, 400))

    nodes = {n.name: n for n in cluster(per_region)}
    running: list[RunningGang] = []
    while True:
        wanted, length = demand()
        plan = plan_gang(list(nodes.values()), wanted)
        if not isinstance(plan, Plan):
            break
        for node in plan.nodes:
            nodes[node.name] = replace(nodes[node.name], free_gpus=nodes[node.name].free_gpus - wanted.gpus_per_worker)
        started = -float(rng.randint(0, 300))
        running.append(
            RunningGang(("bench", f"run-{len(running)}"), wanted, tuple(n.name for n in plan.nodes), 0, started, length)
        )
    queued = []
    for i in range(gangs):
        wanted, length = demand()
        queued.append(QueuedGang(("bench", f"job-{i}"), wanted, 0, float(i), True, length))
    return list(nodes.values()), queued, running


SNAPSHOTS: dict[str, Callable[[int, int], Snapshot]] = {"admit": admit_snapshot, "saturated": saturated_snapshot}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gangs", type=int, default=1000)
    parser.add_argument("--nodes-per-region", type=int, default=164)
    args = parser.parse_args()
    print(f"plan_queue over {args.gangs} waiting gangs on {3 * args.nodes_per_region} nodes, {args.repeats} repeats "
          "(shared 2-core machine: noisy; compare medians)")  # fmt: skip
    for name, make in SNAPSHOTS.items():
        nodes, queued, running = make(args.gangs, args.nodes_per_region)
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            verdicts = plan_queue(nodes, queued, running, now=0.0)
            seconds.append(time.perf_counter() - started)
        admitted = sum(isinstance(v, Admit) for v in verdicts.values())
        ms = sorted(s * 1000 for s in seconds)
        print(f"{name:>10}: {statistics.median(ms):7.1f} ms median ({ms[0]:.1f}-{ms[-1]:.1f}); "
              f"{len(running)} running, {admitted} admitted")  # fmt: skip


if __name__ == "__main__":
    main()
