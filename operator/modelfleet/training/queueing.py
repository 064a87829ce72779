"""The operator's GPU queue: one planning pass for every TrainingJob at once, whose verdicts the handlers carry out.

A pass reads only in-memory state (the jobs the loops know, the node and GPU-pod stores, the PriorityClasses and
GPUQuotas), calls the pure `plan_queue`, and wakes the loops of the jobs whose verdict changed. Passes are coalesced:
job, worker, node, PriorityClass and GPUQuota events request one, and a timer runs one every few seconds. Only the
leader runs the operator, so only the leader plans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from pydantic import ValidationError

from modelfleet import policy
from modelfleet.api.training import TrainingJobSpec, TrainingPhase
from modelfleet.capacity import CAPACITY, CapacityStore
from modelfleet.loops import Key, ReconcileLoops, key_of
from modelfleet.scheduling.planner import GangDemand
from modelfleet.scheduling.priority import Priority, default_priority, resolve_priority
from modelfleet.scheduling.queue import Admit, QueuedGang, RunningGang, Verdict, Wait, plan_queue
from modelfleet.scheduling.quota import quotas_by_namespace
from modelfleet.training.gang import parse_time
from modelfleet.training.policies import refusal
from modelfleet.training.status import desired_workers

log = logging.getLogger(__name__)
PASS_PERIOD = 3.0
COALESCE = 0.2
"""Seconds a requested pass waits, so a burst of events makes one pass."""
IDLE_SHARE = 2.0
"""After a pass, the operator spends at least this many times its length on other work before the next."""
GROW_AFTER = 15.0
"""Seconds an elastic gang runs at one size before it may grow (each growth is a gang restart)."""
ADMITS = Counter("modelfleet_queue_admits", "Admit verdicts published (a job admitted twice counts twice).")


def gang_demand(spec: TrainingJobSpec) -> GangDemand:
    return GangDemand(
        workers=desired_workers(spec),
        gpus_per_worker=spec.resources.gpus,
        gpu_type=spec.resources.gpu_type,
        regions=tuple(spec.placement.regions),
        policy=spec.placement.policy,
        min_workers=spec.workers.min_replicas,
    )


def _seconds(value: str | None) -> float:
    when = parse_time(value)
    return when.timestamp() if when else 0.0


def _placed_at(status: Mapping[str, Any]) -> float:
    """When the current gang was placed: the Scheduled condition's transition to True, else startTime."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Scheduled" and cond.get("status") == "True":
            return _seconds(cond.get("lastTransitionTime")) or _seconds(status.get("startTime"))
    return _seconds(status.get("startTime"))


@dataclass(frozen=True, slots=True)
class QueueFacts:
    """What a queue pass reads of a job's spec: kept per generation instead of the parsed spec (~5 KB a job)."""

    demand: GangDemand
    priority_class_name: str | None
    length: float | None
    """spec.activeDeadlineSeconds, the planner's bound on how long the gang runs."""
    resumable: bool
    """It checkpoints (spec.checkpoint.path): preemptible backfill may take it."""


def queue_facts(spec: TrainingJobSpec) -> QueueFacts | None:
    """None for a job that takes no part in the queue: suspended, or refused by the operator's policy."""
    if spec.suspend or policy.refusal(spec):
        return None
    length = float(spec.active_deadline_seconds) if spec.active_deadline_seconds else None
    return QueueFacts(gang_demand(spec), spec.priority_class_name, length, spec.checkpoint.path is not None)


