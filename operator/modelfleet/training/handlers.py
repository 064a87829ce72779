"""kopf handlers for TrainingJob: read the world, call the pure parts, write the result."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import kopf
from pydantic import ValidationError

from modelfleet import kube, policy
from modelfleet.api.common import GROUP, JOB_NAME_LABEL, MANAGED_BY, MANAGED_BY_LABEL, VERSION
from modelfleet.api.training import TrainingJobSpec, TrainingPhase
from modelfleet.capacity import CAPACITY
from modelfleet.loops import NO_RESYNC, ObjectGone, ReconcileLoops, counts_watch_events
from modelfleet.owned import WORKER_PODS
from modelfleet.scheduling.nodes import NodeInfo
from modelfleet.scheduling.queue import Admit, Evict, Wait
from modelfleet.training.artifact import artifact_from_pods
from modelfleet.training.lifecycle import FINISHED, Decision, decide
from modelfleet.training.placement import PLURAL, delete_workers, place_gang, ungate
from modelfleet.training.progress import ProgressScraper
from modelfleet.training.queueing import QUEUE
from modelfleet.training.status import CreateRefused, NotPlaced, Outcome, Placed, Queued, compose_status

NO_VERDICT_RETRY_SECONDS = 1.0
CREATE_FAILED_RETRY_SECONDS = 60.0
COALESCE_SECONDS = 0.5
"""A job's pass waits this long after a wake-up: its workers' events come in bursts (each pod is created, bound and
started, within about a second of its placement), and one pass can read them all. At 1,000 jobs, 0.2 s
made ~10.7 passes and 2.4 status writes per job (a pass between a gang's first and last Running worker writes its
counts); 0.5 s, 6.7-9.3 passes and 2.2 writes. The GPU queue's verdicts wake the loop at once: waiting on them
re-admitted gangs whose planned GPUs had meanwhile gone."""
PROGRESS = ProgressScraper(pods_of=WORKER_PODS.owned_by)
_create_retry_at: dict[tuple[str, str], float] = {}
"""Jobs whose workers the API refused for a reason outside the spec (403): when to try again (monotonic)."""


async def reconcile(body: dict[str, Any]) -> float | None:
    try:
        return await _reconcile(body)
    except kube.Conflict:
        return 0.0  # the job changed under the decision: decide again at once on the fresh one


async def _reconcile(body: dict[str, Any]) -> float | None:
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation", 1)
    try:
        spec = TrainingJobSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        LOOPS.remember(await kube.report_invalid_spec(body, PLURAL, exc, "Created", str(TrainingPhase.PENDING)))
        return None
    if denied := policy.refusal(spec):  # no pods until the spec changes (a new generation wakes the loop)
        LOOPS.remember(await kube.report_refused(body, PLURAL, denied, "Created", str(TrainingPhase.PENDING)))
        return None

    pods = WORKER_PODS.owned_by(meta["uid"])
    lost = _lost_nodes(pods, CAPACITY.nodes_by_name())  # no local holds the view: a pass may wait a minute for a slot
    key = (namespace, name)
    evict = verdict if isinstance(verdict := QUEUE.verdict(key), Evict) else None
    decision = decide(spec, body.get("status") or {}, pods, lost, generation=generation, evict=evict)
    QUEUE.note_draining(key, decision.draining)
    static_ranks = spec.workers.min_replicas is None  # not elastic: rank 0 is replica 0
    progress = await PROGRESS.read(meta["uid"], pods, wake=lambda: LOOPS.wake(key), static_ranks=static_ranks)
    # What the decision means for status is written first: a crash after it never loses a restart or a failure.
    # A placement alone has nothing to keep: its one write comes with the queue's verdict.
    if not _placement_only(decision):
        artifact = artifact_from_pods(spec, pods, meta["uid"]) if decision.finished else None
        body = await _write_status(body, spec, decision, progress=progress, artifact=artifact)
    await delete_workers(namespace, pods, decision.delete, decision.force_delete)
    if decision.evicted:
        QUEUE.consume(key)
        QUEUE.request()

    outcome: Outcome | None = None
    if decision.place_gang:
        if (wait := _create_retry_at.get(key, 0.0) - time.monotonic()) > 0:
            return wait
        verdict = QUEUE.verdict(key)
        if isinstance(verdict, Admit):
            with QUEUE.placing_gang(key):  # until the status says where it runs
                attempt = int((body.get("status") or {}).get("restarts") or 0)
                written = body  # the job as the placement's write left it: a refusal is written on that version

                async def record(placed: Placed) -> None:
                    nonlocal written
                    written = await _write_status(body, spec, decision, placed)

                outcome = await place_gang(meta, spec, attempt, verdict.plan, record)
                if not isinstance(outcome, Placed):
                    await _write_status(written, spec, decision, outcome)
        elif isinstance(verdict, Wait):
            outcome = Queued(verdict.position, verdict.reason, verdict.message, verdict.reserved)
            await _write_status(body, spec, decision, outcome)
        else:
            QUEUE.request()
            return NO_VERDICT_RETRY_SECONDS  # the next pass will have a verdict for it
    if decision.ungate:
        await asyncio.gather(*(ungate(namespace, w.name, w.uid) for w in decision.ungate))

    if decision.delete_job:
        await kube.delete_custom(PLURAL, namespace, name)
        kopf.event(
            body, type="Normal", reason="TTLExpired", message="deleted the finished job (ttlSecondsAfterFinished)"
        )
    if isinstance(outcome, NotPlaced):
        QUEUE.request()
        return NO_VERDICT_RETRY_SECONDS
    if isinstance(outcome, Queued):
        return None  # the queue wakes the loop when its verdict changes
    if isinstance(outcome, CreateRefused):
        if outcome.reason == "InvalidSpec":
            return None  # nothing to retry until the spec changes (a new generation wakes the loop)
        _create_retry_at[key] = time.monotonic() + CREATE_FAILED_RETRY_SECONDS
        return CREATE_FAILED_RETRY_SECONDS
    _create_retry_at.pop(key, None)
    if outcome is not None or decision.ungate or decision.delete or decision.force_delete:
        return 1.0  # look again soon: the pods we touched are moving
    if (body.get("status") or {}).get("phase") in FINISHED:
        return decision.requeue_after or NO_RESYNC  # only the TTL timer remains (and the watch's wake-ups)
    return min((t for t in (decision.requeue_after, PROGRESS.due_in(meta["uid"])) if t is not None), default=None)


async def _write_status(
    body: dict[str, Any],
    spec: TrainingJobSpec,
    decision: Decision,
    outcome: Outcome | None = None,
    progress: dict[str, Any] | None = None,
    artifact: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes the status that follows from the decision, if it changed, on exactly the version of the job it was
    decided on; returns the job as it now is. ObjectGone when the job was deleted meanwhile."""
    meta, prev = body["metadata"], body.get("status") or {}
    nodes = CAPACITY.nodes_by_name()  # read now, not kept from the pass's start: views are rebuilt every second
    status = compose_status(prev, spec, meta.get("generation", 1), decision, nodes, outcome, progress, artifact)
    del nodes  # nor across the write below
    if not _changed(prev, status):
        return {**body, "status": prev}
    try:
        updated = await kube.replace_status(PLURAL, body, status)
    except kube.Conflict:
        LOOPS.remember(await kube.get_custom(PLURAL, meta["namespace"], meta["name"]))
        raise
    if updated is None or updated["metadata"]["uid"] != meta["uid"]:
        raise ObjectGone(f"{meta['namespace']}/{meta['name']}")
    _announce(body, prev, status, decision, outcome)
    LOOPS.remember(updated)
    return updated


