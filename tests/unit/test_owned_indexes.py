"""The watch-fed indexes by owner: slim values, owner keys, local marks of a pass's own writes, healing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from modelfleet.api.common import JOB_NAME_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL
from modelfleet.capacity import ObjectStore
from modelfleet.loops import LAST_APPLIED, ReconcileLoops, without_bookkeeping
from modelfleet.owned import controller_uid, service_key, slim_deployment, slim_pod
from modelfleet.scheduling.nodes import pod_node


def worker(name: str, uid: str, job_uid: str, rv: str = "1", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid,
            "resourceVersion": rv,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, JOB_NAME_LABEL: "job", "other": "x"},
            "annotations": {"modelfleet.dev/progress": "{}", "kubectl.kubernetes.io/last-applied": "x" * 1000},
            "ownerReferences": [{"uid": job_uid, "controller": True, "kind": "TrainingJob", "name": "job"}],
            "managedFields": [{"manager": "x" * 1000}],
        },
        "spec": {
            "nodeName": "n1",
            "containers": [
                {
                    "name": "worker",
                    "image": "img",
                    "env": [{"name": "WORLD_SIZE", "value": "2"}, {"name": "PYTHONPATH", "value": "/x"}],
                    "ports": [{"name": "metrics", "containerPort": 9090}],
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
        "status": {
            "phase": status.get("phase", "Running"),
            "podIP": "127.100.0.1",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}],
            "containerStatuses": [
                {"name": "worker", "state": {"terminated": {"exitCode": 3, "reason": "Error", "message": "m"}}}
            ],
        },
    }


def workers() -> ObjectStore:
    return ObjectStore(slim_pod(JOB_NAME_LABEL), owner=controller_uid)


def test_a_worker_is_kept_slim_and_found_by_its_jobs_uid() -> None:
    store = workers()
    store.apply_event(worker("job-worker-0", "p0", "job-uid"))
    store.apply_event(worker("other-worker-0", "p1", "other-uid"))
    (pod,) = store.owned_by("job-uid")
    assert pod["metadata"]["annotations"] == {"modelfleet.dev/progress": "{}"}
    assert "managedFields" not in pod["metadata"] and "volumes" not in pod["spec"]
    assert pod["spec"]["containers"][0]["env"] == [{"name": "WORLD_SIZE", "value": "2"}]
    assert [c["type"] for c in pod["status"]["conditions"]] == ["Ready"]
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert store.owned_by("nobody") == []


def test_stored_workers_share_their_short_strings() -> None:
    store = workers()
    for uid in ("p0", "p1"):  # each decoded on its own, as two watch events are
        store.apply_event(json.loads(json.dumps(worker(f"job-worker-{uid}", uid, "job-uid"))))
    first, second = (store.get(uid) for uid in ("p0", "p1"))
    assert first["status"]["conditions"][0]["status"] is second["status"]["conditions"][0]["status"]
    label_keys = [next(k for k in pod["metadata"]["labels"] if k == JOB_NAME_LABEL) for pod in (first, second)]
    assert label_keys[0] is label_keys[1]


def test_a_worker_keeps_its_pinned_node_until_it_is_bound_and_only_then_drops_the_affinity() -> None:
    store = workers()
    pinned = worker("job-worker-0", "p0", "job-uid")
    del pinned["spec"]["nodeName"]
    term = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n7"]}]}
    pinned["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [term]}}}  # fmt: skip
    store.apply_event(pinned)
    assert pod_node(store.get("p0")) == "n7"
    store.apply_event({**pinned, "spec": {**pinned["spec"], "nodeName": "n7"}})
    assert pod_node(store.get("p0")) == "n7" and "affinity" not in store.get("p0")["spec"]


def test_pods_of_others_are_not_kept() -> None:
    store = workers()
    stranger = worker("x", "p9", "job-uid")
    stranger["metadata"]["labels"] = {"app": "x"}
    store.apply_event(stranger)
    assert store.entries == {} and store.by_owner == {}


def test_deletion_and_local_marks_keep_the_index_true() -> None:
    store = workers()
    store.apply_event(worker("job-worker-0", "p0", "job-uid"))
    store.apply_event(worker("job-worker-1", "p1", "job-uid"))
    store.mark_deleting(["p0"])
    stopping = {p["metadata"]["name"]: bool(p["metadata"].get("deletionTimestamp")) for p in store.owned_by("job-uid")}
    assert stopping == {"job-worker-0": True, "job-worker-1": False}
    store.mark_deleting(["p1"], gone=True)
    store.apply_event(worker("job-worker-0", "p0", "job-uid"), deleted=True)
    assert store.owned_by("job-uid") == [] and store.by_owner == {}


def test_a_fresh_list_drops_what_a_watch_gap_hid_from_the_index() -> None:
    store = workers()
    store.apply_event(worker("job-worker-0", "p0", "job-uid"))
    store.apply_event(worker("job-worker-1", "p1", "job-uid"))
    dropped = store.replace([worker("job-worker-1", "p1", "job-uid", rv="2", phase="Succeeded")], listed_at=1e12)
    (pod,) = store.owned_by("job-uid")
    assert dropped == 1 and pod["status"]["phase"] == "Succeeded"


def test_server_pods_by_service_and_deployments_by_owner() -> None:
    servers = ObjectStore(slim_pod(SERVICE_NAME_LABEL), owner=service_key)
    pod = worker("svc-x-abc", "s0", "rs-uid")
    pod["metadata"]["labels"] = {MANAGED_BY_LABEL: MANAGED_BY, SERVICE_NAME_LABEL: "svc"}
    servers.apply_event(pod)
    assert [p["metadata"]["name"] for p in servers.owned_by(("ns", "svc"))] == ["svc-x-abc"]
    deployments = ObjectStore(slim_deployment, owner=controller_uid)
    dep = {
        "metadata": {**pod["metadata"], "uid": "d0", "ownerReferences": [{"uid": "svc-uid", "controller": True}]},
        "spec": {"replicas": 2, "template": {"metadata": {"annotations": {"modelfleet.dev/revision": "r1"}}}},
        "status": {"replicas": 2, "conditions": [{"type": "Available"}]},
    }
    deployments.apply_event(dep)
    (slim,) = deployments.owned_by("svc-uid")
    assert slim["spec"] == {"replicas": 2, "template": {"metadata": {"annotations": {"modelfleet.dev/revision": "r1"}}}}
    assert "status" not in slim


def test_a_loop_keeps_its_objects_body_without_bookkeeping() -> None:
    body = {
        "metadata": {
            "name": "job",
            "namespace": "ns",
            "resourceVersion": "5",
            "managedFields": [{"manager": "kubectl"}],
            "annotations": {LAST_APPLIED: "{...}", "team": "a"},
        },
        "spec": {"workers": {"replicas": 2}},
    }
    kept = without_bookkeeping(body)
    assert kept["metadata"] == {"name": "job", "namespace": "ns", "resourceVersion": "5", "annotations": {"team": "a"}}
    assert kept["spec"] is body["spec"] and without_bookkeeping(kept) is kept


def test_loops_keep_bodies_whose_short_strings_are_shared() -> None:
    loops = ReconcileLoops("job", reconcile=lambda body: asyncio.sleep(0))
    status = {"phase": "Running", "conditions": [{"type": "Scheduled", "status": "True"}]}
    for name in ("a", "b"):  # each decoded on its own, as two watch events are
        loops.remember(json.loads(json.dumps({"metadata": {"namespace": "ns", "name": name}, "status": status})))
    first, second = (loops.bodies[("ns", name)]["status"] for name in ("a", "b"))
    assert first == status and first["phase"] is second["phase"]


def test_the_answer_to_an_own_write_never_hides_what_the_watch_brought_since() -> None:
    store = workers()
    store.apply_event(worker("job-worker-0", "p0", "job-uid", rv="12", phase="Running"))
    store.apply_event(worker("job-worker-0", "p0", "job-uid", rv="10", phase="Pending"))  # the ungate's answer
    (pod,) = store.owned_by("job-uid")
    assert pod["status"]["phase"] == "Running"