class FactsCache:
    """Each job's QueueFacts by (namespace, name, uid, generation): a pass reads every job, and validating a
    thousand specs each pass costs more than the rest of the snapshot. None stands for a spec that does not
    validate or a job that takes no part."""

    def __init__(self) -> None:
        self.facts: dict[tuple[str, str, str, int], QueueFacts | None] = {}

    @staticmethod
    def key(body: Mapping[str, Any]) -> tuple[str, str, str, int]:
        meta = body["metadata"]
        return meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", ""), meta.get("generation", 1)

    def get(self, body: Mapping[str, Any]) -> QueueFacts | None:
        key = self.key(body)
        if key not in self.facts:
            try:
                self.facts[key] = queue_facts(TrainingJobSpec.model_validate(body.get("spec") or {}))
            except ValidationError:
                self.facts[key] = None
        return self.facts[key]

    def keep_only(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        live = {self.key(b) for b in bodies}
        self.facts = {k: v for k, v in self.facts.items() if k in live}


def snapshot(
    bodies: Iterable[Mapping[str, Any]],
    classes: Iterable[Mapping[str, Any]],
    draining: set[Key],
    cache: FactsCache | None = None,
) -> tuple[list[QueuedGang], list[RunningGang], dict[Key, Wait]]:
    """The queue's input from the jobs as last seen: waiting gangs, running gangs, and jobs that cannot be queued
    yet (their PriorityClass does not exist). Finished, suspended, invalid and refused jobs take no part."""
    queued, running, held = [], [], {}
    classes = list(classes)
    cache = cache or FactsCache()
    priorities: dict[str | None, Priority | None] = {}  # once per class name, not per job (1/3 of a pass)
    for body in bodies:
        meta, status = body["metadata"], body.get("status") or {}
        if status.get("phase") in (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED):
            continue
        facts = cache.get(body)
        if facts is None:
            continue
        if refusal(status, meta.get("generation", 1)) == "InvalidSpec":
            continue
        key = key_of(dict(body))
        if facts.priority_class_name not in priorities:
            priorities[facts.priority_class_name] = resolve_priority(facts.priority_class_name, classes)
        priority = priorities[facts.priority_class_name]
        if priority is None:
            message = f"PriorityClass {facts.priority_class_name} does not exist"
            held[key] = Wait(0, "PriorityClassNotFound", message)
            continue
        demand, length, resumable = facts.demand, facts.length, facts.resumable
        submitted = _seconds(meta.get("creationTimestamp"))
        if placement := status.get("placement"):
            nodes = tuple(p["node"] for p in placement)
            running.append(RunningGang(key, demand, nodes, priority.value, _placed_at(status), length, submitted,
                                       resumable))  # fmt: skip
        else:
            queued.append(QueuedGang(key, demand, priority.value, submitted, priority.may_preempt, length,
                                     key in draining, resumable))  # fmt: skip
    return queued, running, held


class GpuQueue:
    """The latest verdicts and the task that keeps them fresh."""

    def __init__(self, cluster: CapacityStore) -> None:
        self.cluster = cluster
        self.loops: ReconcileLoops | None = None
        self.verdicts: dict[Key, Verdict] = {}
        self.draining: set[Key] = set()
        self.facts = FactsCache()
        self.requested = asyncio.Event()
        self.passes = 0
        self.unqueued: dict[Key, Verdict] = {}
        """Jobs that cannot be queued yet (their PriorityClass does not exist), as of the last snapshot."""
        self.consumed: set[Key] = set()
        """Jobs whose verdict a handler acted on since the running pass took its snapshot."""
        self.placing: set[Key] = set()
        """Admitted jobs whose gang a handler is placing: no pass plans them (their GPUs are claimed in capacity)
        until their status says where they run, or the placement ended otherwise."""

    def request(self) -> None:
        self.requested.set()

    def verdict(self, key: Key) -> Verdict | None:
        return self.verdicts.get(key)

    def consume(self, key: Key) -> None:
        """The handler acted on this job's Admit or Evict: it must not act on it twice."""
        self.verdicts.pop(key, None)
        self.consumed.add(key)

    @contextlib.contextmanager
    def placing_gang(self, key: Key) -> Iterator[None]:
        """While the handler acts on this job's Admit: the verdict is consumed, and the job takes no part in the
        passes that start meanwhile (each would admit it again, often elsewhere, and hand its GPUs to others)."""
        self.consume(key)
        self.placing.add(key)
        try:
            yield
        finally:
            self.placing.discard(key)

    def note_draining(self, key: Key, draining: bool) -> None:
        if draining:
            self.draining.add(key)
        else:
            self.draining.discard(key)

    def inputs(self, now: datetime | None = None) -> dict[str, Any]:
        """plan_queue's arguments, copied from the stores now (the pass itself may then run in a thread)."""
        assert self.loops is not None
        bodies = list(self.loops.bodies.values())
        self.draining &= set(self.loops.bodies)
        self.facts.keep_only(bodies)
        planned = [body for key, body in self.loops.bodies.items() if key not in self.placing]
        queued, running, held = snapshot(planned, self.cluster.priority_classes.values(), self.draining, self.facts)
        self.unqueued = held
        return {
            "nodes": self.cluster.view(),
            "queued": queued,
            "running": running,
            "freeing": self.cluster.freeing(),
            "now": (now or datetime.now().astimezone()).timestamp(),
            "grow_after": GROW_AFTER,
            "quotas": quotas_by_namespace(self.cluster.gpu_quotas.values()),
            "default_priority": default_priority(self.cluster.priority_classes.values()),
        }

    def publish(self, planned: Mapping[Key, Verdict]) -> dict[Key, Verdict]:
        """The pass's verdicts become the current ones; wakes the loops whose verdict changed. A job whose verdict
        was acted on while the pass ran gets none from it (the pass saw it before it moved)."""
        assert self.loops is not None
        verdicts = {**self.unqueued, **{k: v for k, v in planned.items() if k not in self.consumed}}
        previous, self.verdicts = self.verdicts, verdicts
        self.passes += 1
        for key in set(previous) | set(verdicts):
            if previous.get(key) != verdicts.get(key):
                self.loops.wake(key, at_once=True)  # a verdict is acted on before the next pass plans it again
                if isinstance(verdicts.get(key), Admit):
                    ADMITS.inc()
        return verdicts

    async def run(self) -> None:
        """Plans after every request (coalesced) and every PASS_PERIOD seconds, for the operator's lifetime.

        The pass runs in a thread, so watches, handlers and writes go on meanwhile (at 5,000 jobs one takes
        seconds); it still shares the interpreter, so the next one waits at least IDLE_SHARE times as long as this
        one took: planning never takes more than a third of the operator's time."""
        took = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.requested.wait(), timeout=PASS_PERIOD)
            await asyncio.sleep(max(COALESCE, IDLE_SHARE * took))
            self.requested.clear()
            started = time.perf_counter()
            try:
                inputs, self.consumed = self.inputs(), set()
                verdicts = self.publish(await asyncio.to_thread(plan_queue, **inputs))
            except Exception:
                log.exception("GPU queue pass failed; the next one runs in %.0fs", PASS_PERIOD)
                continue
            finally:
                took = time.perf_counter() - started
            if took > 1.0:
                log.warning("GPU queue pass over %d jobs took %.2fs", len(verdicts), took)


QUEUE = GpuQueue(CAPACITY)
