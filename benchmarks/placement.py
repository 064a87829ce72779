"""Placement and queueing: modelfleet's GPU queue against first-fit spread, modelfleet before the queue, Kueue
(StrictFIFO, BestEffortFIFO) and Volcano (gang + binpack + reservation), re-implemented in benchmarks/queue_peers.py,
all on the same seeded job stream. Time is in minutes; a policy runs whenever a job arrives, starts or ends.
GPU allocation is read three ways, each over minutes while jobs arrive: all of them (gpu_allocated_ratio, the
headline), the second half (gpu_allocated_second_half) and the saturated ones (gpu_allocated_saturated, see
saturated()). The stream's jobs checkpoint every CHECKPOINT_MINUTES, so modelfleet backfills them preemptibly onto
reserved GPUs (modelfleet-no-checkpoint: the same queue when they do not); a stop throws away the work since the
last checkpoint, which gpu_useful_* subtract from the allocation. IdleBreakdown tells where the idle GPUs are.

    python -m benchmarks.placement [--quick] [--seeds 42 43 44] [--parts plain priorities quotas heavy] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.figures import median_and_spread
from benchmarks.queue_peers import FirstFitSpread, Job, Kueue, ModelfleetQueue, PerJobRetry, Volcano, worker_fits
from modelfleet.scheduling.nodes import NodeInfo
from modelfleet.scheduling.quota import ANY, Quota

REGIONS = ("cn-hangzhou", "cn-beijing", "us-west-1")
SHAPES = [(1, 1), (1, 2), (1, 4), (1, 8), (2, 8), (4, 8), (8, 8), (2, 4), (4, 4)]  # (workers, gpus per worker)
CHECKPOINT_MINUTES = 10
"""A preempted job resumes from its last checkpoint: it loses at most this much work."""
HIGH_PRIORITY, HIGH_SHARE = 1000, 0.2
TEAM_QUOTAS = {"team-a": 0.4, "team-b": 0.3, "team-c": 0.2, "team-d": 0.1}
"""The quota variant: each team's GPUQuota as a share of the cluster's GPUs (all may borrow); jobs are spread evenly
over the teams, so team-d asks for about 2.5x its quota and borrows what team-a leaves idle."""
ELASTIC_SHARE = 0.25
"""The quota variant: this share of the multi-worker jobs is elastic, minReplicas = half its workers."""


def cluster(per_region: int = 24) -> dict[str, NodeInfo]:
    nodes = {}
    for region in REGIONS:
        for i in range(per_region):
            product = ("H100", "A100", "T4")[i % 3]
            name = f"{region}-{product.lower()}-{i}"
            nodes[name] = NodeInfo(name, region, f"{region}{'ab'[i % 2]}", product, 8, 8)
    return nodes


SATURATION_GAP = 3
"""Mean minutes between arrivals at which the stream asks for 1.07x the cluster's GPU-minutes (4: 0.77x)."""


def job_stream(
    count: int, seed: int, gap: float = SATURATION_GAP, priorities: bool = False, teams: bool = False
) -> list[Job]:
    """The jobs: shapes, durations, GPU types and regions from `seed` (the stream of the earlier benchmark, whose
    arrivals came every 4 minutes); length bounds (activeDeadlineSeconds, 1-2x the real duration) and priorities
    from a second generator; with `teams`, namespaces and elastic sizes from a third."""
    rng, extra, team_rng = random.Random(seed), random.Random(seed + 10_000), random.Random(seed + 20_000)
    jobs, t = [], 0
    for i in range(count):
        t += int(rng.expovariate(1 / gap))
        workers, gpus = rng.choice(SHAPES)
        duration = int(rng.lognormvariate(4.2, 0.7)) + 5
        gpu_type, region = rng.choice([None, "H100", "A100"]), rng.choice([None, *REGIONS])
        bound = int(duration * extra.uniform(1.0, 2.0)) + 1
        priority = HIGH_PRIORITY if priorities and extra.random() < HIGH_SHARE else 0
        job = Job(i, t, duration, workers, gpus, gpu_type, region, priority, bound, remaining=duration)
        if teams:
            job.namespace = team_rng.choice(list(TEAM_QUOTAS))
            job.min_workers = workers // 2 if workers > 1 and team_rng.random() < ELASTIC_SHARE else None
        jobs.append(job)
    return jobs


