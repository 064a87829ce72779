"""Gang placement: a node for every worker of a job, or the reason it does not fit.

Rules: honour the GPU type and the allowed regions; keep the whole gang inside one region; never split a
worker across nodes (a node holds as many whole workers as its free GPUs allow, so 2 x 4 free GPUs never
take an 8-GPU worker). Pack uses the fewest nodes, then the fewest zones, and best-fits the last node so big
holes stay free for big jobs. Spread puts one worker per node first, across zones, then doubles up.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from modelfleet.api.common import GPU_RESOURCE
from modelfleet.api.training import PlacementPolicy
from modelfleet.scheduling.gpus import gpu_type_matches
from modelfleet.scheduling.nodes import NodeInfo

CPU_WORKER_SLOTS = 16
"""Workers without GPUs that one node takes in the plan (the real scheduler still checks CPU and memory)."""


@dataclass(frozen=True)
class GangDemand:
    workers: int
    gpus_per_worker: int
    gpu_type: str | None = None
    regions: tuple[str, ...] = ()
    policy: PlacementPolicy = PlacementPolicy.PACK
    min_workers: int | None = None
    """Elastic jobs: the fewest workers worth starting; the planner places as many as fit up to `workers`."""


@dataclass(frozen=True)
class Plan:
    nodes: tuple[NodeInfo, ...]
    """nodes[i] is worker i's node."""

    @property
    def region(self) -> str:
        return self.nodes[0].region if self.nodes else ""


@dataclass(frozen=True)
class Unschedulable:
    reason: str


def _tolerated(node: NodeInfo, wants_gpus: bool) -> bool:
    return all(wants_gpus and key == GPU_RESOURCE for key, _ in node.taints)


def slots(node: NodeInfo, gpus_per_worker: int) -> int:
    """Whole workers that fit on the node now."""
    if gpus_per_worker == 0:
        return CPU_WORKER_SLOTS if not node.gpu_type else 0
    return node.free_gpus // gpus_per_worker


def eligible_nodes(nodes: Sequence[NodeInfo], demand: GangDemand) -> list[NodeInfo]:
    wants_gpus = demand.gpus_per_worker > 0
    return [
        n
        for n in nodes
        if n.ready
        and not n.unschedulable
        and (not demand.regions or n.region in demand.regions)
        and (not wants_gpus or gpu_type_matches(n.gpu_type, demand.gpu_type))
        and _tolerated(n, wants_gpus)
    ]


def _pack(candidates: list[NodeInfo], workers: int, per_worker: int) -> list[NodeInfo] | None:
    """Fewest nodes: fill the roomiest nodes first, then swap the last for the tightest node that still fits.
    Every node takes at least one worker or none does, so the `workers` roomiest are all it can need (a partial
    sort: a pass plans thousands of gangs over regions of hundreds of nodes)."""
    roomiest = heapq.nsmallest(workers, candidates, key=lambda n: (-slots(n, per_worker), n.name))
    chosen: list[tuple[NodeInfo, int]] = []
    remaining = workers
    for node in roomiest:
        if remaining == 0:
            break
        take = min(slots(node, per_worker), remaining)
        if take:
            chosen.append((node, take))
            remaining -= take
    if remaining:
        return None
    last, take = chosen[-1]
    used = {n.name for n, _ in chosen[:-1]}
    tighter = [n for n in candidates if n.name not in used and slots(n, per_worker) >= take]
    best = min(tighter, key=lambda n: (slots(n, per_worker), n.name), default=last)
    chosen[-1] = (best, take)
    return [node for node, count in chosen for _ in range(count)]


