"""TrainingJob builders and lifecycle decisions, without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelfleet.api.training import TrainingJobSpec, TrainingPhase
from modelfleet.scheduling.nodes import NodeInfo
from modelfleet.training.builders import headless_service, worker_pod
from modelfleet.training.lifecycle import TERMINATION_POLL_SECONDS, Decision, decide
from modelfleet.training.status import CreateRefused, Placed, compose_status

META = {"name": "job", "namespace": "ns", "uid": "u1"}
NODES = (NodeInfo("n0", "r1", "z1", "H100", 8, 8), NodeInfo("n1", "r1", "z1", "A100", 8, 8))


def spec(**fields) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({"workers": {"replicas": 2}, "resources": {"gpus": 8}, **fields})


def pod(index: int, phase: str = "Running", attempt: int = 0, exit_code: int | None = None, gated: bool = False, **kw):
    p = worker_pod(META, spec(), index, NODES, attempt, gated=gated)
    p["spec"]["nodeName"] = None if gated else NODES[index].name
    p["status"] = {"phase": phase}
    if exit_code is not None:
        p["status"]["containerStatuses"] = [
            {"state": {"terminated": {"exitCode": exit_code, "finishedAt": kw.get("at", "")}}}
        ]
    return p


def terminating_pod(p: dict) -> dict:
    p["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:30Z"
    return p


def test_worker_pod_is_pinned_gated_and_wired() -> None:
    p = worker_pod(META, spec(), 1, NODES, attempt=2, gated=True)
    env = {e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]}
    assert env["RANK"] == "1" and env["WORLD_SIZE"] == "2" and env["MASTER_ADDR"] == "job-worker-0.job"
    assert env["LOCAL_WORLD_SIZE"] == "8" and env["MODELFLEET_ATTEMPT"] == "2"
    weights = [float(w) for w in env["MODELFLEET_SHARD_WEIGHTS"].split(",")]
    assert weights[0] / weights[1] == pytest.approx(2.5, rel=1e-5)
    assert p["spec"]["schedulingGates"] == [{"name": "modelfleet.dev/gang"}]
    assert p["metadata"]["labels"]["modelfleet.dev/attempt"] == "2"
    assert p["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert headless_service(META, spec())["spec"]["publishNotReadyAddresses"] is True


def test_user_env_cannot_override_the_rendezvous() -> None:
    s = spec(env=[{"name": "RANK", "value": "9"}, {"name": "EXTRA", "value": "1"}])
    env = [e["name"] for e in worker_pod(META, s, 0, NODES, 0, gated=False)["spec"]["containers"][0]["env"]]
    assert env.count("RANK") == 1 and "EXTRA" in env


def test_worker_pod_is_restricted_by_default_with_a_writable_tmp() -> None:
    p = worker_pod(META, spec(), 0, NODES, 0, gated=False)["spec"]
    assert p["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = p["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    assert p["volumes"] == [{"name": "modelfleet-tmp", "emptyDir": {}}]
    assert container["volumeMounts"] == [{"name": "modelfleet-tmp", "mountPath": "/tmp"}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TMPDIR"] == env["HOME"] == "/tmp"


def test_user_security_fields_are_merged_over_the_defaults() -> None:
    s = spec(
        securityContext={"runAsUser": 1000, "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}},
        containerSecurityContext={"capabilities": {"add": ["NET_BIND_SERVICE"]}, "readOnlyRootFilesystem": False},
        env=[{"name": "HOME", "value": "/home/app"}],
        volumes=[{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
        volumeMounts=[{"name": "scratch", "mountPath": "/tmp/"}],
    )
    p = worker_pod(META, s, 0, NODES, 0, gated=False)["spec"]
    assert p["securityContext"]["runAsUser"] == 1000 and p["securityContext"]["runAsNonRoot"] is True
    assert p["securityContext"]["seccompProfile"] == {"type": "Localhost", "localhostProfile": "p.json"}
    container = p["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
        "readOnlyRootFilesystem": False,
    }
    assert [v["name"] for v in p["volumes"]] == ["scratch"], "the user's own /tmp replaces the operator's"
    env = [(e["name"], e.get("value")) for e in container["env"]]
    assert ("HOME", "/home/app") in env and ("HOME", "/tmp") not in env and ("TMPDIR", "/tmp") in env


def test_a_privileged_container_is_not_also_told_not_to_escalate() -> None:
    """The API refuses privileged: true beside allowPrivilegeEscalation: false; the namespace's Pod Security decides."""
    s = spec(containerSecurityContext={"privileged": True})
    context = worker_pod(META, s, 0, NODES, 0, gated=False)["spec"]["containers"][0]["securityContext"]
    assert context == {"privileged": True, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True}


def test_no_workers_means_place_the_gang() -> None:
    assert decide(spec(), {}, [], set()).place_gang


def test_first_failure_restarts_the_whole_gang_once() -> None:
    pods = [
        pod(0, "Failed", exit_code=1, at="2026-01-01T00:00:02Z"),
        pod(1, "Failed", exit_code=137, at="2026-01-01T00:00:01Z"),
    ]
    d = decide(spec(), {"restarts": 0}, pods, set())
    assert d.restart and d.restart.worker == "job-worker-1" and d.restart.exit_code == 137
    assert sorted(d.delete) == ["job-worker-0", "job-worker-1"]
    status = compose_status({"restarts": 0}, spec(), 1, d, {})
    assert status["restarts"] == 1 and status["phase"] == "Restarting"


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