def team_quotas(nodes: dict[str, NodeInfo]) -> dict[str, Quota]:
    total = sum(n.gpus for n in nodes.values())
    return {team: Quota({ANY: round(share * total)}, borrowing=True) for team, share in TEAM_QUOTAS.items()}


def percentile(values: list[int], q: float) -> int | None:
    ordered = sorted(values)
    return ordered[max(int(len(ordered) * q) - 1, 0)] if ordered else None


class IdleBreakdown:
    """Where the idle GPUs are, minute by minute while jobs arrive (mean share of all GPUs), over every minute
    (idle_*) and over the saturated ones (sat_idle_*, see saturated()): `reserved` on nodes held for a waiting gang
    (modelfleet's reservations; the peers report none); `no_type` where no waiting job takes the node's GPU type
    and region (or nobody waits); `too_small` where some do, but every one of them asks for more GPUs per worker
    than the node has free; `stranded` where some waiting job could place a worker but not its whole gang (the gang
    is too big for what is free: fragmentation)."""

    KINDS = ("reserved", "no_type", "too_small", "stranded")

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self.samples: Counter[str] = Counter()

    def __call__(
        self, policy: Any, nodes: dict[str, NodeInfo], free: dict[str, int], waiting: list[Job], saturated: bool
    ) -> None:
        reserved = getattr(policy, "reserved", set())
        scopes = ("idle", "sat_idle") if saturated else ("idle",)
        self.samples.update(scopes)
        self.totals["queue_length"] += len(waiting)
        for name, gpus in free.items():
            if not gpus:
                continue
            takers = [j for j in waiting if worker_fits(nodes[name], j, nodes[name].gpus)]
            if name in reserved:
                kind = "reserved"
            elif not takers:
                kind = "no_type"
            elif any(j.gpus <= gpus for j in takers):
                kind = "stranded"
            else:
                kind = "too_small"
            self.totals.update({f"{scope}_{kind}": gpus for scope in scopes})

    def figures(self, total: int) -> dict[str, float]:
        share = {
            f"{scope}_{kind}": round(self.totals[f"{scope}_{kind}"] / self.samples[scope] / total, 4)
            for scope in ("idle", "sat_idle")
            for kind in self.KINDS
            if self.samples[scope]
        }
        return {**share, "queue_length_mean": round(self.totals["queue_length"] / self.samples["idle"], 1)}


def saturated(free: dict[str, int], waiting: list[Job]) -> bool:
    """Whether this minute counts as saturated: after the policy's pass, the jobs still waiting ask for at least as
    many GPUs as are idle, so a scheduler bound by no gang, type, region or fragmentation would leave no GPU idle.
    The same test for every policy, each on its own queue (its share of the minutes is printed). Left out are the
    minutes where not even that scheduler could fill the cluster: the stream's ramp and lulls. A bare "the queue is
    not empty" would leave out almost nothing: some typed or region-pinned job waits in 97-99 % of the minutes."""
    return sum(j.workers * j.gpus for j in waiting) >= sum(free.values())


