"""What a TrainingJob needs next, decided from the job and its pods alone (pure; the handler carries it out).

The gang is the unit: every worker pod carries the gang attempt (`modelfleet.dev/attempt`, equal to
`status.restarts` when it was made). The first failure of any worker of the current attempt fails the attempt:
the job either restarts the whole gang (attempt + 1, every worker deleted and re-placed) or fails.
Pods of older attempts are deleted on sight, so a restart counts once however many ranks fail with it, and the
next attempt is placed only when every pod of the previous one is gone: on a real cluster a deleted pod runs on
for its grace period, and a new worker of the same name cannot exist beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from modelfleet.api.common import GANG_ATTEMPT_LABEL, GANG_SCHEDULING_GATE, REPLICA_INDEX_LABEL
from modelfleet.api.training import RestartPolicy, SuccessPolicy, TrainingJobSpec, TrainingPhase
from modelfleet.scheduling.nodes import pod_node
from modelfleet.scheduling.queue import Evict

FINISHED = (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED)
TERMINATION_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class Worker:
    name: str
    uid: str
    index: int
    attempt: int
    phase: str
    node: str | None
    gated: bool
    deleting: bool
    world_size: int
    shard_weight: float
    exit_code: int | None
    reason: str
    finished_at: str

    @property
    def live(self) -> bool:
        return self.phase not in ("Succeeded", "Failed") and not self.deleting


def _env_value(pod: Mapping[str, Any], name: str) -> str | None:
    for container in pod.get("spec", {}).get("containers", []):
        for env in container.get("env") or []:
            if env.get("name") == name:
                return env.get("value")
    return None


def _own_weight(weights: str | None, index: int) -> float:
    values = (weights or "").split(",")
    try:
        return float(values[index])
    except (IndexError, ValueError):
        return 0.0


def worker_of(pod: Mapping[str, Any]) -> Worker:
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    labels = meta.get("labels") or {}
    exit_code, reason, finished_at = None, status.get("reason", ""), ""
    for cs in status.get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            exit_code = terminated.get("exitCode")
            reason = terminated.get("reason") or reason
            finished_at = terminated.get("finishedAt") or ""
            if exit_code:
                break
    return Worker(
        name=meta["name"],
        uid=meta.get("uid", ""),
        index=int(labels.get(REPLICA_INDEX_LABEL, "0")),
        attempt=int(labels.get(GANG_ATTEMPT_LABEL, "0")),
        phase=status.get("phase") or "Pending",
        node=spec.get("nodeName") or pod_node(pod),
        gated=any(g.get("name") == GANG_SCHEDULING_GATE for g in spec.get("schedulingGates") or []),
        deleting=bool(meta.get("deletionTimestamp")),
        world_size=int(_env_value(pod, "WORLD_SIZE") or 0),
        shard_weight=_own_weight(
            _env_value(pod, "MODELFLEET_SHARD_WEIGHTS"), int(labels.get(REPLICA_INDEX_LABEL, "0"))
        ),
        exit_code=exit_code,
        reason=reason,
        finished_at=finished_at,
    )


@dataclass(frozen=True)
class Failure:
    reason: str
    """CamelCase: WorkerFailed, NodeLost, WorkerDeleted."""
    message: str
    worker: str
    exit_code: int | None = None
    infrastructure: bool = False


@dataclass
class Decision:
    """What to do now. The handler applies it in order: deletes, status, placement, ungating, job deletion."""

    delete: list[str] = field(default_factory=list)
    force_delete: list[str] = field(default_factory=list)
    place_gang: bool = False
    ungate: list[Worker] = field(default_factory=list)
    held_by_refusal: bool = False
    """The API refused this generation's workers (Created=False): the condition stays until a placement works.
    Nothing is placed again for InvalidSpec until the spec changes; CreateFailed is retried (slowly)."""
    phase: TrainingPhase | None = None
    reason: str = ""
    message: str = ""
    restart: Failure | None = None
    fail: Failure | None = None
    finished: bool = False
    delete_job: bool = False
    requeue_after: float | None = None
    current: list[Worker] = field(default_factory=list)
    evicted: Evict | None = None
    """The GPU queue stopped the gang (preempted or resized): every worker goes, the job queues again."""
    draining: bool = False
    """No worker of the current gang is left, but stopping pods still hold their names (and GPUs)."""


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def restart_allowed(spec: TrainingJobSpec, failure: Failure, restarts: int) -> tuple[bool, str]:
    """Whether a failed attempt restarts the gang, and the reason when it does not."""
    if spec.restart_policy == RestartPolicy.NEVER:
        return False, "RestartPolicyNever"
    if (
        spec.restart_policy == RestartPolicy.EXIT_CODE
        and not failure.infrastructure
        and failure.exit_code not in spec.retryable_exit_codes
    ):
        return False, "ExitCodeNotRetryable"
    if restarts >= spec.backoff_limit:
        return False, "BackoffLimitExceeded"
    return True, ""


def first_failure(current: Sequence[Worker], lost_nodes: set[str]) -> Failure | None:
    """The failure that ends this attempt: a lost node, a failed worker (earliest first), or a vanished worker."""
    for w in sorted(current, key=lambda w: w.index):
        if w.node in lost_nodes and w.phase not in ("Succeeded", "Failed"):
            return Failure("NodeLost", f"node {w.node} of worker {w.name} is gone or not ready", w.name, None, True)
    failed = sorted((w for w in current if w.phase == "Failed"), key=lambda w: (w.finished_at or "~", w.index))
    if failed:
        w = failed[0]
        detail = f"exited with code {w.exit_code}" if w.exit_code is not None else f"failed ({w.reason or 'unknown'})"
        return Failure("WorkerFailed", f"worker {w.name} {detail}", w.name, w.exit_code)
    released = [w for w in current if not w.gated]
    world = max((w.world_size for w in current), default=0)
    if released and len(current) < world:
        present = {w.index for w in current}
        missing = min(set(range(world)) - present)
        return Failure("WorkerDeleted", f"worker {missing} was deleted", f"index-{missing}", None, True)
    return None


def succeeded(spec: TrainingJobSpec, current: Sequence[Worker]) -> bool:
    world = max((w.world_size for w in current), default=0)
    if spec.success_policy == SuccessPolicy.RANK_ZERO:
        return any(w.index == 0 and w.phase == "Succeeded" for w in current)
    return world > 0 and len(current) == world and all(w.phase == "Succeeded" for w in current)


def refusal(status: Mapping[str, Any], generation: int) -> str | None:
    """Why the API refused this generation's workers (the reason of Created=False), if it did."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Created" and cond.get("status") == "False":
            return cond.get("reason") if cond.get("observedGeneration") == generation else None
    return None


