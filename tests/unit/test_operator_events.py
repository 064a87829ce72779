"""The operator's one handler per watched kind routes each event to the stores and loops that need it."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from modelfleet import main
from modelfleet.api.common import JOB_NAME_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL
from modelfleet.capacity import CAPACITY
from modelfleet.inference import handlers as inference
from modelfleet.owned import SERVER_PODS, TRAINING_RESULTS, WORKER_PODS
from modelfleet.training import handlers as training

TRAINING_JOBS = kopf.Resource("modelfleet.dev", "v1alpha1", "trainingjobs")


def pod(name: str, uid: str, labels: dict[str, str], gpus: int = 0) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return {
        "metadata": {"name": name, "namespace": "events-ns", "uid": uid, "resourceVersion": "1", "labels": labels,
                     "ownerReferences": [{"uid": f"owner-of-{uid}", "controller": True}]},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"limits": limits}}]},
        "status": {"phase": "Running"},
    }  # fmt: skip


def test_one_pod_handler_feeds_capacity_and_the_worker_or_server_index() -> None:
    ours = {MANAGED_BY_LABEL: MANAGED_BY}
    events = [
        pod("job-worker-0", "w0", {**ours, JOB_NAME_LABEL: "job"}, gpus=1),
        pod("svc-abc", "s0", {**ours, SERVICE_NAME_LABEL: "svc"}),
        pod("someone-elses", "x0", {}, gpus=2),
    ]

    async def feed() -> None:
        for obj in events:
            main.pod_event({"type": "ADDED", "object": obj})

    asyncio.run(feed())
    try:
        assert [p["metadata"]["name"] for p in WORKER_PODS.owned_by("owner-of-w0")] == ["job-worker-0"]
        assert [p["metadata"]["name"] for p in SERVER_PODS.owned_by(("events-ns", "svc"))] == ["svc-abc"]
        assert {uid for uid in ("w0", "s0", "x0") if CAPACITY.gpu_pods.get(uid)} == {"w0", "x0"}
        assert WORKER_PODS.get("x0") is None and SERVER_PODS.get("x0") is None
    finally:
        for obj in events:
            main.pod_event({"type": "DELETED", "object": obj})
    assert WORKER_PODS.get("w0") is None and CAPACITY.gpu_pods.get("x0") is None


def test_one_training_job_handler_feeds_its_loop_and_the_services_index() -> None:
    job = {
        "apiVersion": "modelfleet.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "tj", "namespace": "events-ns", "uid": "tj-uid", "resourceVersion": "3"},
        "spec": {}, "status": {"phase": "Succeeded", "artifact": {"uri": "pvc://m/tj"}},
    }  # fmt: skip

    async def feed() -> None:
        await main.training_job_event({"type": "ADDED", "object": job}, resource=TRAINING_JOBS)
        assert training.LOOPS.bodies[("events-ns", "tj")]["metadata"]["uid"] == "tj-uid"
        assert TRAINING_RESULTS.get("tj-uid")["status"]["artifact"] == {"uri": "pvc://m/tj"}
        # stops the loop before its first pass
        await main.training_job_event({"type": "DELETED", "object": job}, resource=TRAINING_JOBS)

    asyncio.run(feed())
    assert ("events-ns", "tj") not in training.LOOPS.bodies and TRAINING_RESULTS.get("tj-uid") is None
    assert ("events-ns", "tj") not in inference.LOOPS.bodies
