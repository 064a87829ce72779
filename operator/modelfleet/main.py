"""The operator process: kopf settings, the shared indexes, and every resource's handlers.

Run it with `modelfleet operator` (or `kopf run -m modelfleet.main --all-namespaces`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from typing import Any

import kopf
import prometheus_client

from modelfleet.cluster_state import CLUSTER, gpu_pod_entry
from modelfleet.inference import handlers as inference
from modelfleet.scheduling.cluster import node_is_ready
from modelfleet.training import handlers as training

__all__ = ["inference", "training"]


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # Normal events are posted explicitly with kopf.event
    settings.watching.server_timeout = 300
    settings.execution.max_workers = int(os.environ.get("MODELFLEET_WORKERS", "64"))
    if port := int(os.environ.get("MODELFLEET_METRICS_PORT", "0")):
        prometheus_client.start_http_server(port)
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=settings.execution.max_workers)
    )


@kopf.on.cleanup()
async def stop_loops(**_: Any) -> None:
    training.LOOPS.stop()
    inference.LOOPS.stop()


@kopf.index("", "v1", "nodes")
async def node_index(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {name: {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}}


@kopf.index("", "v1", "pods")
async def gpu_pod_index(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return gpu_pod_entry({"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)})


@kopf.on.event("", "v1", "nodes")
async def node_event(event: dict[str, Any], node_index: kopf.Index, gpu_pod_index: kopf.Index, **_: Any) -> None:
    """Binds the indexes for the reconcile loops, and wakes every job when a node goes away or not ready."""
    CLUSTER.bind(node_index, gpu_pod_index)
    if event.get("type") == "DELETED" or not node_is_ready(event["object"]):
        training.LOOPS.wake_all()