def simulate(jobs: list[Job], policy: Any, nodes: dict[str, NodeInfo]) -> dict[str, Any]:
    free = {n: nodes[n].gpus for n in nodes}
    total = sum(free.values())
    pending = sorted(jobs, key=lambda j: j.arrival)
    waiting: list[Job] = []
    running: list[Job] = []
    alloc, useful, pass_ms = [], [], []
    thrown_away: Counter[int] = Counter()
    """GPUs per minute whose work a stop threw away (run since the job's last checkpoint)."""
    # the second half of the arrival window: the stream's first ~800 minutes do not fill the cluster for any policy
    late_alloc: list[float] = []
    saturated_minutes: list[int] = []  # see saturated()
    half_placed_peak, t, changed = 0, 0, True
    idle = IdleBreakdown()
    held: Counter[str] = Counter()
    elastic_sizes: list[float] = []
    last_arrival = max(j.arrival for j in jobs)
    horizon = last_arrival + 6000
    while t < horizon and (pending or waiting or running):
        for job in [j for j in running if j.start + j.run_left() <= t]:
            running.remove(job)
            for n in job.nodes:
                free[n] += job.gpus
            changed = True
        while pending and pending[0].arrival <= t:
            waiting.append(pending.pop(0))
            changed = True
        if changed or isinstance(policy, (FirstFitSpread, Volcano)):  # these act on every cycle
            started = time.perf_counter()
            starts, stops = policy.schedule(t, nodes, free, waiting, running)
            pass_ms.append((time.perf_counter() - started) * 1000)
            changed = bool(starts or stops)
            for job in stops:
                running.remove(job)
                for n in job.nodes:
                    free[n] += job.gpus
                lost = (t - job.start) % CHECKPOINT_MINUTES
                thrown_away.update({minute: job.gpus * len(job.nodes) for minute in range(t - lost, t)})
                done = (t - job.start - lost) * len(job.nodes) // job.workers
                job.remaining, job.nodes, job.start = job.remaining - done, [], None
                job.preemptions += 1
                waiting.append(job)
            for job, placed in starts:
                for n in placed:
                    free[n] -= job.gpus
                    assert free[n] >= 0, f"{policy.name} overcommitted {n}"
                job.nodes, job.start = placed, t
                job.first_start = t if job.first_start is None else job.first_start
                waiting.remove(job)
                running.append(job)
        if t <= last_arrival:  # saturation: while jobs still arrive
            alloc.append((total - sum(free.values())) / total)
            if t >= last_arrival // 2:
                late_alloc.append(alloc[-1])
            if busy := saturated(free, waiting):
                saturated_minutes.append(t)
            useful.append(sum(j.gpus * len(j.nodes) for j in running) / total)
            idle(policy, nodes, free, waiting, busy)
            for j in running:
                held[j.namespace] += j.gpus * len(j.nodes)
                if j.min_workers:
                    elastic_sizes.append(len(j.nodes) / j.workers)
        if isinstance(policy, FirstFitSpread):
            half_placed_peak = max(half_placed_peak, policy.half_placed())
        t += 1
    useful = [share - thrown_away[minute] / total for minute, share in enumerate(useful)]
    delays = [j.first_start - j.arrival for j in jobs if j.first_start is not None]
    by_priority = {p: [j.first_start - j.arrival for j in jobs if j.priority == p and j.first_start is not None]
                   for p in (0, HIGH_PRIORITY)}  # fmt: skip
    return {
        "gpu_allocated_ratio": round(statistics.mean(alloc), 4),
        "gpu_allocated_second_half": round(statistics.mean(late_alloc), 4),
        "gpu_allocated_saturated": round(statistics.mean(alloc[m] for m in saturated_minutes), 4)
        if saturated_minutes
        else None,
        "saturated_minutes_share": round(len(saturated_minutes) / len(alloc), 3),
        "gpu_useful_ratio": round(statistics.mean(useful), 4),
        "gpu_useful_saturated": round(statistics.mean(useful[m] for m in saturated_minutes), 4)
        if saturated_minutes
        else None,
        "queue_delay_p50": percentile(delays, 0.5),
        "queue_delay_p99": percentile(delays, 0.99),
        "high_priority_p99": percentile(by_priority[HIGH_PRIORITY], 0.99),
        "low_priority_p99": percentile(by_priority[0], 0.99),
        "jobs_never_started": sum(1 for j in jobs if j.first_start is None),
        "half_placed_gangs_peak": half_placed_peak,
        "preemptions": sum(j.preemptions for j in jobs),
        "pass_ms_mean": round(statistics.mean(pass_ms), 2),
        "pass_ms_p99": round(percentile(sorted(pass_ms), 0.99) or 0, 2),  # type: ignore[arg-type]
        "makespan": t,
        **idle.figures(total),
        **{f"gpus_{ns}": round(gpus / len(alloc) / total, 3) for ns, gpus in sorted(held.items()) if ns != "sim"},
        "elastic_size_mean": round(statistics.mean(elastic_sizes), 3) if elastic_sizes else None,
        **({f"stops_{why}": policy.evictions[why] for why in STOP_REASONS} if hasattr(policy, "evictions") else {}),
    }


