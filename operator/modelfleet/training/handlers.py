"""kopf handlers for TrainingJob: read the world, call the pure parts, write the result."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from pydantic import ValidationError

from modelfleet import kube
from modelfleet.api.common import JOB_NAME_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from modelfleet.api.training import TrainingJobSpec, TrainingPhase
from modelfleet.cluster_state import CLUSTER
from modelfleet.loops import ReconcileLoops
from modelfleet.scheduling.planner import GangDemand, Unschedulable, plan_gang
from modelfleet.training.builders import headless_service, worker_pod, worker_weights
from modelfleet.training.lifecycle import Decision, decide
from modelfleet.training.status import NotPlaced, Placed, compose_status, desired_workers

PLURAL = "trainingjobs"
UNSCHEDULABLE_RETRY_SECONDS = 3.0
UNGATE = [{"op": "replace", "path": "/spec/schedulingGates", "value": []}]
_placement_lock: asyncio.Lock | None = None


def placement_lock() -> asyncio.Lock:
    """Plans are made one at a time, so two gangs never count the same free GPUs."""
    global _placement_lock
    if _placement_lock is None:
        _placement_lock = asyncio.Lock()
    return _placement_lock


async def reconcile(body: dict[str, Any]) -> float | None:
    meta, prev = body["metadata"], body.get("status") or {}
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation", 1)
    try:
        spec = TrainingJobSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        LOOPS.remember(await kube.report_invalid_spec(body, PLURAL, exc, "Created", str(TrainingPhase.PENDING)))
        return None

    pods = [
        p
        for p in await kube.list_pods(namespace, f"{JOB_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}")
        if any(ref.get("uid") == meta["uid"] for ref in p["metadata"].get("ownerReferences") or [])
    ]
    nodes = CLUSTER.nodes_by_name()
    lost = {node for p in pods if (node := p["spec"].get("nodeName")) and (node not in nodes or not nodes[node].ready)}
    decision = decide(spec, prev, pods, lost)
    await _delete_workers(namespace, decision)

    outcome: Placed | NotPlaced | None = None
    if decision.place_gang:
        outcome = await place_gang(meta, spec, int(prev.get("restarts") or 0))
    if decision.ungate:
        await asyncio.gather(*(kube.patch_pod(namespace, pod, UNGATE) for pod in decision.ungate))

    status = compose_status(prev, spec, generation, decision, pods, nodes, outcome)
    if _changed(prev, status):
        _announce(body, prev, status, decision, outcome)
        LOOPS.remember(await kube.patch_status(PLURAL, namespace, name, status))
    if decision.delete_job:
        kopf.event(
            body, type="Normal", reason="TTLExpired", message="deleting the finished job (ttlSecondsAfterFinished)"
        )
        await kube.delete_custom(PLURAL, namespace, name)
    if isinstance(outcome, NotPlaced):
        return UNSCHEDULABLE_RETRY_SECONDS
    if outcome is not None or decision.ungate or decision.delete or decision.force_delete:
        return 1.0  # look again soon: the pods we touched are moving
    return decision.requeue_after


async def _delete_workers(namespace: str, decision: Decision) -> None:
    deletions = [kube.delete_pod(namespace, pod) for pod in decision.delete]
    deletions += [kube.delete_pod(namespace, pod, force=True) for pod in decision.force_delete]
    await asyncio.gather(*deletions)
    CLUSTER.release(namespace, [*decision.delete, *decision.force_delete])


async def place_gang(meta: dict[str, Any], spec: TrainingJobSpec, attempt: int) -> Placed | NotPlaced:
    """Plans the whole gang and creates every worker gated; the gates go only when all exist."""
    namespace = meta["namespace"]
    demand = GangDemand(
        workers=desired_workers(spec),
        gpus_per_worker=spec.resources.gpus,
        gpu_type=spec.resources.gpu_type,
        regions=tuple(spec.placement.regions),
        policy=spec.placement.policy,
        min_workers=spec.workers.min_replicas,
    )
    async with placement_lock():
        plan = plan_gang(CLUSTER.view(), demand)
        if isinstance(plan, Unschedulable):
            return NotPlaced(plan.reason)
        pods = [
            worker_pod(meta, spec, i, plan.nodes, attempt, gated=spec.placement.gang) for i in range(len(plan.nodes))
        ]
        CLUSTER.reserve(pods)
    await kube.create(kube.core().create_namespaced_service, namespace, headless_service(meta, spec))
    await asyncio.gather(*(kube.create(kube.core().create_namespaced_pod, namespace, pod) for pod in pods))
    names = tuple(p["metadata"]["name"] for p in pods)
    if spec.placement.gang:
        await asyncio.gather(*(kube.patch_pod(namespace, pod, UNGATE) for pod in names))
    return Placed(plan.nodes, names, tuple(worker_weights(spec, plan.nodes)))


def _changed(prev: dict[str, Any], status: dict[str, Any]) -> bool:
    return any(prev.get(k) != v for k, v in status.items())


def _announce(
    body: dict[str, Any], prev: dict[str, Any], status: dict[str, Any], decision: Decision, outcome: Any
) -> None:
    """An Event for every transition a user wants to see in `kubectl describe`."""
    if isinstance(outcome, NotPlaced):
        previous = next((c for c in prev.get("conditions") or [] if c.get("type") == "Scheduled"), {})
        if previous.get("message") != outcome.reason:
            kopf.warn(body, reason="Unschedulable", message=outcome.reason)
    elif isinstance(outcome, Placed):
        nodes = ", ".join(sorted({n.name for n in outcome.nodes}))
        kopf.event(body, type="Normal", reason="GangPlaced", message=f"{len(outcome.nodes)} workers on {nodes}")
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


LOOPS = ReconcileLoops("trainingjob", reconcile)


@kopf.on.event("modelfleet.dev", "v1alpha1", PLURAL)
async def training_job_event(
    event: dict[str, Any], node_index: kopf.Index, gpu_pod_index: kopf.Index, **_: Any
) -> None:
    CLUSTER.bind(node_index, gpu_pod_index)
    LOOPS.observe(event["object"], deleted=event.get("type") == "DELETED")


@kopf.on.event("", "v1", "pods", labels={MANAGED_BY_LABEL: MANAGED_BY, JOB_NAME_LABEL: kopf.PRESENT})
async def worker_event(event: dict[str, Any], **_: Any) -> None:
    meta = event["object"]["metadata"]
    LOOPS.wake((meta["namespace"], meta["labels"][JOB_NAME_LABEL]))
