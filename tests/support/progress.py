"""Plays rank 0 for a KWOK-simulated TrainingJob: the runtime's real progress endpoint, bound to the rank-0 pod's
(loopback) IP and the metrics port from its own container spec. Rank 0 is in worker 0 unless `pod_index` says
otherwise (elastic torchrun may put it in any pod)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from modelfleet.runtime.progress import ProgressReporter
from tests.support.kube import Kube, wait_for


@contextlib.contextmanager
def rank_zero_progress(kube: Kube, namespace: str, job: str, pod_index: int = 0) -> Iterator[ProgressReporter]:
    def running_rank_zero() -> dict | None:
        pod = kube.get_json("pod", f"{job}-worker-{pod_index}", "-n", namespace)
        return pod if pod["status"].get("phase") == "Running" and pod["status"].get("podIP") else None

    pod = wait_for(running_rank_zero, what=f"{job}-worker-{pod_index} running with an IP")
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    reporter = ProgressReporter(host=pod["status"]["podIP"], port=ports["metrics"])
    assert reporter.server is not None, "the progress endpoint could not bind the pod's IP"
    try:
        yield reporter
    finally:
        reporter.close()
