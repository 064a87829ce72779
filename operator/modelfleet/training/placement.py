"""Placing a gang: record the placement in the job's status, then create every worker at once, pinned to its node.
The status write is made on the version of the job the decision read, so it fails for a job deleted or changed
meanwhile (a watch gap may hide that): it proves the owner as a fresh read would, before any worker exists. Should the
API refuse a worker, the ones created are deleted at once (no half gang stays), and the refusal is reported.
The gang's headless Service is server-side applied (field manager `modelfleet`, as every Deployment and Service).

What is created goes into the worker index and the capacity reservations at once, so the next pass sees it (no
twins) and the next plan does not count its GPUs as free, before the watch delivers the new pods.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Histogram

from modelfleet import kube
from modelfleet.api.training import TrainingJobSpec
from modelfleet.capacity import CAPACITY
from modelfleet.owned import WORKER_PODS
from modelfleet.scheduling.planner import Plan
from modelfleet.scheduling.queue import gpus_on
from modelfleet.training.builders import headless_service, worker_pod, worker_weights
from modelfleet.training.status import CreateRefused, NotPlaced, Outcome, Placed

PLURAL = "trainingjobs"
GANGS_IN_FLIGHT = 8
"""Gangs being recorded and created at once. With no bound, a queue pass that admits a thousand gangs queues every
status write and create at once (gangs start together, at the end) and holds every pod's body in memory meanwhile;
bounded, gangs start one after another, as fast. 8, not 16: at 1,000 jobs both place ~18 gangs a second (a slot is
held 0.42-0.44 s against 0.9-1.0 s), but with 16 gangs' pods arriving at once the test cluster's KWOK (every
node's kubelet on one pod watch) fell behind and replayed pods, and p99 to Running was 64-67 s against 46-48 s
(docs/performance.md, Session 13)."""
PLACEMENTS = Counter(
    "modelfleet_gang_placements",
    "Admitted gangs by what their placement came to: Placed, CreateRefused, CapacityChanged (the planned GPUs were "
    "taken before the handler acted on the verdict), NotPlaced (a planned node went while it waited for a slot).",
    ["result"],
)
SLOT_WAIT = Histogram(
    "modelfleet_placement_slot_wait_seconds",
    "Time an admitted gang waits, its GPUs claimed, for one of the GANGS_IN_FLIGHT placement slots.",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 40, 80),
)
SLOT_HELD = Histogram(
    "modelfleet_placement_seconds",
    "Time a gang holds its placement slot: the status write and the creates.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10),
)
_in_flight: asyncio.Semaphore | None = None


def ungate_patch(uid: str) -> list[dict[str, Any]]:
    """Removes the scheduling gates of exactly the pod with this uid (the test fails on a same-named other)."""
    return [
        {"op": "test", "path": "/metadata/uid", "value": uid},
        {"op": "replace", "path": "/spec/schedulingGates", "value": []},
    ]


def in_flight() -> asyncio.Semaphore:
    global _in_flight
    if _in_flight is None:
        _in_flight = asyncio.Semaphore(GANGS_IN_FLIGHT)
    return _in_flight


async def ungate(namespace: str, name: str, uid: str) -> None:
    """Ungates that pod (earlier versions of the operator created workers gated, and a gang they left gated is
    released whole); a pod of that name with another uid (a failed test op: 422) or none (404) is left be."""
    if patched := await kube.patch_pod(namespace, name, ungate_patch(uid), ignore=(404, 422)):
        WORKER_PODS.apply_event(patched)


async def delete_workers(namespace: str, pods: list[dict[str, Any]], names: list[str], force: list[str]) -> None:
    """Deletes these workers of `pods` (`force`: with no grace period, their node is lost) and frees their GPUs."""
    if not names and not force:
        return
    await asyncio.gather(
        *(kube.delete_pod(namespace, pod) for pod in names),
        *(kube.delete_pod(namespace, pod, force=True) for pod in force),
    )
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
    WORKER_PODS.mark_deleting(uids[name] for name in names if name in uids)
    WORKER_PODS.mark_deleting((uids[name] for name in force if name in uids), gone=True)
    CAPACITY.release(namespace, [*names, *force])


Record = Callable[[Placed], Awaitable[object]]
"""Writes a placement into the job's status on the version the decision read; raises ObjectGone or kube.Conflict
when the job was deleted or changed since (then nothing is created)."""


async def place_gang(meta: dict[str, Any], spec: TrainingJobSpec, attempt: int, plan: Plan, record: Record) -> Outcome:
    """Claims the plan's GPUs (if they are still free), waits for a placement slot, records the placement
    (`record`), then creates every worker. Only a Placed outcome is recorded here: the caller writes the others
    (a CreateRefused on the job as `record` left it).

    The check and the claim have no await between them, so two gangs never count the same free GPUs; the claim
    holds them while the gang waits for its slot (the next queue pass sees them taken) and ends when its pods are
    reserved, or when the placement ends any other way (the job gone, an error, a cancelled loop)."""
    wanted = gpus_on((n.name for n in plan.nodes), spec.resources.gpus)
    if changed := _short_of(wanted):
        PLACEMENTS.labels("CapacityChanged").inc()
        return changed
    CAPACITY.claim(meta["uid"], wanted)
    waiting = time.perf_counter()
    try:
        async with in_flight():
            SLOT_WAIT.observe(time.perf_counter() - waiting)
            with SLOT_HELD.time():
                outcome = await _place_gang(meta, spec, attempt, plan, wanted, record)
    finally:
        CAPACITY.unclaim(meta["uid"])
    PLACEMENTS.labels(type(outcome).__name__).inc()
    return outcome


def _short_of(wanted: dict[str, int]) -> NotPlaced | None:
    """NotPlaced when these nodes no longer have these GPUs free (Ready, schedulable, not held by anyone else)."""
    free = CAPACITY.free_gpus(list(wanted))
    if any(free.get(node, -1) < gpus for node, gpus in wanted.items()):
        return NotPlaced("the capacity the queue planned on changed; planning again")
    return None


async def _place_gang(
    meta: dict[str, Any], spec: TrainingJobSpec, attempt: int, plan: Plan, wanted: dict[str, int], record: Record
) -> Outcome:
    namespace = meta["namespace"]
    CAPACITY.unclaim(meta["uid"])  # checked again without its own claim: a node may have gone while it waited
    if changed := _short_of(wanted):
        return changed
    pods = [worker_pod(meta, spec, i, plan.nodes, attempt) for i in range(len(plan.nodes))]
    CAPACITY.reserve(pods)  # the reservations hold the claimed GPUs from here
    names = [p["metadata"]["name"] for p in pods]
    placed = Placed(plan.nodes, tuple(names), tuple(worker_weights(spec, plan.nodes)))
    try:
        await record(placed)  # the proof of owner: nothing of a job deleted or changed since the decision is made
    except BaseException:
        CAPACITY.release(namespace, names)
        raise
    results = await asyncio.gather(
        kube.apply(headless_service(meta, spec)),
        *(kube.create(pod) for pod in pods),
        return_exceptions=True,
    )
    created = [r for r in results[1:] if isinstance(r, dict)]
    CAPACITY.reserve(created)  # they exist from now: a list that starts later holds them
    for pod in created:
        WORKER_PODS.apply_event(pod)
    if failed := next((r for r in results if isinstance(r, BaseException)), None):
        await _discard(namespace, created, names)  # half a gang must not stay
        if refused := next((r for r in results if isinstance(r, kube.Refused)), None):
            return CreateRefused(refused.reason, refused.message)
        raise failed
    return placed


async def _discard(namespace: str, created: list[dict[str, Any]], names: list[str]) -> None:
    """Deletes the workers this placement made and frees every GPU it planned."""
    await delete_workers(namespace, created, [], [p["metadata"]["name"] for p in created])
    CAPACITY.release(namespace, names)
