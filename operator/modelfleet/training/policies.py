"""The TrainingJob lifecycle policies, one function per behaviour; `lifecycle.decide` runs them in order.

A policy reads a `JobState` (never the cluster), adds what it decides to the `Decision` it is handed and touches
nothing else, and returns True when the decision is complete: the policies after it do not run.

The first failure of any worker of the current attempt fails the attempt: the job either restarts the whole gang
(attempt + 1, every worker deleted and re-placed) or fails. Pods of older attempts are deleted on sight, so a restart
counts once however many ranks fail with it, and the next attempt is placed only when every pod of the previous one
is gone: on a real cluster a deleted pod runs on for its grace period, and a new worker of the same name cannot exist
beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from modelfleet.api.training import RestartPolicy, SuccessPolicy, TrainingJobSpec, TrainingPhase
from modelfleet.training.gang import FINISHED, Decision, Failure, JobState, Worker, parse_time

Policy = Callable[[JobState, Decision], bool]
TERMINATION_POLL_SECONDS = 5.0


def ttl_after_finished(job: JobState, decision: Decision) -> bool:
    """A finished job keeps no live worker, and goes itself ttlSecondsAfterFinished after its completion time
    (until then the decision asks to be woken at that moment)."""
    if job.phase not in FINISHED:
        return False
    decision.delete = [w.name for w in job.workers if w.live]
    completed = parse_time(job.status.get("completionTime"))
    if job.spec.ttl_seconds_after_finished is not None and completed:
        expires = completed + timedelta(seconds=job.spec.ttl_seconds_after_finished)
        if job.now >= expires:
            decision.delete_job = True
        else:
            decision.requeue_after = (expires - job.now).total_seconds()
    return True


def suspend(job: JobState, decision: Decision) -> bool:
    """spec.suspend deletes every worker and holds the job Suspended."""
    if not job.spec.suspend:
        return False
    decision.delete = [w.name for w in job.workers if not w.deleting]
    decision.phase = TrainingPhase.SUSPENDED
    return True


def queue_eviction(job: JobState, decision: Decision) -> bool:
    """The GPU queue stopped a running gang (preempted or resized): every worker goes and the job queues again."""
    if not job.evict or not any(w.live for w in job.workers):
        return False
    decision.delete = [w.name for w in job.workers if not w.deleting]
    decision.phase = TrainingPhase.QUEUED
    decision.evicted = job.evict
    return True


def active_deadline(job: JobState, decision: Decision) -> bool:
    """A job that has run activeDeadlineSeconds since its start fails (DeadlineExceeded) and its live workers go;
    before that, the decision asks to be woken at the deadline."""
    started = parse_time(job.status.get("startTime"))
    if not job.spec.active_deadline_seconds or not started:
        return False
    deadline = started + timedelta(seconds=job.spec.active_deadline_seconds)
    if job.now < deadline:
        decision.requeue_after = (deadline - job.now).total_seconds()
        return False
    decision.delete = [w.name for w in job.workers if w.live]
    message = f"job ran longer than activeDeadlineSeconds ({job.spec.active_deadline_seconds}s)"
    decision.fail = Failure("DeadlineExceeded", message, "")
    return True


def lost_nodes(job: JobState, decision: Decision) -> bool:
    """A stopping or stale pod on a lost node is force-deleted: no kubelet will ever confirm its end.
    (A current worker on a lost node is a gang failure, NodeLost.)"""
    for w in job.workers:
        if job.on_lost_node(w) and (w.deleting or w.attempt != job.attempt):
            decision.force_delete.append(w.name)
    return False


def old_attempts(job: JobState, decision: Decision) -> bool:
    """Pods of an earlier attempt are deleted on sight (those on lost nodes are force-deleted by `lost_nodes`);
    from here on the decision is about the current attempt's workers, which status counts."""
    for w in job.workers:
        if w.attempt != job.attempt and not w.deleting and not job.on_lost_node(w):
            decision.delete.append(w.name)
    decision.current = job.current
    return False


