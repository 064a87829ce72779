"""TrainingJob builders and the status that follows from a decision, without a cluster (the lifecycle policies
are in test_training_policies.py)."""

from __future__ import annotations

import pytest

from modelfleet.scheduling.nodes import pod_node
from modelfleet.training.builders import headless_service, worker_pod
from modelfleet.training.gang import Decision
from modelfleet.training.lifecycle import decide
from modelfleet.training.status import CreateRefused, Placed, compose_status

from .training_fixtures import META, NODES, pod, spec


def test_worker_pod_is_pinned_and_wired_without_a_gate() -> None:
    p = worker_pod(META, spec(), 1, NODES, attempt=2)
    env = {e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]}
    assert env["RANK"] == "1" and env["WORLD_SIZE"] == "2" and env["MASTER_ADDR"] == "job-worker-0.job"
    assert env["LOCAL_WORLD_SIZE"] == "8" and env["MODELFLEET_ATTEMPT"] == "2"
    weights = [float(w) for w in env["MODELFLEET_SHARD_WEIGHTS"].split(",")]
    assert weights[0] / weights[1] == pytest.approx(2.5, rel=1e-5)
    assert "schedulingGates" not in p["spec"], "its placement is written before it is created"
    assert p["metadata"]["labels"]["modelfleet.dev/attempt"] == "2"
    assert p["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert headless_service(META, spec())["spec"]["publishNotReadyAddresses"] is True


def test_worker_pod_is_pinned_by_node_name_for_the_schedulers_prefilter_and_by_hostname() -> None:
    p = worker_pod(META, spec(), 1, NODES, attempt=0)
    terms = p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchFields"] == [{"key": "metadata.name", "operator": "In", "values": [NODES[1].name]}]
    assert pod_node(p) == NODES[1].name


def test_user_env_cannot_override_the_rendezvous() -> None:
    s = spec(env=[{"name": "RANK", "value": "9"}, {"name": "EXTRA", "value": "1"}])
    env = [e["name"] for e in worker_pod(META, s, 0, NODES, 0)["spec"]["containers"][0]["env"]]
    assert env.count("RANK") == 1 and "EXTRA" in env


def test_worker_pod_is_restricted_by_default_with_a_writable_tmp() -> None:
    p = worker_pod(META, spec(), 0, NODES, 0)["spec"]
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


def test_worker_pod_mounts_no_api_token_unless_a_service_account_is_named() -> None:
    """Workers make no API request: the namespace's default account's token is not mounted; a named account is the
    user's choice of identity, and its own automount setting decides."""
    bare = worker_pod(META, spec(), 0, NODES, 0)["spec"]
    assert bare["automountServiceAccountToken"] is False and "serviceAccountName" not in bare
    named = worker_pod(META, spec(serviceAccountName="trainer"), 0, NODES, 0)["spec"]
    assert named["serviceAccountName"] == "trainer" and "automountServiceAccountToken" not in named


def test_user_security_fields_are_merged_over_the_defaults() -> None:
    s = spec(
        securityContext={"runAsUser": 1000, "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}},
        containerSecurityContext={"capabilities": {"add": ["NET_BIND_SERVICE"]}, "readOnlyRootFilesystem": False},
        env=[{"name": "HOME", "value": "/home/app"}],
        volumes=[{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
        volumeMounts=[{"name": "scratch", "mountPath": "/tmp/"}],
    )
    p = worker_pod(META, s, 0, NODES, 0)["spec"]
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
    context = worker_pod(META, s, 0, NODES, 0)["spec"]["containers"][0]["securityContext"]
    assert context == {"privileged": True, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True}


def test_a_gang_restart_counts_once_in_status() -> None:
    pods = [pod(0, "Failed", exit_code=1), pod(1, "Failed", exit_code=137)]
    status = compose_status({"restarts": 0}, spec(), 1, decide(spec(), {"restarts": 0}, pods, set()), {})
    assert status["restarts"] == 1 and status["phase"] == "Restarting"


def test_a_retried_refusal_keeps_its_created_condition() -> None:
    forbidden = {
        "conditions": [{"type": "Created", "status": "False", "reason": "CreateFailed", "observedGeneration": 2}]
    }
    kept = compose_status(forbidden, spec(), 2, decide(spec(), forbidden, [], set(), generation=2), {})
    assert next(c for c in kept["conditions"] if c["type"] == "Created")["reason"] == "CreateFailed"


def test_refusal_and_placement_set_the_created_condition() -> None:
    d = decide(spec(), {}, [], set())
    status = compose_status({}, spec(), 1, d, {}, CreateRefused("InvalidSpec", 'Pod "x" is invalid'))
    created = next(c for c in status["conditions"] if c["type"] == "Created")
    assert created["status"] == "False" and created["message"] == 'Pod "x" is invalid' and status["phase"] == "Pending"
    placed = Placed(NODES, ("job-worker-0", "job-worker-1"), (0.5, 0.5))
    healed = compose_status(status, spec(), 2, Decision(place_gang=True, held_by_refusal=True), {}, placed)
    assert next(c for c in healed["conditions"] if c["type"] == "Created")["status"] == "True"


def test_status_after_placement() -> None:
    placed = Placed(NODES, ("job-worker-0", "job-worker-1"), (0.714286, 0.285714))
    status = compose_status({}, spec(), 3, Decision(place_gang=True), {}, placed)
    assert status["phase"] == "Pending" and status["gpus"] == 16 and status["region"] == "r1"
    assert [p["node"] for p in status["placement"]] == ["n0", "n1"] and status["observedGeneration"] == 3
    scheduled = next(c for c in status["conditions"] if c["type"] == "Scheduled")
    assert scheduled["reason"] == "GangPlaced" and status["startTime"]
