"""What the operator feeds the GPU queue and does with its verdicts (pure parts): priorities, the snapshot of jobs,
the decision to stop an evicted gang, and the Queued status."""

from __future__ import annotations

from typing import Any

from modelfleet.api.training import TrainingJobSpec
from modelfleet.capacity import CapacityStore
from modelfleet.loops import ReconcileLoops
from modelfleet.scheduling.planner import Plan
from modelfleet.scheduling.priority import Priority, default_priority, resolve_priority, slim_priority_class
from modelfleet.scheduling.queue import Admit, Evict
from modelfleet.training.lifecycle import decide
from modelfleet.training.queueing import FactsCache, GpuQueue, snapshot
from modelfleet.training.status import Placed, Queued, compose_status

CLASSES = [
    slim_priority_class({"metadata": {"name": "high"}, "value": 1000}),
    slim_priority_class({"metadata": {"name": "polite"}, "value": 500, "preemptionPolicy": "Never"}),
    slim_priority_class({"metadata": {"name": "default"}, "value": 10, "globalDefault": True}),
]


def test_priority_comes_from_the_named_class_else_the_global_default_else_zero() -> None:
    assert resolve_priority("high", CLASSES) == Priority(1000, True)
    assert resolve_priority("polite", CLASSES) == Priority(500, False)
    assert resolve_priority(None, CLASSES) == Priority(10, True)
    assert resolve_priority(None, []) == Priority(0, True)
    assert resolve_priority("missing", CLASSES) is None
    assert default_priority(CLASSES) == 10 and default_priority([]) == 0


def job(name: str, spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name, "creationTimestamp": "2026-01-01T00:00:10Z", "generation": 1},
        "spec": {"workers": {"replicas": 2}, "resources": {"gpus": 8}, **(spec or {})},
        "status": status or {},
    }


def test_snapshot_splits_waiting_running_and_unqueueable_jobs() -> None:
    bodies = [
        job("waiting", {"priorityClassName": "high", "activeDeadlineSeconds": 600}),
        job("stopping", status={"phase": "Queued"}),
        job(
            "running",
            {"checkpoint": {"path": "/ckpt"}},
            status={
                "phase": "Running",
                "placement": [{"node": "n1"}, {"node": "n2"}],
                "startTime": "2026-01-01T00:01:00Z",
            },
        ),
        job("done", status={"phase": "Succeeded"}),
        job("paused", {"suspend": True}),
        job("unknown-class", {"priorityClassName": "nope"}),
        job("broken", {"resources": {"gpus": -1}}),
    ]
    queued, running, held = snapshot(bodies, CLASSES, {("ns", "stopping")})
    assert [(g.key[1], g.priority, g.may_preempt, g.length, g.draining) for g in queued] == [
        ("waiting", 1000, True, 600.0, False),
        ("stopping", 10, True, None, True),
    ]
    assert queued[0].submitted == 1767225610.0 and queued[0].demand.workers == 2
    assert [(g.key[1], g.nodes, g.started) for g in running] == [("running", ("n1", "n2"), 1767225660.0)]
    assert (running[0].submitted, running[0].resumable, queued[0].resumable) == (1767225610.0, True, False)
    assert held[("ns", "unknown-class")].reason == "PriorityClassNotFound"


def test_the_cache_keeps_what_a_pass_reads_not_the_spec_and_nothing_for_a_job_that_takes_no_part() -> None:
    cache = FactsCache()
    facts = cache.get(job("waiting", {"activeDeadlineSeconds": 600, "checkpoint": {"path": "/ckpt"}}))
    assert facts is not None and (facts.demand.workers, facts.length, facts.resumable) == (2, 600.0, True)
    assert cache.get(job("paused", {"suspend": True})) is None
    assert cache.get(job("broken", {"resources": {"gpus": -1}})) is None
    cache.keep_only([job("paused", {"suspend": True})])
    assert list(cache.facts) == [("ns", "paused", "", 1)]


def pod(index: int, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {"name": f"j-worker-{index}", "uid": f"u{index}",
                     "labels": {"modelfleet.dev/replica-index": str(index), "modelfleet.dev/attempt": "0"}},
        "spec": {"nodeName": "n1", "containers": [{"env": [{"name": "WORLD_SIZE", "value": "2"}]}]},
        "status": {"phase": phase},
    }  # fmt: skip


