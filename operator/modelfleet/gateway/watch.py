"""Watches InferenceServices and their pods in threads (the Kubernetes client is blocking) and hands every
listing and event to the store on the event loop. A broken watch (410 Gone, a dropped connection, an apiserver
restart) is followed by a full re-list, which replaces the store's view, so nothing missed in the gap lingers."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes import watch

from modelfleet import kube
from modelfleet.api.common import GROUP, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL, VERSION
from modelfleet.gateway.store import Store

log = logging.getLogger(__name__)
POD_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},{SERVICE_NAME_LABEL}"
WATCH_SECONDS = 60
RETRY_SECONDS = 1.0


def _lister(kind: str, namespace: str | None) -> Callable[..., Any]:
    if kind == "pods":
        core = kube.core()
        if namespace:
            return lambda **kw: core.list_namespaced_pod(namespace, label_selector=POD_SELECTOR, **kw)
        return lambda **kw: core.list_pod_for_all_namespaces(label_selector=POD_SELECTOR, **kw)
    custom = kube.custom()
    if namespace:
        return lambda **kw: custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "inferenceservices", **kw)
    return lambda **kw: custom.list_cluster_custom_object(GROUP, VERSION, "inferenceservices", **kw)


def _follow(
    kind: str,
    namespace: str | None,
    reset: Callable[[list[dict[str, Any]], str | None], None],
    event: Callable[[str, Mapping[str, Any]], None],
    stop: threading.Event,
) -> None:
    """List, then watch from the listing's version; on any break list again."""
    list_fn = _lister(kind, namespace)
    while not stop.is_set():
        try:
            listing = json.loads(list_fn(_preload_content=False, _request_timeout=kube.REQUEST_TIMEOUT).data)
            reset(listing["items"], namespace)
            version = listing["metadata"]["resourceVersion"]
            while not stop.is_set():
                stream = watch.Watch().stream(
                    list_fn, resource_version=version, timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True
                )
                for change in stream:
                    obj = change["raw_object"]
                    if change["type"] == "ERROR":
                        raise RuntimeError(f"watch error: {obj.get('message')}")
                    version = obj["metadata"]["resourceVersion"]
                    if change["type"] != "BOOKMARK":
                        event(change["type"], obj)
                    if stop.is_set():
                        return
        except Exception as exc:  # any break: log one line, list again
            log.warning("%s watch broke (%s): listing again", kind, str(exc).splitlines()[0][:200])
            stop.wait(RETRY_SECONDS)


def start(store: Store, namespaces: Iterable[str], stop: threading.Event) -> list[threading.Thread]:
    """One thread per kind and namespace (or one per kind cluster-wide); their calls land on the current loop."""
    loop = asyncio.get_running_loop()
    threads = []
    targets = list(namespaces) or [None]
    for kind, reset, event in (
        ("inferenceservices", store.reset_services, store.service_event),
        ("pods", store.reset_pods, store.pod_event),
    ):
        for namespace in targets:
            thread = threading.Thread(
                target=_follow,
                args=(
                    kind, namespace,
                    lambda items, ns, reset=reset: loop.call_soon_threadsafe(reset, items, ns),
                    lambda kind_, obj, event=event: loop.call_soon_threadsafe(event, kind_, obj),
                    stop,
                ),
                name=f"watch-{kind}-{namespace or 'all'}", daemon=True,
            )  # fmt: skip
            thread.start()
            threads.append(thread)
    return threads
