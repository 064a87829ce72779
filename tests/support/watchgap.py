"""A real watch gap for the operator: its watches resume after a restarted kube-apiserver with a resourceVersion
the new watch cache never had, get 410 Gone, and kopf re-lists; what happened in the gap comes only as that list.

How: SIGSTOP the operator (its watches hold resourceVersions r <= R, the revision now), write one object (the
revision passes R), restart kube-apiserver (its watch caches start at the revision then, > R >= r), run `during()`
while the operator is still stopped, then SIGCONT it. Its streams find their connections gone, re-watch from r,
which the caches refuse as "too old resource version" (410), and kopf lists again ("Restarting the watch-stream"
in its debug log). Objects deleted in `during()` give it no DELETED event. A probe watch from R, taken the same
way, checks that the apiserver really answers 410 (WatchGap.gone).

The apiserver is SIGKILLed by default (down about 3 s): the gap stays under the leader's renew deadline (10 s),
so the same operator process resumes and re-lists. A longer freeze (kill=False: a SIGTERMed apiserver takes about
10 s to exit; or down_for) makes the operator end itself at its next renewal and start again from a fresh list,
which is another path: compare WatchGap.operator_pid with operator.proc.pid afterwards to tell them apart.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.rest import ApiException

from modelfleet.devcluster import DevCluster
from tests.support.kube import Kube
from tests.support.operator import OperatorProcess

MARKER = "modelfleet-watch-gap"


@dataclass(frozen=True)
class WatchGap:
    resource_version: str
    """The revision when the operator stopped: no watch of the operator's is newer."""
    gone: bool
    """Whether a watch resumed from that revision after the gap got 410 Gone, as the operator's watches do."""
    operator_pid: int
    """The operator process that lived through the gap."""


def watch_gap(
    cluster: DevCluster,
    kube: Kube,
    operator: OperatorProcess,
    during: Callable[[], object] = lambda: None,
    down_for: float = 0,
    kill: bool = True,
) -> WatchGap:
    """Stops the operator, restarts kube-apiserver (down for `down_for` s), calls `during()` while the operator is
    still stopped, resumes the operator; returns what a watch from before the gap gets afterwards."""
    deadline = time.monotonic() + 15  # it may be between two runs (it restarts itself after a lost lease)
    while (operator.proc is None or operator.proc.poll() is not None) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert operator.proc is not None and operator.proc.poll() is None, "the operator must run as a local process"
    core = client.CoreV1Api(kube.api_client())
    pid = operator.proc.pid
    os.killpg(pid, signal.SIGSTOP)
    try:
        revision = core.list_namespace(limit=1).metadata.resource_version
        _bump(core)
        cluster.restart("kube-apiserver", down_for=down_for, kill=kill)
        core = client.CoreV1Api(kube.api_client())
        gone = _watch_is_gone(core, revision)
        during()
    finally:
        os.killpg(pid, signal.SIGCONT)
    return WatchGap(revision, gone, pid)


def _bump(core: client.CoreV1Api) -> None:
    """One write, so that the revision moves past every resourceVersion the stopped operator holds."""
    body = {"metadata": {"name": MARKER}, "data": {"at": str(time.time())}}
    try:
        core.replace_namespaced_config_map(MARKER, "default", body)
    except ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespaced_config_map("default", body)


def _watch_is_gone(core: client.CoreV1Api, revision: str, timeout: float = 30) -> bool:
    """Whether a namespaces watch from `revision` (no namespace changes since, so only the cache decides) is
    answered 410 Gone; retries while the new apiserver's cache still initialises (429)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = core.list_namespace(
                watch=True, resource_version=revision, timeout_seconds=2, _preload_content=False, _request_timeout=10
            )
        except ApiException as exc:
            if exc.status == 429 and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            return exc.status == 410
        for line in response:  # one JSON event a line
            event = json.loads(line)
            return event["type"] == "ERROR" and event["object"].get("code") == 410
        return False
