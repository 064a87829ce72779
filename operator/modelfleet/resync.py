"""Fresh lists that heal the operator's watch-fed state.

A watch (kopf's, or the pod watch of `modelfleet.watching`) that gets 410 Gone lists again, but an object deleted
during the gap never produces a DELETED event: its node would stay Ready, its pod would hold GPUs, its job's loop
would go on. So the listing after a gap (seen as events of type None) requests a resync here, and one also runs every few minutes:
each store, index (modelfleet.owned) and loop registry is compared with a fresh list and what the list lacks is
dropped. These lists and those of the watches (at their start and after a 410) are the operator's only LISTs: a
reconcile reads the indexes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from modelfleet import kube
from modelfleet.api.common import GROUP, MANAGED_BY, MANAGED_BY_LABEL, VERSION
from modelfleet.capacity import CAPACITY
from modelfleet.loops import ReconcileLoops, key_of
from modelfleet.owned import DEPLOYMENTS, SERVER_PODS, SERVICES, TRAINING_RESULTS, WORKER_PODS
from modelfleet.watching import list_pages

log = logging.getLogger(__name__)
PERIOD = 300.0
SETTLE = 3.0
"""Seconds to let a re-list finish before comparing: kopf yields the listed objects one by one."""


class Resync:
    def __init__(self) -> None:
        self.namespaces: tuple[str, ...] = ()
        """The namespaces the operator watches; empty: the whole cluster."""
        self.loops: dict[str, ReconcileLoops] = {}
        """Loop registries by the plural of their custom resource."""
        self.requested = asyncio.Event()

    def request(self) -> None:
        """Called on every listed object (watch event of type None): a watch listed, maybe after a gap. (The
        first listing of each watch, at start, asks for one needless pass: cheaper than telling them apart.)"""
        self.requested.set()

    async def run(self) -> dict[str, int]:
        """One pass: fresh lists of nodes, pods and each custom resource; returns what was dropped, by kind."""
        started = time.monotonic()
        nodes = await _list_all(kube.core().list_node)
        dropped = {"nodes": CAPACITY.nodes.replace(nodes, started)}
        pod_stores = {"pods": CAPACITY.gpu_pods, "workers": WORKER_PODS, "servers": SERVER_PODS}
        listed: set[str] = set()
        async for page in self._pages(kube.core().list_pod_for_all_namespaces, kube.core().list_namespaced_pod):
            for pod in page:  # each page goes into the stores (slim) and is dropped: whole pods never pile up
                listed.update(store.refresh(pod) for store in pod_stores.values())
        for kind, store in pod_stores.items():
            dropped[kind] = store.drop_unlisted(listed, started)
        CAPACITY.settle(started)
        ours = {"label_selector": f"{MANAGED_BY_LABEL}={MANAGED_BY}"}
        apps, core = kube.apps(), kube.core()
        deployments = await self._list(apps.list_deployment_for_all_namespaces, apps.list_namespaced_deployment, **ours)
        dropped["deployments"] = DEPLOYMENTS.replace(deployments, started)
        services = await self._list(core.list_service_for_all_namespaces, core.list_namespaced_service, **ours)
        dropped["services"] = SERVICES.replace(services, started)
        classes = await _list_all(kube.scheduling().list_priority_class)
        dropped["priorityclasses"] = CAPACITY.priority_classes.replace(classes, started)
        custom = kube.custom()
        for plural, loops in self.loops.items():
            keys, results = set(), set()
            listing = self._pages(
                custom.list_cluster_custom_object,
                custom.list_namespaced_custom_object,
                group=GROUP,
                version=VERSION,
                plural=plural,
            )
            async for page in listing:
                keys.update(key_of(item) for item in page)
                if plural == "trainingjobs":
                    results.update(TRAINING_RESULTS.refresh(item) for item in page)
            dropped[plural] = len(loops.prune(keys, started))
            if plural == "trainingjobs":
                dropped["trainingresults"] = TRAINING_RESULTS.drop_unlisted(results, started)
        quotas = await _list_all(custom.list_cluster_custom_object, group=GROUP, version=VERSION, plural="gpuquotas")
        dropped["gpuquotas"] = CAPACITY.gpu_quotas.replace(quotas, started)
        if any(dropped.values()):
            log.warning("resync dropped what a watch gap hid: %s", dropped)
            for loops in self.loops.values():  # an owner whose child went unseen looks again (it may not resync)
                loops.wake_all()
        return dropped

    async def _list(
        self, cluster_wide: Callable[..., Any], namespaced: Callable[..., Any], **args: str
    ) -> list[dict[str, Any]]:
        return [item async for page in self._pages(cluster_wide, namespaced, **args) for item in page]

    async def _pages(
        self, cluster_wide: Callable[..., Any], namespaced: Callable[..., Any], **args: str
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The watched namespaces' objects (the whole cluster's when none is named), a page at a time."""
        if not self.namespaces:
            async for page in _pages(cluster_wide, **args):
                yield page
        for namespace in self.namespaces:
            async for page in _pages(namespaced, namespace=namespace, **args):
                yield page

    async def keep_healed(self, period: float = PERIOD) -> None:
        """Runs a pass after every re-list and every `period` seconds, for the operator's lifetime."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.requested.wait(), timeout=period)
            await asyncio.sleep(SETTLE)
            self.requested.clear()
            try:
                await self.run()
            except Exception:
                log.exception("resync failed; the next one runs in %.0fs or after the next re-list", period)


async def _list_all(fn: Callable[..., Any], **args: str) -> list[dict[str, Any]]:
    return [item async for page in _pages(fn, **args) for item in page]


async def _pages(fn: Callable[..., Any], **args: str) -> AsyncIterator[list[dict[str, Any]]]:
    async for items, _ in list_pages(fn, **args):
        yield items


RESYNC = Resync()
