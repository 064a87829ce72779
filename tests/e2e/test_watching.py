"""The operator's lean pod watch (`modelfleet.watching`) on the real control plane: a list first (events of type
None), then live events; after a gap (its loop frozen while the apiserver restarts, then pods change) its resumed
watch gets 410 Gone and it lists again, so what the gap hid comes as that list, as with tests/support/watchgap."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from modelfleet import kube as operator_kube
from modelfleet.devcluster import DevCluster
from modelfleet.watching import Watch
from tests.support.kube import Kube, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kwok]


class Recorder:
    """A Watch run on its own thread and loop; every event it delivers, in order. While `freeze` is set, the
    next event blocks the loop (nothing else the watch does runs) until `thaw`."""

    def __init__(self, namespace: str) -> None:
        self.events: list[tuple[str | None, str]] = []
        self.freeze = threading.Event()
        self.frozen = threading.Event()
        self._thawed = threading.Event()
        self._loop = asyncio.new_event_loop()
        core = operator_kube.core()
        self._watch = Watch("pods", core.list_pod_for_all_namespaces, core.list_namespaced_pod, self._record)
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, args=(namespace,), daemon=True)
        self._thread.start()

    def _run(self, namespace: str) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._watch.run((namespace,)))
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)

    def _record(self, event: dict[str, Any]) -> None:
        if self.freeze.is_set():
            self.freeze.clear()
            self.frozen.set()
            self._thawed.wait(120)
        self.events.append((event["type"], event["object"]["metadata"]["name"]))

    def thaw(self) -> None:
        self._thawed.set()

    def seen(self, kind: str | None, name: str) -> bool:
        return (kind, name) in self.events

    def stop(self) -> None:
        self.thaw()
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout=30)


@pytest.fixture
def operator_client(kube: Kube, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """modelfleet.kube's shared client, for the test cluster."""
    api_client = kube.api_client()
    monkeypatch.setattr(operator_kube, "api", lambda: api_client)
    operator_kube.core.cache_clear()
    yield
    operator_kube.core.cache_clear()


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "example.invalid/none:1"}]},
    }


@pytest.mark.usefixtures("operator_client")
def test_lists_then_watches_and_lists_again_after_a_gap(cluster: DevCluster, kube: Kube, namespace: str) -> None:
    core = client.CoreV1Api(kube.api_client())
    core.create_namespaced_pod(namespace, pod("before"))
    recorder = Recorder(namespace)
    try:
        wait_for(lambda: recorder.seen(None, "before"), timeout=30, what="the listed pod as an event of type None")
        core.create_namespaced_pod(namespace, pod("live"))
        wait_for(lambda: recorder.seen("ADDED", "live"), timeout=30, what="ADDED for a pod created while watching")

        recorder.freeze.set()
        core.create_namespaced_pod(namespace, pod("freezer"))
        wait_for(recorder.frozen.is_set, timeout=30, what="the watch's loop frozen on the next event")
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "bump"}})  # past the last pod version
        cluster.restart("kube-apiserver", kill=True)  # the watch's connection ends; the new cache starts past it
        core = client.CoreV1Api(kube.api_client())
        core.delete_namespaced_pod("live", namespace, grace_period_seconds=0)
        core.create_namespaced_pod(namespace, pod("in-gap"))
        mark = len(recorder.events)
        recorder.thaw()

        def listed_again() -> set[str]:
            return {name for kind, name in recorder.events[mark:] if kind is None}

        wait_for(lambda: "in-gap" in listed_again(), timeout=60, what="a new list after the watch got 410 Gone")
        assert listed_again() == {"before", "freezer", "in-gap"}
        assert not recorder.seen("DELETED", "live"), "the deletion in the gap came as an event: there was no gap"
        core.create_namespaced_pod(namespace, pod("after"))
        wait_for(lambda: recorder.seen("ADDED", "after"), timeout=30, what="live events again after the new list")
    finally:
        recorder.stop()
