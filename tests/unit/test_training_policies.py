"""The TrainingJob lifecycle policies one by one, and `decide` running them in order, without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from modelfleet.api.training import TrainingPhase
from modelfleet.scheduling.queue import Evict
from modelfleet.training.gang import Decision, JobState, job_state
from modelfleet.training.lifecycle import POLICIES, decide
from modelfleet.training.policies import (
    TERMINATION_POLL_SECONDS,
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

from .training_fixtures import pod, spec, terminating_pod

NOW = datetime(2026, 1, 1, tzinfo=UTC)
THIRTY_SECONDS_AGO = (NOW - timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
PREEMPTED = Evict("Preempted", "preempted for ns/urgent", 0)


def job(status: dict[str, Any] | None = None, pods: list[dict[str, Any]] = (), lost=(), **fields: Any) -> JobState:
    options = {k: fields.pop(k) for k in ("generation", "evict") if k in fields}
    return job_state(spec(**fields), status or {}, pods, lost, NOW, **options)


def run(policy, state: JobState) -> tuple[bool, Decision]:
    decision = Decision()
    return policy(state, decision), decision


def test_decide_runs_the_policies_in_the_documented_order() -> None:
    assert [p.__name__ for p in POLICIES] == [
        "ttl_after_finished", "suspend", "queue_eviction", "active_deadline", "lost_nodes", "old_attempts",
        "gang_failure", "gang_success", "draining", "gang_placement", "gang_start", "gang_running",
    ]  # fmt: skip


def test_ttl_after_finished_deletes_live_workers_and_then_the_job() -> None:
    done = {"phase": "Succeeded", "completionTime": THIRTY_SECONDS_AGO}
    settled, d = run(
        ttl_after_finished, job(done, [pod(0, "Succeeded", exit_code=0), pod(1)], ttlSecondsAfterFinished=10)
    )
    assert settled and d.delete_job and d.delete == ["job-worker-1"]
    settled, d = run(ttl_after_finished, job(done, ttlSecondsAfterFinished=60))
    assert settled and not d.delete_job and d.requeue_after == 30
    settled, d = run(ttl_after_finished, job(done))
    assert settled and not d.delete_job and d.requeue_after is None, "no TTL: the finished job stays"
    assert run(ttl_after_finished, job({"phase": "Running"}, ttlSecondsAfterFinished=0)) == (False, Decision())


def test_finished_jobs_are_left_to_the_ttl_policy_whatever_else_the_spec_says() -> None:
    d = decide(spec(suspend=True), {"phase": "Failed"}, [pod(0)], set())
    assert d.delete == ["job-worker-0"] and d.phase is None


def test_suspend_deletes_every_worker_not_already_stopping() -> None:
    settled, d = run(suspend, job(pods=[pod(0), terminating_pod(pod(1))], suspend=True))
    assert settled and d.delete == ["job-worker-0"] and d.phase == TrainingPhase.SUSPENDED
    assert run(suspend, job(pods=[pod(0)])) == (False, Decision())


def test_queue_eviction_stops_a_live_gang_and_queues_it_again() -> None:
    settled, d = run(queue_eviction, job({"phase": "Running"}, [pod(0), pod(1)], evict=PREEMPTED))
    assert settled and sorted(d.delete) == ["job-worker-0", "job-worker-1"]
    assert d.phase == TrainingPhase.QUEUED and d.evicted == PREEMPTED
    stopping = [terminating_pod(pod(0))]
    assert run(queue_eviction, job({"phase": "Queued"}, stopping, evict=PREEMPTED)) == (False, Decision())
    assert run(queue_eviction, job({"phase": "Running"}, [pod(0), pod(1)])) == (False, Decision())


def test_active_deadline_fails_the_job_or_sets_a_timer() -> None:
    started = {"startTime": THIRTY_SECONDS_AGO}
    settled, d = run(active_deadline, job(started, [pod(0), pod(1, "Failed", exit_code=1)], activeDeadlineSeconds=10))
    assert settled and d.fail.reason == "DeadlineExceeded" and "(10s)" in d.fail.message
    assert d.delete == ["job-worker-0"], "only live workers are deleted"
    settled, d = run(active_deadline, job(started, [pod(0), pod(1)], activeDeadlineSeconds=100))
    assert not settled and d.requeue_after == 70 and not d.fail
    assert run(active_deadline, job({}, [], activeDeadlineSeconds=10)) == (False, Decision()), "not started yet"


def test_lost_nodes_force_delete_stopping_and_stale_pods_only() -> None:
    pods = [terminating_pod(pod(0, attempt=1)), pod(1, attempt=0)]
    settled, d = run(lost_nodes, job({"restarts": 1}, pods, {"n0", "n1"}))
    assert not settled and d.force_delete == ["job-worker-0", "job-worker-1"] and not d.delete
    settled, d = run(lost_nodes, job({}, [pod(0), pod(1)], {"n1"}))
    assert not settled and not d.force_delete, "a current worker on a lost node is a gang failure"


def test_old_attempts_are_deleted_and_the_current_workers_remain() -> None:
    pods = [pod(0, attempt=0), terminating_pod(pod(1, attempt=0)), pod(0, attempt=1)]
    pods[2]["metadata"]["name"] = "job-worker-0-new"
    settled, d = run(old_attempts, job({"restarts": 1}, pods))
    assert not settled and d.delete == ["job-worker-0"]
    assert [w.name for w in d.current] == ["job-worker-0-new"]
    settled, d = run(old_attempts, job({"restarts": 1}, [pod(0, attempt=0)], {"n0"}))
    assert not d.delete, "a stale pod on a lost node is lost_nodes' (force-deleted)"


def test_gang_failure_restarts_the_whole_gang_once_from_the_earliest_failure() -> None:
    pods = [pod(0, "Failed", exit_code=1, at="2026-01-01T00:00:02Z"), pod(1, "Failed", exit_code=137, at="2026-01-01T00:00:01Z")]  # fmt: skip
    settled, d = run(gang_failure, job({"restarts": 0}, pods))
    assert settled and d.phase == TrainingPhase.RESTARTING
    assert d.restart.worker == "job-worker-1" and d.restart.exit_code == 137
    assert sorted(d.delete) == ["job-worker-0", "job-worker-1"]
    assert run(gang_failure, job({}, [pod(0), pod(1)])) == (False, Decision())


def test_gang_failure_follows_backoff_and_exit_code_policies() -> None:
    retried = [pod(0, "Failed", attempt=1, exit_code=3), pod(1, attempt=1)]
    _, d = run(gang_failure, job({"restarts": 1}, retried, backoffLimit=1))
    assert d.fail.reason == "BackoffLimitExceeded" and d.delete == ["job-worker-1"] and not d.restart
    failed = [pod(0, "Failed", exit_code=3), pod(1)]
    _, d = run(gang_failure, job({}, failed, restartPolicy="ExitCode", retryableExitCodes=[137]))
    assert d.fail.reason == "ExitCodeNotRetryable" and "exited with code 3" in d.fail.message
    assert run(gang_failure, job({}, failed, restartPolicy="Never"))[1].fail.reason == "RestartPolicyNever"


def test_a_lost_node_is_a_retryable_failure_even_for_the_exit_code_policy() -> None:
    _, d = run(gang_failure, job({}, [pod(0), pod(1)], {"n1"}, restartPolicy="ExitCode", retryableExitCodes=[137]))
    assert d.restart.reason == "NodeLost" and d.force_delete == ["job-worker-1"] and d.delete == ["job-worker-0"]


def test_a_deleted_worker_of_a_started_gang_is_a_failure_but_not_of_one_that_never_started() -> None:
    _, d = run(gang_failure, job({}, [pod(0)]))
    assert d.restart.reason == "WorkerDeleted" and d.restart.worker == "index-1"
    assert run(gang_failure, job({}, [pod(0, "Pending")])) == (False, Decision()), "gang_start places it afresh"
    assert run(gang_failure, job({}, [pod(0, "Pending", gated=True)])) == (False, Decision())


def test_gang_success_by_policy() -> None:
    done = [pod(0, "Succeeded", exit_code=0), pod(1, "Succeeded", exit_code=0)]
    settled, d = run(gang_success, job({}, done))
    assert settled and d.finished and d.phase == TrainingPhase.SUCCEEDED and not d.delete
    assert run(gang_success, job({}, [pod(0, "Succeeded", exit_code=0), pod(1)])) == (False, Decision())
    settled, d = run(gang_success, job({}, [pod(0, "Succeeded", exit_code=0), pod(1)], successPolicy="RankZero"))
    assert settled and d.finished and d.delete == ["job-worker-1"]


def test_draining_waits_for_stopping_pods_to_free_the_names() -> None:
    stopping = [terminating_pod(pod(0, attempt=0)), terminating_pod(pod(1, attempt=1))]
    settled, d = run(draining, job({"restarts": 1}, stopping))
    assert settled and d.draining and d.requeue_after == TERMINATION_POLL_SECONDS and not d.place_gang
    sooner = Decision(requeue_after=2.0)
    assert draining(job({"restarts": 1}, stopping), sooner) and sooner.requeue_after == 2.0
    assert run(draining, job({}, [])) == (False, Decision())
    assert run(draining, job({}, [pod(0), pod(1)])) == (False, Decision())


def test_gang_placement_places_unless_the_api_refused_this_generation() -> None:
    settled, d = run(gang_placement, job())
    assert settled and d.place_gang and not d.held_by_refusal
    refused = {"conditions": [{"type": "Created", "status": "False", "reason": "InvalidSpec", "observedGeneration": 2}]}
    _, held = run(gang_placement, job(refused, generation=2))
    assert held.held_by_refusal and not held.place_gang
    assert run(gang_placement, job(refused, generation=3))[1].place_gang, "a new spec is tried"
    forbidden = {"conditions": [{**refused["conditions"][0], "reason": "CreateFailed"}]}
    _, retried = run(gang_placement, job(forbidden, generation=2))
    assert retried.held_by_refusal and retried.place_gang, "CreateFailed is retried (the handler paces it)"
    assert run(gang_placement, job({}, [pod(0)])) == (False, Decision())


def test_gang_start_places_a_gang_cut_short_afresh_and_ungates_a_whole_gated_one() -> None:
    settled, d = run(gang_start, job({}, [pod(0, "Pending")]))  # the operator stopped between the creates
    assert settled and d.delete == ["job-worker-0"] and not d.restart and not d.ungate
    settled, d = run(gang_start, job({}, [pod(0, "Pending", gated=True)]))
    assert settled and d.delete == ["job-worker-0"] and not d.ungate
    settled, d = run(gang_start, job({}, [pod(0, "Pending", gated=True), pod(1, "Pending", gated=True)]))
    assert not settled and sorted(w.name for w in d.ungate) == ["job-worker-0", "job-worker-1"]
    assert run(gang_start, job({}, [pod(0), pod(1)])) == (False, Decision())
    assert run(gang_start, job({}, [pod(0, "Pending"), pod(1, "Pending")])) == (False, Decision())


def test_gang_running_once_every_worker_runs() -> None:
    assert run(gang_running, job({}, [pod(0), pod(1)]))[1].phase == TrainingPhase.RUNNING
    assert run(gang_running, job({}, [pod(0), pod(1, "Pending")]))[1].phase == TrainingPhase.PENDING
    restarting = run(gang_running, job({"phase": "Restarting"}, [pod(0), pod(1, "Pending")]))
    assert restarting == (True, Decision()), "a restarting job stays Restarting until all run"


def test_decide_with_no_workers_places_the_gang() -> None:
    assert decide(spec(), {}, [], set()).place_gang


def test_old_attempt_pods_are_deleted_not_counted_and_the_next_attempt_waits_for_them() -> None:
    pods = [pod(0, "Failed", attempt=0, exit_code=1), pod(1, "Failed", attempt=0, exit_code=1)]
    d = decide(spec(), {"restarts": 1, "phase": "Restarting"}, pods, set())
    assert not d.restart and sorted(d.delete) == ["job-worker-0", "job-worker-1"] and not d.place_gang
    assert d.requeue_after == TERMINATION_POLL_SECONDS
    assert decide(spec(), {"restarts": 1, "phase": "Restarting"}, [], set()).place_gang


def test_terminating_pods_of_any_attempt_hold_the_names_and_are_not_deleted_twice() -> None:
    terminating = [terminating_pod(pod(0, attempt=0)), terminating_pod(pod(1, attempt=1))]
    d = decide(spec(), {"restarts": 1, "phase": "Restarting"}, terminating, set())
    assert not d.place_gang and not d.delete and not d.force_delete and not d.restart
    assert d.phase is None  # still Restarting: compose_status keeps the phase


def test_terminating_pods_on_a_lost_node_are_force_deleted_and_the_gang_waits() -> None:
    stuck = [terminating_pod(pod(0, attempt=0)), pod(1, attempt=0)]
    d = decide(spec(), {"restarts": 1, "phase": "Restarting"}, stuck, {"n0", "n1"})
    assert sorted(d.force_delete) == ["job-worker-0", "job-worker-1"] and d.draining and not d.place_gang


def test_a_running_job_past_its_deadline_fails_before_any_gang_policy_runs() -> None:
    now_failed = [pod(0, "Failed", exit_code=1), pod(1)]
    d = decide(spec(activeDeadlineSeconds=10), {"startTime": THIRTY_SECONDS_AGO}, now_failed, set(), NOW)
    assert d.fail.reason == "DeadlineExceeded" and not d.restart and not d.current
