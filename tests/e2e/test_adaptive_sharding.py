"""Adaptive sharding seen from the operator: rank 0 in any pod, each worker's current share and throughput in
status.placement."""

from __future__ import annotations

import pytest

from tests.support.kube import Kube, wait_for
from tests.support.progress import rank_zero_progress
from tests.support.training import env_of, status, training_job, wait_phase, workers

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]


def test_rank_zero_in_another_pod_reports_every_workers_share_into_placement(kube: Kube, namespace: str) -> None:
    """Elastic torchrun put rank 0 in worker 1: the operator finds it there, and status.placement shows the
    shares Adaptive moved and the throughput each worker measured."""
    job = training_job(
        "adaptive",
        workers={"minReplicas": 2, "maxReplicas": 2},
        gpus=1,
        gpu_type="T4",
        regions=("us-west-1",),
        dataset={"sharding": "Adaptive", "rebalanceIntervalSteps": 10},
    )
    kube.apply(job, namespace)
    wait_phase(kube, namespace, "adaptive", "Running")
    envs = [env_of(pod) for pod in workers(kube, namespace, "adaptive")]
    assert [(e["MODELFLEET_REPLICA_INDEX"], e["MODELFLEET_SHARDING"]) for e in envs] == [
        ("0", "Adaptive"),
        ("1", "Adaptive"),
    ]
    assert envs[0]["MODELFLEET_REBALANCE_STEPS"] == "10"
    with rank_zero_progress(kube, namespace, "adaptive", pod_index=1) as rank0:
        rank0.report(step=40, epoch=1, loss=0.5, samples_per_second=1000.0)
        rank0.report_workers({0: 0.3, 1: 0.7}, {0: 300.0, 1: 700.0})
        placement = wait_for(
            lambda: (p := status(kube, namespace, "adaptive").get("placement")) and "currentShare" in p[0] and p,
            what="current shares in status.placement",
        )
    assert [(p["worker"], p["shardWeight"], p["currentShare"], p["samplesPerSecond"]) for p in placement] == [
        ("adaptive-worker-0", 0.5, 0.3, 300.0),
        ("adaptive-worker-1", 0.5, 0.7, 700.0),
    ]
    progress = status(kube, namespace, "adaptive")["progress"]
    assert progress["step"] == 40 and "workers" not in progress