def _lost_nodes(pods: list[dict[str, Any]], nodes: dict[str, NodeInfo]) -> set[str]:
    """The nodes of these pods that are gone or not Ready (past their grace)."""
    return {node for p in pods if (node := p["spec"].get("nodeName")) and (node not in nodes or not nodes[node].ready)}


def _placement_only(decision: Decision) -> bool:
    """The decision is to place the gang and nothing a crash could lose (no restart, failure, eviction, end)."""
    return decision.place_gang and not (decision.restart or decision.fail or decision.evicted or decision.finished)


def _changed(prev: dict[str, Any], status: dict[str, Any]) -> bool:
    return any(prev.get(k) != v for k, v in status.items())


def _announce(
    body: dict[str, Any], prev: dict[str, Any], status: dict[str, Any], decision: Decision, outcome: Any
) -> None:
    """An Event for every transition a user wants to see in `kubectl describe`."""
    if isinstance(outcome, CreateRefused):
        kopf.warn(body, reason=outcome.reason, message=outcome.message)
    elif isinstance(outcome, Queued):
        before = prev.get("queue") or {}
        if outcome.reason != before.get("reason"):
            kopf.event(body, type="Normal", reason="Queued", message=f"position {outcome.position}: {outcome.message}")
        if outcome.reserved_nodes and list(outcome.reserved_nodes) != before.get("reservedNodes"):
            kopf.event(body, type="Normal", reason="Reserved", message=outcome.message)
    elif isinstance(outcome, NotPlaced):
        previous = next((c for c in prev.get("conditions") or [] if c.get("type") == "Scheduled"), {})
        if previous.get("message") != outcome.reason:
            kopf.warn(body, reason="Unschedulable", message=outcome.reason)
    elif isinstance(outcome, Placed):
        nodes = ", ".join(sorted({n.name for n in outcome.nodes}))
        if prev.get("phase") == TrainingPhase.QUEUED:  # news only for a job that waited; else GangPlaced says it
            kopf.event(body, type="Normal", reason="Admitted", message=f"admitted by the GPU queue: "
                       f"{len(outcome.nodes)} workers x {status['gpus'] // max(len(outcome.nodes), 1)} GPUs")  # fmt: skip
        kopf.event(body, type="Normal", reason="GangPlaced", message=f"{len(outcome.nodes)} workers on {nodes}")
    if decision.evicted:
        severity = "Warning" if decision.evicted.reason == "Preempted" else "Normal"
        kopf.event(body, type=severity, reason=decision.evicted.reason, message=decision.evicted.message)
    if decision.restart:
        kopf.warn(body, reason="GangRestart", message=f"{decision.restart.message}; restarting all workers")
    if decision.fail:
        kopf.warn(body, reason=decision.fail.reason, message=decision.fail.message)
    if status["phase"] != prev.get("phase") and status["phase"] in (
        TrainingPhase.RUNNING,
        TrainingPhase.SUCCEEDED,
        TrainingPhase.SUSPENDED,
    ):
        kopf.event(body, type="Normal", reason=status["phase"], message=f"job is {status['phase']}")


