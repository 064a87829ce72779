"""Chaos, short: TrainingJobs with injected failures converge while the operator is killed and the apiserver
restarts (the full run is `python -m benchmarks.chaos`; both run tests/support/chaos.py)."""

from __future__ import annotations

import os

import pytest

from modelfleet.devcluster import DevCluster
from tests.support.chaos import ChaosConfig, run_chaos
from tests.support.kube import Kube
from tests.support.operator import OperatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]


def test_training_jobs_converge_under_chaos(
    cluster: DevCluster, kube: Kube, namespace: str, local_operator: OperatorProcess
) -> None:
    config = ChaosConfig(jobs=20, kills=5, apiserver_restarts=1, seed=int(os.environ.get("MODELFLEET_CHAOS_SEED", "1")))
    report = run_chaos(cluster, kube, local_operator, namespace, config)
    print(report.summary())
    assert (report.kills, report.apiserver_restarts, report.watch_gaps_gone) == (5, 1, 1), report.summary()
    assert report.ok, report.summary()
