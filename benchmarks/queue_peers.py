"""Admission policies for the placement benchmark: modelfleet's queue and peers re-implemented from their documented
behaviour. Each sees the same cluster (free GPUs per node) and the waiting and running jobs, and returns the gangs
to start now (job, node of each worker) and the running jobs to stop.

- first-fit spread: no gang awareness, each worker placed on its own as the default kube-scheduler would
  (least allocated node first), holding its GPUs while the rest of its gang waits.
- modelfleet before the queue: each job retried placement on its own (gang planner, Pack), in arrival order.
- Kueue StrictFIFO / BestEffortFIFO (no quotas, so the ClusterQueue admits whatever fits): workloads ordered by
  priority then creation time, admitted whole when all their pods fit, pods then placed by the kube-scheduler
  (least allocated). StrictFIFO: a head that does not fit blocks everything behind it. BestEffortFIFO: the
  scheduler moves on to the next workload. Kueue's default preemption policy (Never) applies.
- Volcano: gang (minAvailable = all workers) and the binpack plugin (most allocated node first), with the
  elect + reserve actions: the highest-priority, longest-waiting job that does not fit becomes the target, and one
  more node (the one with most idle GPUs) is locked for it each scheduling cycle until it fits; locked nodes take
  no other job.
- modelfleet: `plan_queue`, the same function the operator calls.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from modelfleet.scheduling.gpus import gpu_type_matches
from modelfleet.scheduling.nodes import NodeInfo
from modelfleet.scheduling.planner import GangDemand, Plan, plan_gang
from modelfleet.scheduling.queue import Admit, Evict, QueuedGang, RunningGang, Wait, plan_queue
from modelfleet.scheduling.quota import Quota


@dataclass
class Job:
    id: int
    arrival: int
    duration: int
    workers: int
    gpus: int
    gpu_type: str | None
    region: str | None
    priority: int = 0
    bound: int | None = None
    """activeDeadlineSeconds (minutes here): an upper bound of the run time the job declares."""
    namespace: str = "sim"
    min_workers: int | None = None
    """Elastic jobs: minReplicas (`workers` is maxReplicas); it runs `workers / len(nodes)` times slower when smaller."""
    start: int | None = None
    first_start: int | None = None
    remaining: int = 0
    nodes: list[str] = field(default_factory=list)
    preemptions: int = 0

    def demand(self) -> GangDemand:
        regions = (self.region,) if self.region else ()
        return GangDemand(self.workers, self.gpus, self.gpu_type, regions, min_workers=self.min_workers)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, str(self.id))

    def run_left(self) -> int:
        """Minutes it still runs at its current size (`remaining` is at full size)."""
        return -(-self.remaining * self.workers // max(len(self.nodes), 1))


Starts = list[tuple[Job, list[str]]]
Nodes = dict[str, NodeInfo]
Free = dict[str, int]


def _view(nodes: Nodes, free: Free) -> list[NodeInfo]:
    return [NodeInfo(n.name, n.region, n.zone, n.gpu_type, n.gpus, free[name]) for name, n in nodes.items()]


def worker_fits(node: NodeInfo, job: Job, free: int) -> bool:
    return free >= job.gpus and gpu_type_matches(node.gpu_type, job.gpu_type) and job.region in (None, node.region)


def _per_pod(nodes: Nodes, usable: Free, job: Job, binpack: bool) -> list[str] | None:
    """Each worker on its own feasible node, as a pod-by-pod scheduler places it: the most allocated node first
    (binpack) or the least allocated (the kube-scheduler's default spread); all workers or none."""
    left, placed = dict(usable), []
    for _ in range(job.workers):
        candidates = [n for n in nodes if worker_fits(nodes[n], job, left[n])]
        if not candidates:
            return None
        best = min(candidates, key=lambda n: (left[n] if binpack else -left[n], n))
        left[best] -= job.gpus
        placed.append(best)
    return placed


class FirstFitSpread:
    name = "first-fit spread"

    def __init__(self) -> None:
        self.held: dict[int, list[str]] = {}

    def schedule(
        self, t: int, nodes: Nodes, free: Free, waiting: list[Job], running: list[Job]
    ) -> tuple[Starts, list[Job]]:
        starts: Starts = []
        for job in waiting:
            bound = self.held.setdefault(job.id, [])
            for _ in range(job.workers - len(bound)):
                candidates = [n for n in nodes if worker_fits(nodes[n], job, free[n])]
                if not candidates:
                    break
                best = max(candidates, key=lambda n: (free[n], n))  # least allocated first
                free[best] -= job.gpus  # held while the rest of the gang waits
                bound.append(best)
            if len(bound) == job.workers:
                starts.append((job, self.held.pop(job.id)))
        for job, placed in starts:
            for n in placed:
                free[n] += job.gpus  # the simulator takes them again when the job starts
        return starts, []

    def half_placed(self) -> int:
        return sum(1 for b in self.held.values() if b)


class PerJobRetry:
    name = "modelfleet before (per-job retry)"

    def schedule(
        self, t: int, nodes: Nodes, free: Free, waiting: list[Job], running: list[Job]
    ) -> tuple[Starts, list[Job]]:
        starts: Starts = []
        left = dict(free)
        for job in sorted(waiting, key=lambda j: j.arrival):
            plan = plan_gang(_view(nodes, left), job.demand())
            if isinstance(plan, Plan):
                starts.append((job, [n.name for n in plan.nodes]))
                for n in plan.nodes:
                    left[n.name] -= job.gpus
        return starts, []


class Kueue:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.name = "Kueue StrictFIFO" if strict else "Kueue BestEffortFIFO"

    def schedule(
        self, t: int, nodes: Nodes, free: Free, waiting: list[Job], running: list[Job]
    ) -> tuple[Starts, list[Job]]:
        starts: Starts = []
        left = dict(free)
        for job in sorted(waiting, key=lambda j: (-j.priority, j.arrival, j.id)):
            placed = _per_pod(nodes, left, job, binpack=False)
            if placed is None:
                if self.strict:
                    break
                continue
            starts.append((job, placed))
            for n in placed:
                left[n] -= job.gpus
        return starts, []


class Volcano:
    name = "Volcano gang+binpack+reserve"

    def __init__(self) -> None:
        self.target: int | None = None
        self.locked: list[str] = []

    def schedule(
        self, t: int, nodes: Nodes, free: Free, waiting: list[Job], running: list[Job]
    ) -> tuple[Starts, list[Job]]:
        starts: Starts = []
        left = dict(free)
        order = sorted(waiting, key=lambda j: (-j.priority, j.arrival, j.id))
        if self.target is not None and all(j.id != self.target for j in order):
            self.target, self.locked = None, []
        open_nodes = set(nodes) - set(self.locked)
        for job in order:
            allowed = set(nodes) if job.id == self.target else open_nodes
            placed = _per_pod(nodes, {n: (left[n] if n in allowed else 0) for n in nodes}, job, binpack=True)
            if placed is None:
                if self.target is None:
                    self.target = job.id
                continue
            starts.append((job, placed))
            for n in placed:
                left[n] -= job.gpus
            if job.id == self.target:
                self.target, self.locked = None, []
        if self.target is not None:  # reserve: lock one more node (most idle) for the target this cycle
            target = next(j for j in order if j.id == self.target)
            candidates = [n for n in nodes if n not in self.locked and worker_fits(nodes[n], target, nodes[n].gpus)]
            if candidates:
                self.locked.append(max(candidates, key=lambda n: (left[n], n)))
        return starts, []


class ModelfleetQueue:
    name = "modelfleet queue"

    def __init__(
        self,
        depth: int | None = None,
        quotas: Mapping[str, Quota] | None = None,
        grow_after: int = 0,
        resumable: bool = False,
    ) -> None:
        self.depth = depth
        self.resumable = resumable
        """The jobs checkpoint (TrainingJob spec.checkpoint.path): preemptible backfill (queue.yields_to)."""
        self.quotas = quotas
        self.grow_after = grow_after
        self.evictions: Counter[str] = Counter()
        """Stops by reason (Preempted by priority, Reclaimed quota, ElasticGrow, ElasticShrink)."""
        self.reserved: set[str] = set()
        """Nodes the last pass reserved for waiting gangs (for the benchmark's idle-GPU breakdown)."""

    def schedule(
        self, t: int, nodes: Nodes, free: Free, waiting: list[Job], running: list[Job]
    ) -> tuple[Starts, list[Job]]:
        queued = [QueuedGang(j.key, j.demand(), j.priority, j.arrival, True, j.bound, resumable=self.resumable)
                  for j in waiting]  # fmt: skip
        gangs = [RunningGang(j.key, j.demand(), tuple(j.nodes), j.priority, j.start or 0, j.bound, j.arrival,
                             self.resumable) for j in running]  # fmt: skip
        extra = {"depth": self.depth} if self.depth is not None else {}
        verdicts = plan_queue(_view(nodes, free), queued, gangs, now=t, grow_after=self.grow_after,
                              quotas=self.quotas, **extra)  # fmt: skip
        by_key = {j.key: j for j in [*waiting, *running]}
        starts = [(by_key[k], [n.name for n in v.plan.nodes]) for k, v in verdicts.items() if isinstance(v, Admit)]
        stops = [by_key[k] for k, v in verdicts.items() if isinstance(v, Evict)]
        self.evictions.update(
            "Reclaimed" if "GPUQuota" in v.message else v.reason for v in verdicts.values() if isinstance(v, Evict)
        )
        self.reserved = {n for v in verdicts.values() if isinstance(v, Wait) for n in v.reserved}
        return starts, stops