def _spread(candidates: list[NodeInfo], workers: int, per_worker: int) -> list[NodeInfo] | None:
    """Round-robin over nodes interleaved by zone, so consecutive workers land in different zones."""
    by_zone: dict[str, list[NodeInfo]] = defaultdict(list)
    for node in sorted(candidates, key=lambda n: (-slots(n, per_worker), n.name)):
        by_zone[node.zone].append(node)
    order: list[NodeInfo] = []
    queues = [by_zone[z] for z in sorted(by_zone)]
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop(0))
    left = {n.name: slots(n, per_worker) for n in order}
    placed: list[NodeInfo] = []
    while len(placed) < workers:
        progress = False
        for node in order:
            if len(placed) < workers and left[node.name] > 0:
                placed.append(node)
                left[node.name] -= 1
                progress = True
        if not progress:
            return None
    return placed


def _score(placement: list[NodeInfo], per_worker: int) -> tuple[int, int, int]:
    nodes = {n.name: n for n in placement}
    zones = {n.zone for n in placement}
    leftover = sum(n.free_gpus for n in nodes.values()) - per_worker * len(placement)
    return (len(nodes), len(zones), leftover)


def _place_in_region(candidates: list[NodeInfo], demand: GangDemand, workers: int) -> list[NodeInfo] | None:
    per_worker = demand.gpus_per_worker
    if demand.policy == PlacementPolicy.SPREAD:
        return _spread(candidates, workers, per_worker)
    options = []
    for zone in sorted({n.zone for n in candidates}):
        if fit := _pack([n for n in candidates if n.zone == zone], workers, per_worker):
            options.append(fit)
    if not options and (fit := _pack(candidates, workers, per_worker)):
        options.append(fit)
    return min(options, key=lambda p: _score(p, per_worker), default=None)


def plan_gang(nodes: Sequence[NodeInfo], demand: GangDemand) -> Plan | Unschedulable:
    """A node for every worker, all in one region; elastic demands take the most workers that fit."""
    return plan_on_eligible(eligible_nodes(nodes, demand), demand)


def plan_on_eligible(eligible: Sequence[NodeInfo], demand: GangDemand) -> Plan | Unschedulable:
    """plan_gang on nodes already filtered by `eligible_nodes` for this demand (the queue keeps them per pass)."""
    by_region = _by_region(eligible)
    sizes = range(demand.workers, (demand.min_workers or demand.workers) - 1, -1)
    for size in sizes:
        options = []
        for region in sorted(by_region):
            if placement := _place_in_region(by_region[region], demand, size):
                options.append(placement)
        if options:
            best = min(options, key=lambda p: _score(p, demand.gpus_per_worker))
            return Plan(tuple(best))
    return Unschedulable(_explain(eligible, demand, by_region))


def explain(eligible: Sequence[NodeInfo], demand: GangDemand) -> Unschedulable:
    """Why the demand does not fit on these nodes (already filtered by `eligible_nodes`), as plan_gang says it."""
    return Unschedulable(_explain(eligible, demand, _by_region(eligible)))


def _by_region(nodes: Sequence[NodeInfo]) -> dict[str, list[NodeInfo]]:
    by_region: dict[str, list[NodeInfo]] = defaultdict(list)
    for node in nodes:
        by_region[node.region].append(node)
    return by_region


def _explain(eligible: Sequence[NodeInfo], demand: GangDemand, by_region: dict[str, list[NodeInfo]]) -> str:
    per_worker = demand.gpus_per_worker
    kind = f"{demand.gpu_type} GPUs" if demand.gpu_type else ("GPUs" if per_worker else "CPU slots")
    where = f"in {', '.join(demand.regions)}" if demand.regions else "in any one region"
    need = demand.min_workers or demand.workers
    head = (
        f"needs {need} workers x {per_worker} {kind} ({need * per_worker} in all) {where}"
        if per_worker
        else f"needs {need} CPU workers {where}"
    )
    if not eligible:
        return f"{head}: no ready node matches"
    best_region, best_fit = max(
        ((region, sum(slots(n, per_worker) for n in region_nodes)) for region, region_nodes in by_region.items()),
        key=lambda item: (item[1], item[0]),
    )
    free = sum(n.free_gpus for n in by_region[best_region])
    return f"{head}: at most {best_fit} fit in {best_region} ({free} {kind} free there)"