SPEC = TrainingJobSpec.model_validate({"workers": {"replicas": 2}, "resources": {"gpus": 8}})
PREEMPTED = Evict("Preempted", "preempted for ns/urgent (priority 9 > 0)", 0)


def test_an_evicted_gang_loses_every_worker_and_queues_again_without_counting_a_restart() -> None:
    decision = decide(SPEC, {"phase": "Running"}, [pod(0), pod(1)], set(), evict=PREEMPTED)
    assert sorted(decision.delete) == ["j-worker-0", "j-worker-1"] and decision.phase == "Queued"
    status = compose_status({"phase": "Running"}, SPEC, 1, decision, {})
    preempted = next(c for c in status["conditions"] if c["type"] == "Preempted")
    assert (preempted["status"], preempted["reason"]) == ("True", "Preempted") and status["restarts"] == 0


def test_a_job_whose_old_workers_are_stopping_is_draining() -> None:
    stopping = [{**pod(0), "metadata": {**pod(0)["metadata"], "deletionTimestamp": "now"}}]
    decision = decide(SPEC, {"phase": "Queued"}, stopping, set())
    assert decision.draining and not decision.place_gang


def test_queued_status_has_the_phase_position_and_reason_and_readmission_clears_preempted() -> None:
    decision = decide(SPEC, {}, [], set())
    waiting = Queued(2, "Reserved", "held for ns/big", ())
    status = compose_status({}, SPEC, 1, decision, {}, waiting)
    assert status["phase"] == "Queued"
    assert status["queue"] == {"position": 2, "reason": "Reserved", "message": "held for ns/big", "reservedNodes": []}
    previous = {"phase": "Queued", "conditions": [{"type": "Preempted", "status": "True", "reason": "Preempted"}]}
    placed = compose_status(previous, SPEC, 1, decision, {}, Placed((), (), ()))
    assert placed["phase"] == "Pending" and placed["queue"] is None
    assert next(c for c in placed["conditions"] if c["type"] == "Preempted")["reason"] == "Readmitted"


def test_a_verdict_acted_on_while_the_pass_ran_is_not_published_again() -> None:
    """The pass runs in a thread on a snapshot: a job admitted meanwhile (by the previous pass's verdict) must not
    get that snapshot's Admit a second time."""
    queue = GpuQueue(CapacityStore())
    queue.loops = ReconcileLoops("trainingjobs", reconcile=lambda body: None)  # type: ignore[arg-type, return-value]
    first, second = ("ns", "first"), ("ns", "second")
    admit = Admit(Plan(()))
    queue.publish({first: admit, second: admit})
    inputs, queue.consumed = queue.inputs(), set()  # the next pass takes its snapshot
    queue.consume(first)  # ... and a handler acts on the first job's verdict while it runs
    published = queue.publish({first: admit, second: admit})
    assert published == {second: admit} and queue.verdict(first) is None
    assert inputs["queued"] == [] and inputs["nodes"] == []


def test_a_job_being_placed_takes_no_part_in_later_passes_until_its_placement_ends() -> None:
    """An admitted gang waiting for a placement slot is not admitted again (elsewhere) by the passes meanwhile."""
    queue = GpuQueue(CapacityStore())
    queue.loops = ReconcileLoops("trainingjobs", reconcile=lambda body: None)  # type: ignore[arg-type, return-value]
    queue.loops.bodies = {("ns", "a"): job("a"), ("ns", "b"): job("b")}
    queue.publish({("ns", "a"): Admit(Plan(()))})
    with queue.placing_gang(("ns", "a")):
        assert queue.verdict(("ns", "a")) is None
        assert [g.key for g in queue.inputs()["queued"]] == [("ns", "b")]
    assert [g.key for g in queue.inputs()["queued"]] == [("ns", "a"), ("ns", "b")]
    try:
        with queue.placing_gang(("ns", "a")):
            raise RuntimeError("the placement failed")
    except RuntimeError:
        pass
    assert not queue.placing