POLICIES: dict[str, Callable[[], Any]] = {
    # the stream's jobs checkpoint (CHECKPOINT_MINUTES): they backfill preemptibly, see queue.yields_to
    "modelfleet": lambda: ModelfleetQueue(grow_after=CHECKPOINT_MINUTES, resumable=True),
    "modelfleet-no-checkpoint": lambda: ModelfleetQueue(grow_after=CHECKPOINT_MINUTES),
    "modelfleet-quotas": lambda: ModelfleetQueue(
        quotas=team_quotas(cluster()), grow_after=CHECKPOINT_MINUTES, resumable=True
    ),
    "first-fit": FirstFitSpread,
    "before": PerJobRetry,
    "kueue-strict": lambda: Kueue(strict=True),
    "kueue-best": lambda: Kueue(strict=False),
    "volcano": Volcano,
}
PEERS = ("modelfleet", "modelfleet-no-checkpoint", "first-fit", "before", "kueue-strict", "kueue-best", "volcano")
HIGHER_BETTER = {"gpu_allocated_ratio", "gpu_allocated_second_half", "gpu_allocated_saturated", "gpu_useful_ratio",
                 "gpu_useful_saturated", "elastic_size_mean"}  # fmt: skip
NEUTRAL = {f"gpus_{team}" for team in TEAM_QUOTAS} | {"queue_length_mean", "saturated_minutes_share"}
STOP_REASONS = ("Preempted", "Reclaimed", "ElasticGrow", "ElasticShrink")
PARTS = ("plain", "priorities", "quotas", "heavy")


def _one(name: str, count: int, seed: int, priorities: bool, nodes_per_region: int, gap: float,
         teams: bool) -> dict[str, Any]:  # fmt: skip
    return simulate(job_stream(count, seed, gap, priorities, teams), POLICIES[name](), cluster(nodes_per_region))


def high_alone_p99(count: int, seed: int) -> int | None:
    """The high-priority jobs' p99 wait with the cluster to themselves (no low-priority job in the stream), the
    lower of modelfleet's and first-fit's: about the least that any policy which never preempts an equal priority
    can reach, whatever it does with the low-priority jobs."""

    def p99(name: str) -> int | None:
        jobs = [j for j in job_stream(count, seed, priorities=True) if j.priority == HIGH_PRIORITY]
        return simulate(jobs, POLICIES[name](), cluster())["high_priority_p99"]

    return min((v for v in map(p99, ("modelfleet", "first-fit")) if v is not None), default=None)


def print_priority_floor(seeds: list[int], runs: list[dict[str, Any]], floors: list[int | None]) -> None:
    table = Table(title="modelfleet per seed: high / low p99, against the high-priority jobs alone (a floor)")
    for column in ("seed", "high p99", "low p99", "high / low", "high alone p99", "alone / low"):
        table.add_column(column, justify="right")
    for seed, run, floor in zip(seeds, runs, floors, strict=True):
        high, low = run["high_priority_p99"], run["low_priority_p99"]
        table.add_row(str(seed), str(high), str(low), f"{high / low:.3f}", str(floor),
                      f"{floor / low:.3f}" if floor is not None else "-")  # fmt: skip
    Console(width=200).print(table)


def run_all(count: int, seeds: list[int], priorities: bool, nodes_per_region: int = 24, gap: float = SATURATION_GAP,
            only: tuple[str, ...] = PEERS, teams: bool = False, processes: int = 1) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    runs = [(name, count, seed, priorities, nodes_per_region, gap, teams) for name in only for seed in seeds]
    with ProcessPoolExecutor(processes) as pool:
        results = list(pool.map(_one, *zip(*runs, strict=True)))
    return {name: results[i * len(seeds) : (i + 1) * len(seeds)] for i, name in enumerate(only)}


def print_table(title: str, results: dict[str, list[dict[str, Any]]], keys: list[str]) -> None:
    table = Table(title=title)
    table.add_column("figure (median, min-max)")
    for name in results:
        table.add_column(results[name][0].get("label", name), justify="right")
    table.add_column("better")
    for key in keys:
        table.add_row(key, *(median_and_spread(results[n], key)[1] for n in results),
                      "higher" if key in HIGHER_BETTER else "-" if key in NEUTRAL else "lower")  # fmt: skip
    Console(width=200).print(table)


