"""A pass that changes nothing makes no API request: every loop of a steady TrainingJob and InferenceService is
woken (by its own object and by its pods) and the operator's request counter, which counts every call it makes
through its Kubernetes client, does not move; nor does the namespace's Event count."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.kube import Kube, wait_for
from tests.support.operator import OperatorProcess
from tests.support.training import training_job, wait_phase

pytestmark = [pytest.mark.e2e, pytest.mark.kwok]
API = "modelfleet.dev/v1alpha1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def metrics_url(local_operator: OperatorProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The session's operator, replaced by one that serves its Prometheus metrics; it comes back afterwards."""
    port = free_port()
    monkeypatch.setenv("MODELFLEET_METRICS_PORT", str(port))
    local_operator.stop()
    proc = OperatorProcess(local_operator.kubeconfig, tmp_path / "operator.log", local_operator.identity)
    proc.start()
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        proc.stop()
        monkeypatch.delenv("MODELFLEET_METRICS_PORT")
        local_operator.start()


def counters(url: str) -> dict[tuple[str, ...], float]:
    """API requests by call, and reconciles by kind and result."""
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for s in family.samples:
            if s.name == "modelfleet_api_requests_total":
                found[("api", s.labels["call"])] = s.value
            elif s.name == "modelfleet_reconcile_total":
                found[("reconcile", s.labels["kind"], s.labels["result"])] = s.value
    return found


def api_requests(found: dict[tuple[str, ...], float]) -> dict[str, float]:
    return {key[1]: value for key, value in found.items() if key[0] == "api"}


def reconciles(found: dict[tuple[str, ...], float], kind: str) -> float:
    return found.get(("reconcile", kind, "ok"), 0.0)


def steady(url: str, quiet: float = 6.0) -> dict[tuple[str, ...], float]:
    """The counters once no API request has been made for `quiet` seconds (startup's resync and placement done)."""
    last = api_requests(counters(url))
    since = time.monotonic()
    deadline = since + 90
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = counters(url)
        if api_requests(now) != last:
            last, since = api_requests(now), time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"the operator never went quiet: {last}")


def test_a_pass_that_changes_nothing_makes_no_api_request(
    kube: Kube, namespace: str, metrics_url: str, tmp_path: Path
) -> None:
    kube.apply(training_job("steady", workers=2, gpus=1, gpu_type=None), namespace)
    for name, scaling in (("steady", {"replicas": 1, "autoscaling": {"enabled": False}}), ("scaled", {})):
        spec = {"model": {"uri": "file:///models/m/model.pt"}, "regions": [{"name": "cn-beijing"}], **scaling}
        kube.apply({"apiVersion": API, "kind": "InferenceService", "metadata": {"name": name}, "spec": spec}, namespace)
    wait_phase(kube, namespace, "steady", "Running")
    for name in ("steady", "scaled"):
        wait_for(
            lambda name=name: (
                (kube.get_json("mfis", name, "-n", namespace).get("status") or {}).get("phase") == "Ready"
            ),
            what=f"service {name} Ready",
        )
    before = steady(metrics_url)
    events_before = len(kube.get_json("events", "-n", namespace)["items"])

    for kind, name in (("trainingjob", "steady"), ("mfis", "steady"), ("mfis", "scaled")):  # their own events
        kube.kubectl("annotate", kind, name, "-n", namespace, "test.modelfleet.dev/poke=1")
    time.sleep(1.5)  # past a job's coalescing wait (0.5 s): on a quick machine one pass would take in every poke
    for pod in kube.get_json("pods", "-n", namespace)["items"]:  # and each pod's wakes its owner's
        kube.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, "test.modelfleet.dev/poke=1")
    passes: dict[tuple[str, ...], float] = {}

    def woken() -> bool:
        now = counters(metrics_url)
        passes.update({key: n - before.get(key, 0.0) for key, n in now.items() if key[0] == "reconcile"})
        return reconciles(passes, "trainingjob") >= 2 and reconciles(passes, "inferenceservice") >= 4

    try:
        wait_for(woken, timeout=30, what="both loops woken and reconciled")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; passes since the counters were read: {passes}") from None
    time.sleep(2.0)  # a pass still running when the counters were read finishes
    after = counters(metrics_url)

    made = {call: n - api_requests(before).get(call, 0.0) for call, n in api_requests(after).items()}
    applied = [line for line in (tmp_path / "operator.log").read_text().splitlines() if " applying " in line]
    assert {call: n for call, n in made.items() if n} == {}, f"API requests by passes that changed nothing: {applied}"
    assert len(kube.get_json("events", "-n", namespace)["items"]) == events_before
    for kind in ("trainingjob", "inferenceservice"):
        assert after.get(("reconcile", kind, "error"), 0.0) == before.get(("reconcile", kind, "error"), 0.0)
