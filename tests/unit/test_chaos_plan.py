"""The chaos run's plan: seeded, every fault counted, deletions only of jobs already submitted."""

from __future__ import annotations

from tests.support.chaos import ChaosConfig, plan


def test_plan_is_seeded_and_holds_every_fault() -> None:
    config = ChaosConfig(jobs=20, kills=5, apiserver_restarts=3, deletions=4, seed=7)
    jobs, events = plan(config)
    assert (jobs, events) == plan(config)
    kinds = [e.kind for e in events]
    assert (kinds.count("submit"), kinds.count("kill"), kinds.count("gap"), kinds.count("restart")) == (20, 5, 2, 1)
    assert kinds.count("gap") + kinds.count("delete") == 4 == sum(j.delete_at is not None for j in jobs)
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert all(0 <= e.at <= config.span for e in events)
    for job in jobs:
        assert 1 <= job.workers <= 4 and 0 <= job.fail_attempts <= 2 and 0 <= job.backoff_limit <= 2
        if job.delete_at is not None:
            assert job.submit_at <= job.delete_at - 5 or job.submit_at == 0


def test_expected_end_follows_failures_and_backoff_limit() -> None:
    jobs, _ = plan(ChaosConfig(jobs=60, kills=0, apiserver_restarts=0, seed=3))
    for job in jobs:
        phase, restarts = job.expected
        if job.fail_attempts <= job.backoff_limit:
            assert (phase, restarts) == ("Succeeded", job.fail_attempts)
        else:
            assert (phase, restarts) == ("Failed", job.backoff_limit)
    manifest = jobs[0].manifest()
    annotations = manifest["spec"]["podMetadata"]["annotations"]
    assert annotations["sim.modelfleet.dev/termination-delay"] == "2s"
    assert manifest["spec"]["backoffLimit"] == jobs[0].backoff_limit