def ratios(results: dict[str, list[dict[str, Any]]], keys: list[str]) -> dict[str, dict[str, float | None]]:
    """modelfleet's median over each peer's median, per figure."""
    ours = {k: median_and_spread(results["modelfleet"], k)[0] for k in keys}
    out: dict[str, dict[str, float | None]] = {}
    for name in results:
        if name == "modelfleet":
            continue
        theirs = {k: median_and_spread(results[name], k)[0] for k in keys}
        out[name] = {k: (round(ours[k] / theirs[k], 3) if ours[k] is not None and theirs[k] else None) for k in keys}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 jobs, one seed, no heavy stream")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--processes", type=int, default=1, help="simulations run side by side")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/placement.json"))
    args = parser.parse_args()
    count, seeds = (300, args.seeds[:1]) if args.quick else (1200, args.seeds)
    parts = [p for p in args.parts if not (args.quick and p == "heavy")]
    keys = ["gpu_allocated_ratio", "gpu_allocated_second_half", "gpu_allocated_saturated", "saturated_minutes_share",
            "gpu_useful_ratio", "gpu_useful_saturated", "queue_delay_p50", "queue_delay_p99", "jobs_never_started",
            "half_placed_gangs_peak", "preemptions", "makespan", "pass_ms_mean", "pass_ms_p99", "queue_length_mean"]  # fmt: skip
    idle_keys = [f"{scope}_{kind}" for scope in ("sat_idle", "idle") for kind in IdleBreakdown.KINDS]
    report: dict[str, Any] = {}
    if "plain" in parts:
        plain = run_all(count, seeds, priorities=False, processes=args.processes)
        print_table(f"{count} jobs on 72 8-GPU nodes in 3 regions at saturation (offered load 1.07), seeds {seeds}; "
                    "minutes; useful: allocated less the work stops threw away (since the last checkpoint)", plain, keys)  # fmt: skip
        print_table("Where the idle GPUs are (share of all GPUs; sat_: over the saturated minutes), see IdleBreakdown",
                    plain, idle_keys)  # fmt: skip
        report["plain"] = {"runs": plain, "modelfleet_over_peer": ratios(plain, keys)}
        Console(width=200).print(report["plain"]["modelfleet_over_peer"])
    if "priorities" in parts:
        prio = run_all(count, seeds, priorities=True, processes=args.processes,
                       only=("modelfleet", "modelfleet-no-checkpoint", "kueue-strict", "kueue-best", "volcano"))  # fmt: skip
        prio_keys = ["high_priority_p99", "low_priority_p99", "queue_delay_p99", "gpu_allocated_ratio",
                     "gpu_allocated_saturated", "gpu_useful_ratio", "gpu_useful_saturated", "preemptions",
                     "jobs_never_started"]  # fmt: skip
        print_table(f"Same stream, {HIGH_SHARE:.0%} of jobs at priority {HIGH_PRIORITY}", prio, prio_keys)
        report["priorities"] = {"runs": prio, "high_over_low_p99": {
            name: [r["high_priority_p99"] / r["low_priority_p99"] for r in runs] for name, runs in prio.items()}}  # fmt: skip
        Console(width=200).print(report["priorities"]["high_over_low_p99"])
        floors = [high_alone_p99(count, seed) for seed in seeds]
        report["priorities"]["high_alone_p99"] = floors
        print_priority_floor(seeds, prio["modelfleet"], floors)
    if "quotas" in parts:
        teams = run_all(count, seeds, priorities=False, teams=True, processes=args.processes,
                        only=("modelfleet-quotas", "modelfleet", "kueue-best", "volcano"))  # fmt: skip
        team_keys = ["gpu_allocated_ratio", "gpu_useful_ratio", "queue_delay_p50", "queue_delay_p99",
                     "jobs_never_started", *(f"gpus_{t}" for t in TEAM_QUOTAS), "elastic_size_mean",
                     *(f"stops_{why}" for why in STOP_REASONS), "pass_ms_mean", "pass_ms_p99"]  # fmt: skip
        quotas = ", ".join(f"{t} {share:.0%}" for t, share in TEAM_QUOTAS.items())
        print_table(f"Same stream over 4 namespaces with GPUQuotas ({quotas} of the GPUs, all borrowing), "
                    f"{ELASTIC_SHARE:.0%} of multi-worker jobs elastic (min = half); modelfleet without quotas and "
                    "the peers (elastic jobs at full size, no quotas) alongside", teams, team_keys)  # fmt: skip
        report["quotas_elastic"] = {"runs": teams}
    if "heavy" in parts:
        heavy = run_all(count * 3, seeds[:1], priorities=True, nodes_per_region=96, gap=SATURATION_GAP / 4,
                        only=("modelfleet", "kueue-best", "volcano"), processes=args.processes)  # fmt: skip
        print_table(f"Heavier: {count * 3} jobs on 288 nodes, 4x the arrival rate, seed {seeds[0]}", heavy, keys)
        report["heavy"] = {"runs": heavy}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"raw figures: {args.out}")


if __name__ == "__main__":
    main()
