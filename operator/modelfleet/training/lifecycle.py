"""What a TrainingJob needs next, decided from the job and its pods alone (pure; the handler carries it out).

`decide` runs the lifecycle policies (`training/policies.py`) in the order below until one settles the decision;
the Decision and the job's view it is made from are in `training/gang.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from modelfleet.api.training import TrainingJobSpec
from modelfleet.scheduling.queue import Evict
from modelfleet.training.gang import FINISHED, Decision, job_state
from modelfleet.training.policies import (
    Policy,
    active_deadline,
    draining,
    gang_failure,
    gang_placement,
    gang_running,
    gang_start,
    gang_success,
    lost_nodes,
    old_attempts,
    queue_eviction,
    suspend,
    ttl_after_finished,
)

__all__ = ["FINISHED", "POLICIES", "Decision", "decide"]

POLICIES: tuple[Policy, ...] = (
    ttl_after_finished,  # a finished job: its workers go, then the job itself after its TTL
    suspend,
    queue_eviction,  # the GPU queue preempted or resized the gang
    active_deadline,
    lost_nodes,  # pods no kubelet will confirm the end of are force-deleted
    old_attempts,  # pods of an earlier attempt are deleted; the current attempt's workers remain
    gang_failure,  # restart the whole gang (restartPolicy, backoffLimit) or fail
    gang_success,
    draining,  # stopping pods still hold the workers' names
    gang_placement,  # no pod: place the gang (unless the API refused it)
    gang_start,  # a gang cut short before it started is placed again
    gang_running,
)


def decide(
    spec: TrainingJobSpec,
    status: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    lost: set[str],
    now: datetime | None = None,
    generation: int = 1,
    evict: Evict | None = None,
) -> Decision:
    """The decision of the first policy that settles it, with what the policies before it added."""
    job = job_state(spec, status, pods, lost, now, generation, evict)
    decision = Decision()
    for policy in POLICIES:
        if policy(job, decision):
            break
    return decision
