"""The operator process: kopf settings, the shared indexes, and every resource's handlers.

Run it with `modelfleet operator` (or `kopf run -m modelfleet.main --all-namespaces`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import os
import socket
from typing import Any

import kopf
import prometheus_client

from modelfleet import kube
from modelfleet.api.common import GROUP, VERSION
from modelfleet.capacity import CAPACITY
from modelfleet.contract import OPERATOR_METRICS_PORT_ENV, OPERATOR_WORKERS_ENV
from modelfleet.inference import handlers as inference
from modelfleet.inference.load_sources import close_shared_session
from modelfleet.leader import default_identity
from modelfleet.loops import counts_watch_events
from modelfleet.resync import RESYNC
from modelfleet.scheduling.nodes import node_is_ready
from modelfleet.training import handlers as training
from modelfleet.training.queueing import QUEUE
from modelfleet.watch_json import use_orjson
from modelfleet.watching import Watch

__all__ = ["inference", "training"]
log = logging.getLogger(__name__)
IDLE_WORKER_SECONDS = 0.5
"""How long kopf keeps an object's event worker after its last event (its default: 5 s). An idle worker holds
that event's whole object, managedFields and all: at 1,000 jobs, over a thousand pods and jobs at a time."""
GC_THRESHOLDS = (20_000, 10, 10)
"""Young collections every 20,000 new containers, not Python's 700: in a profiled 1,000-job run the defaults made
~11,000 young and ~90 full collections (~0.45 s each), 79 s inside collections by 107 CPU-seconds. Objects that live
a little (an event, a response, a pass) now mostly die before a collection, so few reach the old generation and
full collections stay rare. A higher threshold saves nothing: kopf's body wrapper holds each watch event's object
in a reference cycle, so every event's object waits for a young collection, and at 100,000 each one took ~88 ms
(2.7 s in all, as at 20,000)."""
WORKERS = 16
"""Threads for the blocking API client: 16 calls in flight keep a 2-core operator busy; more cost stacks and
memory arenas, not throughput."""


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: every handler here is an event handler, and none reads a diff, yet kopf builds one per event,
    a deep copy of the whole object (a tenth of the operator's CPU at 1,000 jobs). Nothing is built or kept."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # Normal events are posted explicitly with kopf.event
    settings.posting.reporting_component = "modelfleet"  # the "From" of `kubectl describe` (kopf's default: kopf)
    settings.posting.reporting_instance = default_identity(os.environ, socket.gethostname(), os.getpid())
    # A watch lasts a minute and a silent connection is dropped after 90 s, so a vanished apiserver is noticed.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.persistence.diffbase_storage = NoDiffBase()
    if not use_orjson():  # kopf's watches decode with the stdlib's json: slower, nothing else
        log.warning("kopf no longer decodes watch events through its api module's json: orjson not used")
    settings.queueing.idle_timeout = IDLE_WORKER_SECONDS
    settings.execution.max_workers = int(os.environ.get(OPERATOR_WORKERS_ENV, str(WORKERS)))
    if port := int(os.environ.get(OPERATOR_METRICS_PORT_ENV, "0")):
        prometheus_client.start_http_server(port)
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=settings.execution.max_workers)
    )
    RESYNC.loops = {training.PLURAL: training.LOOPS, inference.PLURAL: inference.LOOPS}
    await RESYNC.run()  # nodes and GPU pods known before the first placement
    gc.freeze()  # what start-up made (modules, the client's models) is never garbage: no collection walks it again
    gc.set_threshold(*GC_THRESHOLDS)
    memo.resync_task = asyncio.create_task(RESYNC.keep_healed(), name="resync")
    core = kube.core()
    pods = Watch("pods", core.list_pod_for_all_namespaces, core.list_namespaced_pod, pod_event)
    memo.pod_watch_task = asyncio.create_task(pods.run(RESYNC.namespaces), name="pod-watch")
    memo.queue_task = asyncio.create_task(QUEUE.run(), name="gpu-queue")


@kopf.on.cleanup()
async def stop_loops(memo: kopf.Memo, **_: Any) -> None:
    for name in ("resync_task", "queue_task", "pod_watch_task"):
        if task := memo.get(name):
            task.cancel()
    training.LOOPS.stop()
    inference.LOOPS.stop()
    await close_shared_session()


@kopf.on.event("", "v1", "nodes")
@counts_watch_events
async def node_event(event: dict[str, Any], **_: Any) -> None:
    """Keeps the node store, and wakes every job when a node goes away or not ready."""
    node = event["object"]
    if event.get("type") is None:
        RESYNC.request()
    deleted = event.get("type") == "DELETED"
    CAPACITY.nodes.apply_event(node, deleted=deleted)
    QUEUE.request()
    if deleted or not node_is_ready(node):
        training.LOOPS.wake_all()


def pod_event(event: dict[str, Any]) -> None:
    """Keeps the store of pods that hold GPUs (anyone's: the capacity they hold is not free), with a GPU queue pass
    only when the GPUs held or being freed changed; then the index of workers or model servers, if it is one.

    Pods, most of the operator's watch events, come from a lean watch (`modelfleet.watching`), not kopf's. The
    loops' tasks are started from kopf's handlers (TrainingJobs, InferenceServices), whose context kopf.event needs:
    a handler called here wakes loops and fills indexes, and starts no task."""
    pod, deleted = event["object"], event.get("type") == "DELETED"
    if event.get("type") is None:
        RESYNC.request()
    if CAPACITY.pod_event(pod, deleted=deleted):
        QUEUE.request()
    labels = pod["metadata"].get("labels") or {}
    if training.is_worker(labels):
        training.worker_changed(pod, deleted)
    elif inference.is_server(labels):
        inference.server_changed(pod, deleted)


@kopf.on.event(GROUP, VERSION, training.PLURAL)
@counts_watch_events
async def training_job_event(event: dict[str, Any], **_: Any) -> None:
    """Every TrainingJob event: its loop, and the services that serve its artifact."""
    job, deleted = event["object"], event.get("type") == "DELETED"
    if event.get("type") is None:
        RESYNC.request()
    training.job_changed(job, deleted)
    inference.training_job_changed(job, deleted)