LOOPS = ReconcileLoops("trainingjob", reconcile, coalesce=COALESCE_SECONDS)
QUEUE.loops = LOOPS


def job_changed(job: dict[str, Any], deleted: bool) -> None:
    """A TrainingJob's watch event (`main.training_job_event`): its loop takes it."""
    if LOOPS.apply_event(job, deleted=deleted):
        QUEUE.request()  # not on the echo of its own status write: each would plan the queue again, and again


def is_worker(labels: dict[str, str]) -> bool:
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY and JOB_NAME_LABEL in labels


def worker_changed(pod: dict[str, Any], deleted: bool) -> None:
    """A worker pod's watch event (`main.pod_event`): the worker index keeps it, and its job looks again."""
    WORKER_PODS.apply_event(pod, deleted=deleted)
    meta = pod["metadata"]
    LOOPS.wake((meta["namespace"], meta["labels"][JOB_NAME_LABEL]))


@kopf.on.event("scheduling.k8s.io", "v1", "priorityclasses")
@counts_watch_events
async def priority_class_event(event: dict[str, Any], **_: Any) -> None:
    CAPACITY.priority_classes.apply_event(event["object"], deleted=event.get("type") == "DELETED")
    QUEUE.request()


@kopf.on.event(GROUP, VERSION, "gpuquotas")
@counts_watch_events
async def gpu_quota_event(event: dict[str, Any], **_: Any) -> None:
    CAPACITY.gpu_quotas.apply_event(event["object"], deleted=event.get("type") == "DELETED")
    QUEUE.request()