def first_failure(current: Sequence[Worker], lost: frozenset[str]) -> Failure | None:
    """The failure that ends this attempt: a lost node, a failed worker (earliest first), or a vanished worker."""
    for w in sorted(current, key=lambda w: w.index):
        if w.node in lost and w.phase not in ("Succeeded", "Failed"):
            return Failure("NodeLost", f"node {w.node} of worker {w.name} is gone or not ready", w.name, None, True)
    failed = sorted((w for w in current if w.phase == "Failed"), key=lambda w: (w.finished_at or "~", w.index))
    if failed:
        w = failed[0]
        detail = f"exited with code {w.exit_code}" if w.exit_code is not None else f"failed ({w.reason or 'unknown'})"
        return Failure("WorkerFailed", f"worker {w.name} {detail}", w.name, w.exit_code)
    started = any(w.phase != "Pending" for w in current)  # else gang_start places a gang cut short afresh
    world = max((w.world_size for w in current), default=0)
    if started and len(current) < world:
        missing = min(set(range(world)) - {w.index for w in current})
        return Failure("WorkerDeleted", f"worker {missing} was deleted", f"index-{missing}", None, True)
    return None


def restart_allowed(spec: TrainingJobSpec, failure: Failure, restarts: int) -> tuple[bool, str]:
    """Whether a failed attempt restarts the gang (restartPolicy, retryable exit codes, backoffLimit), and the
    reason when it does not. A lost or deleted worker (infrastructure) is retryable whatever its exit code."""
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


def gang_failure(job: JobState, decision: Decision) -> bool:
    """The first failure of the current attempt restarts the whole gang (every worker deleted) when the restart
    policy allows it; else the job fails and its live workers go."""
    failure = first_failure(job.current, job.lost_nodes)
    if failure is None:
        return False
    allowed, why_not = restart_allowed(job.spec, failure, job.attempt)
    for w in job.current:
        if allowed or w.live:
            (decision.force_delete if job.on_lost_node(w) else decision.delete).append(w.name)
    if allowed:
        decision.restart = failure
        decision.phase = TrainingPhase.RESTARTING
    else:
        decision.fail = Failure(why_not, failure.message, failure.worker, failure.exit_code)
    return True


def succeeded(spec: TrainingJobSpec, current: Sequence[Worker]) -> bool:
    """RankZero: worker 0 succeeded. AllWorkers: the whole gang exists and every worker succeeded."""
    if spec.success_policy == SuccessPolicy.RANK_ZERO:
        return any(w.index == 0 and w.phase == "Succeeded" for w in current)
    world = max((w.world_size for w in current), default=0)
    return world > 0 and len(current) == world and all(w.phase == "Succeeded" for w in current)


def gang_success(job: JobState, decision: Decision) -> bool:
    """The success policy met finishes the job; workers still running (RankZero) go."""
    if not succeeded(job.spec, job.current):
        return False
    decision.delete += [w.name for w in job.current if w.live]
    decision.finished = True
    decision.phase = TrainingPhase.SUCCEEDED
    return True


def draining(job: JobState, decision: Decision) -> bool:
    """No current worker, but stopping pods still hold their names (and GPUs): look again shortly."""
    if job.current or not job.workers:
        return False
    decision.draining = True
    decision.requeue_after = min(decision.requeue_after or TERMINATION_POLL_SECONDS, TERMINATION_POLL_SECONDS)
    return True


def refusal(status: Mapping[str, Any], generation: int) -> str | None:
    """Why the API refused this generation's workers (the reason of Created=False), if it did."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Created" and cond.get("status") == "False":
            return cond.get("reason") if cond.get("observedGeneration") == generation else None
    return None


def gang_placement(job: JobState, decision: Decision) -> bool:
    """No pod at all: the gang is to be placed, unless the API refused this generation's workers as invalid
    (then nothing is placed until the spec changes; CreateFailed is retried)."""
    if job.workers:
        return False
    refused = refusal(job.status, job.generation)
    decision.held_by_refusal = refused is not None
    decision.place_gang = refused in (None, "CreateFailed")
    return True


def gang_start(job: JobState, decision: Decision) -> bool:
    """A gang cut short before it started (a worker missing while none has left Pending: the operator stopped
    between its creates, or a worker was deleted before it ran) is deleted and placed again, without counting a
    restart. A whole gang still gated (earlier versions of the operator created workers gated) is released."""
    current = job.current
    if len(current) < max(w.world_size for w in current):
        decision.delete += [w.name for w in current]
        return True
    decision.ungate = [w for w in current if w.gated]
    return False


def gang_running(job: JobState, decision: Decision) -> bool:
    """Running once every worker runs; Pending until then (a restarting job stays Restarting)."""
    world = max(w.world_size for w in job.current)
    if sum(w.phase == "Running" for w in job.current) == world:
        decision.phase = TrainingPhase.RUNNING
    elif job.phase != TrainingPhase.RESTARTING:
        decision.phase = TrainingPhase.PENDING
    return True
