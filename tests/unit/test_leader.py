from __future__ import annotations

import http.client
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client

from modelfleet import leader
from modelfleet.leader import (
    FencedLeaseLock,
    Lease,
    default_identity,
    default_namespace,
    kubeconfig_namespace,
    standby_liveness,
)


def test_identity_is_the_pod_name_else_host_and_pid() -> None:
    assert default_identity({"POD_NAME": "mf-7d9c-abcde"}, "node-1", 42) == "mf-7d9c-abcde"
    assert default_identity({}, "laptop", 42) == "laptop-42"
    assert default_identity({"POD_NAME": ""}, "laptop", 42) == "laptop-42"


def test_namespace_is_the_pods_else_the_kubeconfigs_else_default() -> None:
    assert default_namespace({"POD_NAMESPACE": "modelfleet-system"}, "team-a") == "modelfleet-system"
    assert default_namespace({}, "team-a") == "team-a"
    assert default_namespace({}, None) == "default"


def kubeconfig(path: Path, namespace: str | None) -> Path:
    context: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": context}],
    }))  # fmt: skip
    return path


def test_kubeconfig_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "a", "team-a")))
    assert kubeconfig_namespace() == "team-a"
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "b", None)))
    assert kubeconfig_namespace() is None
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert kubeconfig_namespace() is None


class FakeLeases:
    """Stands in for CoordinationV1Api: one Lease, and a switch that makes the connection fail."""

    def __init__(self, holder: str) -> None:
        self.lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name="mf", namespace="ns", resource_version="1"),
            spec=client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=15),
        )
        self.down = False
        self.timeouts: list[float] = []
        self.replaced: list[client.V1Lease] = []

    def read_namespaced_lease(self, name: str, namespace: str, _request_timeout: float) -> client.V1Lease:
        self.timeouts.append(_request_timeout)
        if self.down:
            raise urllib3.exceptions.MaxRetryError(None, "/", "connection refused")  # type: ignore[arg-type]
        return self.lease

    def replace_namespaced_lease(
        self, name: str, namespace: str, body: client.V1Lease, _request_timeout: float
    ) -> client.V1Lease:
        self.replaced.append(body)
        return body


def fenced_lock(api: FakeLeases, identity: str = "a") -> FencedLeaseLock:
    lock = FencedLeaseLock(Lease("mf", "ns", identity, renew_deadline=10, retry_period=2), client.ApiClient())
    lock.api_instance.api = api  # type: ignore[attr-defined]
    return lock


def test_lock_calls_time_out_and_transport_errors_are_a_failed_try() -> None:
    api = FakeLeases("a")
    lock = fenced_lock(api)
    found, record = lock.get("mf", "ns")
    assert found and record.holder_identity == "a" and api.timeouts == [5], "half the renew deadline per try"
    api.down = True
    found, error = lock.get("mf", "ns")
    assert not found and "MaxRetryError" in error.reason


def test_release_clears_the_holder_and_stops_all_writes() -> None:
    api = FakeLeases("a")
    lock = fenced_lock(api)
    lock.release()
    assert [r.spec.holder_identity for r in api.replaced] == [None]
    found, record = lock.get("mf", "ns")
    assert found and not lock.update("mf", "ns", record), "no renewal after release"
    assert len(api.replaced) == 1


def test_release_leaves_a_lease_someone_else_holds() -> None:
    api = FakeLeases("b")
    fenced_lock(api, identity="a").release()
    assert api.replaced == []


class Exited(Exception):
    pass


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> None:
    def exit_(message: str) -> None:
        raise Exited(message)

    monkeypatch.setattr(leader, "_exit", exit_)


@pytest.mark.usefixtures("exits")
def test_a_leader_that_sees_another_holder_exits_at_once() -> None:
    api = FakeLeases("b")
    lock = fenced_lock(api)
    assert lock.get("mf", "ns")[0], "a standby only looks"
    lock.written_at = time.monotonic()
    with pytest.raises(Exited, match="held by b"):
        lock.get("mf", "ns")


def leading_lock() -> tuple[FencedLeaseLock, threading.Event]:
    lock = fenced_lock(FakeLeases("a"))
    lock.written_at = time.monotonic()
    leading = threading.Event()
    leading.set()
    return lock, leading


@pytest.mark.usefixtures("exits")
def test_the_fence_ends_a_leader_that_does_not_renew() -> None:
    lock, leading = leading_lock()
    began = time.monotonic()
    with pytest.raises(Exited, match=r"not renewed for 0\.4s"):
        leader._fence(lock, leading, Lease("mf", "ns", "a", renew_deadline=0.4, retry_period=0.2))
    assert 0.4 < time.monotonic() - began < 1.0


@pytest.mark.usefixtures("exits")
def test_the_fence_ends_a_leader_that_stood_frozen_past_the_deadline_at_its_first_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lock, leading = leading_lock()
    real_sleep, calls = time.sleep, []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        real_sleep(1.0 if len(calls) == 1 else seconds)  # the first tick lasts 1 s: as after SIGSTOP/SIGCONT

    monkeypatch.setattr(leader.time, "sleep", sleep)
    with pytest.raises(Exited):
        leader._fence(lock, leading, Lease("mf", "ns", "a", renew_deadline=0.4, retry_period=0.2))
    assert len(calls) == 1, "it exits on waking, before it could act on a lease a standby may hold"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_standby_answers_the_liveness_probe_and_frees_the_port() -> None:
    port = free_port()
    with standby_liveness(f"http://127.0.0.1:{port}/healthz"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # kopf binds it next