def test_terminating_pods_on_a_lost_node_are_force_deleted() -> None:
    stuck = [terminating_pod(pod(0, attempt=0)), pod(1, attempt=0)]
    d = decide(spec(), {"restarts": 1, "phase": "Restarting"}, stuck, {"n0", "n1"})
    assert sorted(d.force_delete) == ["job-worker-0", "job-worker-1"] and not d.place_gang


def test_refused_workers_hold_placement_until_the_spec_changes() -> None:
    refused = {"conditions": [{"type": "Created", "status": "False", "reason": "InvalidSpec", "observedGeneration": 2}]}
    held = decide(spec(), refused, [], set(), generation=2)
    assert held.held_by_refusal and not held.place_gang
    assert decide(spec(), refused, [], set(), generation=3).place_gang
    forbidden = {"conditions": [{**refused["conditions"][0], "reason": "CreateFailed"}]}
    retried = decide(spec(), forbidden, [], set(), generation=2)
    assert retried.held_by_refusal and retried.place_gang, "CreateFailed is retried (the handler paces it)"
    kept = compose_status(forbidden, spec(), 2, retried, {})
    assert next(c for c in kept["conditions"] if c["type"] == "Created")["reason"] == "CreateFailed"


def test_refusal_and_placement_set_the_created_condition() -> None:
    d = decide(spec(), {}, [], set())
    status = compose_status({}, spec(), 1, d, {}, CreateRefused("InvalidSpec", 'Pod "x" is invalid'))
    created = next(c for c in status["conditions"] if c["type"] == "Created")
    assert created["status"] == "False" and created["message"] == 'Pod "x" is invalid' and status["phase"] == "Pending"
    placed = Placed(NODES, ("job-worker-0", "job-worker-1"), (0.5, 0.5))
    healed = compose_status(status, spec(), 2, Decision(place_gang=True, held_by_refusal=True), {}, placed)
    assert next(c for c in healed["conditions"] if c["type"] == "Created")["status"] == "True"


def test_backoff_and_exit_code_policies() -> None:
    retried = [pod(0, "Failed", attempt=1, exit_code=3), pod(1, attempt=1)]
    assert decide(spec(backoffLimit=1), {"restarts": 1}, retried, set()).fail.reason == "BackoffLimitExceeded"
    failed = [pod(0, "Failed", exit_code=3), pod(1)]
    d = decide(spec(restartPolicy="ExitCode", retryableExitCodes=[137]), {}, failed, set())
    assert d.fail.reason == "ExitCodeNotRetryable" and "exited with code 3" in d.fail.message
    assert decide(spec(restartPolicy="Never"), {}, failed, set()).fail.reason == "RestartPolicyNever"


def test_lost_node_is_retryable_even_for_exit_code_policy_and_force_deletes() -> None:
    d = decide(spec(restartPolicy="ExitCode", retryableExitCodes=[137]), {}, [pod(0), pod(1)], {"n1"})
    assert d.restart and d.restart.reason == "NodeLost"
    assert d.force_delete == ["job-worker-1"] and d.delete == ["job-worker-0"]


def test_half_created_gated_gang_is_started_again_and_a_whole_one_ungated() -> None:
    assert decide(spec(), {}, [pod(0, "Pending", gated=True)], set()).delete == ["job-worker-0"]
    whole = decide(spec(), {}, [pod(0, "Pending", gated=True), pod(1, "Pending", gated=True)], set())
    assert sorted(w.name for w in whole.ungate) == ["job-worker-0", "job-worker-1"]


def test_deleted_worker_of_a_released_gang_is_a_failure() -> None:
    d = decide(spec(), {}, [pod(0)], set())
    assert d.restart and d.restart.reason == "WorkerDeleted"


def test_success_policies() -> None:
    assert decide(spec(), {}, [pod(0, "Succeeded", exit_code=0), pod(1, "Succeeded", exit_code=0)], set()).finished
    assert not decide(spec(), {}, [pod(0, "Succeeded", exit_code=0), pod(1)], set()).finished
    d = decide(spec(successPolicy="RankZero"), {}, [pod(0, "Succeeded", exit_code=0), pod(1)], set())
    assert d.finished and d.delete == ["job-worker-1"]


def test_deadline_ttl_and_suspend() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    started = (now - timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    d = decide(spec(activeDeadlineSeconds=10), {"startTime": started}, [pod(0), pod(1)], set(), now)
    assert d.fail.reason == "DeadlineExceeded"
    done = {"phase": "Succeeded", "completionTime": started}
    assert decide(spec(ttlSecondsAfterFinished=10), done, [], set(), now).delete_job
    assert decide(spec(ttlSecondsAfterFinished=60), done, [], set(), now).requeue_after == 30
    s = decide(spec(suspend=True), {}, [pod(0), pod(1)], set())
    assert s.phase == TrainingPhase.SUSPENDED and len(s.delete) == 2


def test_status_after_placement() -> None:
    placed = Placed(NODES, ("job-worker-0", "job-worker-1"), (0.714286, 0.285714))
    status = compose_status({}, spec(), 3, Decision(place_gang=True), {}, placed)
    assert status["phase"] == "Pending" and status["gpus"] == 16 and status["region"] == "r1"
    assert [p["node"] for p in status["placement"]] == ["n0", "n1"] and status["observedGeneration"] == 3
    scheduled = next(c for c in status["conditions"] if c["type"] == "Scheduled")
    assert scheduled["reason"] == "GangPlaced" and status["startTime"]