def decide(
    spec: TrainingJobSpec,
    status: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    lost_nodes: set[str],
    now: datetime | None = None,
    generation: int = 1,
    evict: Evict | None = None,
) -> Decision:
    now = now or datetime.now(UTC)
    attempt = int(status.get("restarts") or 0)
    workers = [worker_of(p) for p in pods]
    phase = status.get("phase")
    decision = Decision()

    if phase in FINISHED:
        decision.delete = [w.name for w in workers if w.live]
        completed = parse_time(status.get("completionTime"))
        if spec.ttl_seconds_after_finished is not None and completed:
            expires = completed + timedelta(seconds=spec.ttl_seconds_after_finished)
            if now >= expires:
                decision.delete_job = True
            else:
                decision.requeue_after = (expires - now).total_seconds()
        return decision

    if spec.suspend:
        decision.delete = [w.name for w in workers if not w.deleting]
        decision.phase = TrainingPhase.SUSPENDED
        return decision

    if evict and any(w.live for w in workers):
        decision.delete = [w.name for w in workers if not w.deleting]
        decision.phase = TrainingPhase.QUEUED
        decision.evicted = evict
        return decision

    started = parse_time(status.get("startTime"))
    if spec.active_deadline_seconds and started:
        deadline = started + timedelta(seconds=spec.active_deadline_seconds)
        if now >= deadline:
            decision.delete = [w.name for w in workers if w.live]
            decision.fail = Failure(
                "DeadlineExceeded", f"job ran longer than activeDeadlineSeconds ({spec.active_deadline_seconds}s)", ""
            )
            return decision
        decision.requeue_after = (deadline - now).total_seconds()

    for w in workers:
        if w.node in lost_nodes and (w.deleting or w.attempt != attempt):
            decision.force_delete.append(w.name)  # no kubelet will ever confirm its end
        elif w.attempt != attempt and not w.deleting:
            decision.delete.append(w.name)
    current = [w for w in workers if w.attempt == attempt and not w.deleting]
    decision.current = current

    if failure := first_failure(current, lost_nodes):
        allowed, why_not = restart_allowed(spec, failure, attempt)
        for w in current:
            target = decision.force_delete if w.node in lost_nodes else decision.delete
            if allowed or w.live:
                target.append(w.name)
        if allowed:
            decision.restart = failure
            decision.phase = TrainingPhase.RESTARTING
        else:
            decision.fail = Failure(why_not, failure.message, failure.worker, failure.exit_code)
        return decision

    if succeeded(spec, current):
        decision.delete += [w.name for w in current if w.live]
        decision.finished = True
        decision.phase = TrainingPhase.SUCCEEDED
        return decision

    if not current:
        if workers:  # pods of the previous attempt (or deleted ones) still exist: their names are not free yet
            decision.draining = True
            decision.requeue_after = min(decision.requeue_after or TERMINATION_POLL_SECONDS, TERMINATION_POLL_SECONDS)
        else:
            refused = refusal(status, generation)
            decision.held_by_refusal = refused is not None
            decision.place_gang = refused in (None, "CreateFailed")
        return decision

    world = max(w.world_size for w in current)
    gated = [w for w in current if w.gated]
    if gated and len(current) == world:
        decision.ungate = gated
    elif gated:  # placement was interrupted half way: start it again from nothing
        decision.delete += [w.name for w in current]
        return decision

    running = sum(w.phase == "Running" for w in current)
    if running == world:
        decision.phase = TrainingPhase.RUNNING
    elif phase != TrainingPhase.RESTARTING:
        decision.phase = TrainingPhase.PENDING
    return decision
