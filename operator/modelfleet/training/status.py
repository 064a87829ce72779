"""The TrainingJob status that follows from a decision (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelfleet.api.common import Condition, now_iso, set_condition
from modelfleet.api.training import TrainingJobSpec, TrainingPhase
from modelfleet.scheduling.nodes import NodeInfo
from modelfleet.training.builders import placement_record
from modelfleet.training.gang import Decision, Worker
from modelfleet.training.progress import with_live_shares


@dataclass(frozen=True)
class Placed:
    nodes: tuple[NodeInfo, ...]
    pod_names: tuple[str, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class NotPlaced:
    reason: str


@dataclass(frozen=True)
class CreateRefused:
    """The API refused the gang's objects: reason InvalidSpec (the spec must change) or CreateFailed."""

    reason: str
    message: str


@dataclass(frozen=True)
class Queued:
    """The GPU queue holds the job back: where it stands and why."""

    position: int
    reason: str
    message: str
    reserved_nodes: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        return {"position": self.position, "reason": self.reason, "message": self.message,
                "reservedNodes": list(self.reserved_nodes)}  # fmt: skip


Outcome = Placed | NotPlaced | CreateRefused | Queued


def desired_workers(spec: TrainingJobSpec) -> int:
    return spec.workers.replicas or spec.workers.max_replicas or 0


def compose_status(
    prev: Mapping[str, Any],
    spec: TrainingJobSpec,
    generation: int,
    decision: Decision,
    nodes: Mapping[str, NodeInfo],
    outcome: Outcome | None = None,
    progress: Mapping[str, Any] | None = None,
    artifact: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The new status: phase, conditions, counts, placement, times and progress (rank 0's fresh report, if any;
    else the last one is kept) and the artifact of a run that just succeeded."""
    keep = ("startTime", "completionTime", "progress", "artifact")
    status: dict[str, Any] = {k: v for k, v in prev.items() if k in keep}
    conditions: list[dict[str, Any]] = list(prev.get("conditions") or [])
    restarts = int(prev.get("restarts") or 0) + (1 if decision.restart else 0)
    phase = _phase(prev, decision, outcome)
    current: Sequence[Worker] = [] if decision.restart else decision.current
    world = max((w.world_size for w in current), default=0) or desired_workers(spec)

    def cond(type_: str, ok: bool, reason: str, message: str = "") -> None:
        nonlocal conditions
        conditions = set_condition(
            conditions,
            Condition(
                type=type_,
                status="True" if ok else "False",
                reason=reason,
                message=message,
                observed_generation=generation,
            ),
        )

    if isinstance(outcome, CreateRefused):
        cond("Created", False, outcome.reason, outcome.message)
    elif isinstance(outcome, Placed) or not decision.held_by_refusal:
        cond("Created", True, "JobCreated", "the job was accepted")
    if isinstance(outcome, NotPlaced):
        cond("Scheduled", False, "Unschedulable", outcome.reason)
    elif isinstance(outcome, Queued):
        cond("Scheduled", False, "Unschedulable" if outcome.reason == "Capacity" else outcome.reason, outcome.message)
    elif isinstance(outcome, Placed):
        region = outcome.nodes[0].region if outcome.nodes else ""
        count = len({n.name for n in outcome.nodes})
        cond("Scheduled", True, "GangPlaced", f"{len(outcome.nodes)} workers on {count} nodes in {region}")
        status.setdefault("startTime", now_iso())
        for kind in ("Preempted", "Resized"):
            if any(c.get("type") == kind and c.get("status") == "True" for c in conditions):
                cond(kind, False, "Readmitted", "the queue admitted the job again")
    if decision.evicted:
        kind = "Preempted" if decision.evicted.reason == "Preempted" else "Resized"
        cond(kind, True, decision.evicted.reason, decision.evicted.message)
    if spec.suspend:
        cond("Suspended", True, "Suspended", "workers deleted; set spec.suspend to false to resume")
    elif any(c.get("type") == "Suspended" and c.get("status") == "True" for c in conditions):
        cond("Suspended", False, "Resumed", "the job was resumed")
    if decision.restart:
        cond("Running", False, "GangRestart", f"{decision.restart.message}; restart {restarts} of {spec.backoff_limit}")
    elif phase == TrainingPhase.RUNNING:
        cond("Running", True, "AllWorkersRunning", f"{world} workers running")
    elif phase in (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED, TrainingPhase.SUSPENDED):
        cond("Running", False, str(phase), "")
    if decision.finished:
        cond("Succeeded", True, "JobSucceeded", f"{spec.success_policy} succeeded")
        status["completionTime"] = now_iso()
    if decision.fail:
        cond("Failed", True, decision.fail.reason, decision.fail.message)
        status["completionTime"] = now_iso()

    if isinstance(outcome, Placed):
        placement = placement_record(outcome.pod_names, outcome.nodes, outcome.weights)
    elif current:
        placement = [
            {
                "worker": w.name,
                "node": w.node or "",
                "region": nodes[w.node].region if w.node in nodes else "",
                "zone": nodes[w.node].zone if w.node in nodes else "",
                "gpuType": (nodes[w.node].gpu_type or "") if w.node in nodes else "",
                "shardWeight": round(w.shard_weight, 6),
            }
            for w in sorted(current, key=lambda w: w.index)
        ]
    else:
        placement = (
            list(prev.get("placement") or []) if phase in (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED) else []
        )

    counts = {
        "desired": world,
        "pending": sum(w.phase == "Pending" for w in current) + max(0, world - len(current)),
        "running": sum(w.phase == "Running" for w in current),
        "succeeded": sum(w.phase == "Succeeded" for w in current),
        "failed": sum(w.phase == "Failed" for w in current),
    }
    if progress:
        status["progress"] = {k: v for k, v in progress.items() if k != "workers"}
    previous = [] if isinstance(outcome, Placed) else prev.get("placement") or []  # a new gang starts afresh
    placement = with_live_shares(placement, previous, (progress or {}).get("workers") or {})
    if artifact:
        status["artifact"] = dict(artifact)
    status.update(
        phase=str(phase),
        conditions=conditions,
        observedGeneration=generation,
        restarts=restarts,
        workers=counts,
        ready=f"{counts['running']}/{world}",
        gpus=world * spec.resources.gpus,
        region=placement[0]["region"] if placement else (prev.get("region") or ""),
        placement=placement,
        queue=outcome.record() if isinstance(outcome, Queued) else (prev.get("queue") if phase == "Queued" else None),
    )
    return status


def _phase(prev: Mapping[str, Any], decision: Decision, outcome: Outcome | None) -> TrainingPhase:
    if decision.fail:
        return TrainingPhase.FAILED
    if decision.phase:
        return decision.phase
    if isinstance(outcome, Queued):
        return TrainingPhase.QUEUED
    if prev.get("phase") in (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED):
        return TrainingPhase(prev["phase"])
    if prev.get("phase") == TrainingPhase.RESTARTING:
        return TrainingPhase.RESTARTING
    if prev.get("phase") == TrainingPhase.QUEUED and (outcome is None or isinstance(outcome, NotPlaced)):
        return TrainingPhase.QUEUED
    return TrainingPhase.PENDING
