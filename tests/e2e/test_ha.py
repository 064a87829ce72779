"""High availability: operator processes campaign for one Lease; exactly one acts, and a standby takes over when
the leader is killed (after the lease expires) or stopped (at once: the lease is released)."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.kube import Kube, wait_for
from tests.support.operator import OperatorProcess
from tests.support.training import training_job, wait_phase

pytestmark = pytest.mark.e2e
LEADS = "leads (lease"
KOPF_LINE = re.compile(r"^\S+ \S+ \w+ kopf[.\w]*: ", re.MULTILINE)  # "<date> <time> <LEVEL> kopf.<logger>: ..."
REQUEST = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) (\S+) HTTP')  # urllib3's debug line for each API request
Start = Callable[..., OperatorProcess]


@pytest.fixture
def start(kube: Kube, namespace: str, local_operator: OperatorProcess, tmp_path: Path) -> Iterator[Start]:
    """Starts operator processes (debug logs) that campaign for Lease `ha` in the test's namespace, in place of the
    session's operator, which comes back afterwards."""
    started: list[OperatorProcess] = []

    def start_one(identity: str, *extra: str, log: str = "") -> OperatorProcess:
        proc = OperatorProcess(
            kube.kubeconfig,
            tmp_path / f"{log or identity}.log",
            identity,
            ["--lease-namespace", namespace, "--lease-name", "ha", "--log-level", "debug", *extra],
        )
        proc.start()
        started.append(proc)
        return proc

    local_operator.stop()
    try:
        yield start_one
    finally:
        for proc in started:
            proc.stop()
        local_operator.start()


def holder(kube: Kube, namespace: str) -> str | None:
    return kube.get_json("lease", "ha", "-n", namespace)["spec"].get("holderIdentity")


def log(proc: OperatorProcess) -> str:
    return proc.log_tail(50_000_000)


def wait_leads(proc: OperatorProcess, timeout: float = 30) -> float:
    """Seconds until `proc` logs that it leads."""
    began = time.monotonic()
    wait_for(lambda: LEADS in log(proc), timeout=timeout, interval=0.1, what=f"{proc.identity} leads")
    return time.monotonic() - began


def assert_stands_by(proc: OperatorProcess, namespace: str) -> None:
    """Campaigning, and nothing else: no kopf, no leadership, and no API request but for the Lease."""
    text = log(proc)
    assert proc.proc is not None and proc.proc.poll() is None, text[-3000:]
    assert "campaigns for lease" in text and LEADS not in text, text[-3000:]
    assert not KOPF_LINE.search(text), text[-3000:]
    paths = {path.split("?")[0] for _, path in REQUEST.findall(text)}
    assert paths == {f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/ha"}, paths


@pytest.mark.kwok
def test_one_acts_and_a_standby_takes_over_after_kill_9(kube: Kube, namespace: str, start: Start) -> None:
    a = start("ha-a")
    wait_leads(a)
    b = start("ha-b")
    assert holder(kube, namespace) == "ha-a"
    kube.apply(training_job("before", workers=2, gpus=1, gpu_type="T4", exit_code=0, run_for="5s"), namespace)
    wait_phase(kube, namespace, "before", "Running")
    assert f"PUT /apis/modelfleet.dev/v1alpha1/namespaces/{namespace}/trainingjobs/before/status" in log(a)
    time.sleep(2)  # a standby that watched would have logged the job's events by now
    assert_stands_by(b, namespace)

    assert a.proc is not None
    a.kill()
    took = wait_leads(b)
    print(f"\nfailover after kill -9 of the leader: {took:.1f}s")
    assert took < 30
    assert holder(kube, namespace) == "ha-b"
    wait_phase(kube, namespace, "before", "Succeeded")  # the job that ran across the failover is finished
    kube.apply(training_job("after", workers=2, gpus=1, gpu_type="T4"), namespace)
    wait_phase(kube, namespace, "after", "Running")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(url: str) -> dict[str, Any] | None:
    """The liveness endpoint's JSON answer, None while nothing answers."""
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def test_sigterm_hands_the_lease_over_at_once(kube: Kube, namespace: str, start: Start) -> None:
    a = start("ha-a")
    wait_leads(a)
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    b = start("ha-b", f"--liveness={liveness}")
    assert wait_for(lambda: probe(liveness), what="the standby's liveness answer") == {"standby": True}
    began = time.monotonic()
    a.stop()
    assert a.proc is not None and a.proc.returncode == 0, log(a)[-3000:]
    assert "ha-a released lease" in log(a)
    wait_leads(b, timeout=15)
    took = time.monotonic() - began
    print(f"\nhandover on SIGTERM of the leader: {took:.1f}s")
    assert took < 10, "a released lease is taken at the next retry, not after it expires"
    assert holder(kube, namespace) == "ha-b"
    wait_for(lambda: (answer := probe(liveness)) is not None and "standby" not in answer, what="kopf's liveness answer")
    kube.apply(training_job("after-stop", workers=2, gpus=1, gpu_type="T4"), namespace)
    wait_phase(kube, namespace, "after-stop", "Running")


def test_a_leader_restarted_in_place_takes_its_lease_back_at_once(kube: Kube, namespace: str, start: Start) -> None:
    a = start("ha-a")
    wait_leads(a)
    b = start("ha-b")
    a.kill()
    again = start("ha-a", log="ha-a-again")
    took = wait_leads(again, timeout=10)
    print(f"\nsame identity back after kill -9: {took:.1f}s")
    assert took < 5, "its own unexpired lease is renewed, not waited for"
    time.sleep(3)
    assert_stands_by(b, namespace)
    assert holder(kube, namespace) == "ha-a"


def test_a_leader_that_sees_another_holder_exits_at_once(kube: Kube, namespace: str, start: Start) -> None:
    a = start("ha-a")
    wait_leads(a)
    patch = '{"spec": {"holderIdentity": "intruder"}}'
    kube.kubectl("patch", "lease", "ha", "-n", namespace, "--type=merge", "-p", patch)
    began = time.monotonic()
    wait_for(lambda: "is held by intruder: exiting" in log(a), timeout=10, interval=0.1, what="the leader exits")
    took = time.monotonic() - began
    print(f"\nexit after the lease changed hands: {took:.1f}s")
    assert took < 5, "at its next renewal, not after the renew deadline"
    restarted = "starting it again"  # what OperatorProcess writes when it restarts the process, as a kubelet would
    wait_for(lambda: a.restarts == 1 and "campaigns" in log(a).split(restarted)[-1], what="restarted as a standby")
    time.sleep(3)
    after = log(a).split(restarted)[-1]
    assert LEADS not in after and not KOPF_LINE.search(after), after[-3000:]
