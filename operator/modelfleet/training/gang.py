"""What the lifecycle policies read and write: a job's workers as their pods show them, and the Decision (pure).

The gang is the unit: every worker pod carries the gang attempt (`modelfleet.dev/attempt`, equal to
`status.restarts` when it was made). `JobState` is one instant of a job (spec, status, workers, lost nodes, time);
`Decision` is what the handler is to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelfleet.api.training import TrainingJobSpec, TrainingPhase
from modelfleet.contract import GANG_ATTEMPT_LABEL, GANG_SCHEDULING_GATE, REPLICA_INDEX_LABEL, SHARD_WEIGHTS_ENV
from modelfleet.scheduling.nodes import pod_node
from modelfleet.scheduling.queue import Evict

FINISHED = (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED)


@dataclass(frozen=True)
class Worker:
    """A worker pod as the policies see it: what its labels, env, spec and status say."""

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
        shard_weight=_own_weight(_env_value(pod, SHARD_WEIGHTS_ENV), int(labels.get(REPLICA_INDEX_LABEL, "0"))),
        exit_code=exit_code,
        reason=reason,
        finished_at=finished_at,
    )


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class JobState:
    """One instant of a job, all a policy reads: its spec and status, its workers, the nodes lost under them."""

    spec: TrainingJobSpec
    status: Mapping[str, Any]
    workers: tuple[Worker, ...]
    lost_nodes: frozenset[str]
    now: datetime
    generation: int = 1
    evict: Evict | None = None
    """The GPU queue's order to stop the gang (preempted or resized), if it gave one."""

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")

    @property
    def attempt(self) -> int:
        return int(self.status.get("restarts") or 0)

    @property
    def current(self) -> list[Worker]:
        """The workers of the current attempt that are not being deleted."""
        return [w for w in self.workers if w.attempt == self.attempt and not w.deleting]

    def on_lost_node(self, worker: Worker) -> bool:
        return worker.node in self.lost_nodes


def job_state(
    spec: TrainingJobSpec,
    status: Mapping[str, Any],
    pods: Iterable[Mapping[str, Any]],
    lost_nodes: Iterable[str] = (),
    now: datetime | None = None,
    generation: int = 1,
    evict: Evict | None = None,
) -> JobState:
    """The job as its pods show it now (`now` defaults to the clock)."""
    workers = tuple(worker_of(p) for p in pods)
    return JobState(spec, status, workers, frozenset(lost_nodes), now or datetime.now(UTC), generation, evict)


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
    """What to do now. The handler carries it out in order: status (so a crash never loses a restart or a failure),
    deletes, placement, ungating, job deletion."""

    delete: list[str] = field(default_factory=list)
    force_delete: list[str] = field(default_factory=list)
    place_gang: bool = False
    ungate: list[Worker] = field(default_factory=list)
    held_by_refusal: bool = False
    """The API refused this generation's workers (Created=False): the condition stays until a placement works.
    Nothing is placed again for InvalidSpec until the spec changes; CreateFailed is retried (slowly)."""
    phase: TrainingPhase | None = None
    restart: Failure | None = None
    fail: Failure | None = None
    finished: bool = False
    delete_job: bool = False
    requeue_after: float | None = None
    current: Sequence[Worker] = field(default_factory=list)
    """The current attempt's workers, which status counts; empty when a policy settled before looking at them."""
    evicted: Evict | None = None
    """The GPU queue stopped the gang (preempted or resized): every worker goes, the job queues again."""
    draining: bool = False
    """No worker of the current gang is left, but stopping pods still hold their names (and GPUs)."""
