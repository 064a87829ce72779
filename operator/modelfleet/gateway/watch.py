"""The gateway's view of the cluster: InferenceServices and their model server pods, watched on the gateway's event
loop by `modelfleet.watching` (a list, then a watch from its version; a 410 Gone lists again). Each list replaces
the store's view of its namespace (or of all), so nothing a watch gap hid lingers."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable

from modelfleet import kube
from modelfleet.api.common import GROUP, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL, VERSION
from modelfleet.gateway.store import Store
from modelfleet.watching import Watch

POD_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},{SERVICE_NAME_LABEL}"
SERVICES = "inferenceservices"


def watches(store: Store) -> list[Watch]:
    core, custom = kube.core(), kube.custom()
    return [
        Watch(
            SERVICES,
            functools.partial(custom.list_cluster_custom_object, GROUP, VERSION, SERVICES),
            functools.partial(custom.list_namespaced_custom_object, GROUP, VERSION, plural=SERVICES),
            lambda event: store.service_event(event["type"], event["object"]),
            on_list=store.reset_services,
        ),
        Watch(
            "pods",
            functools.partial(core.list_pod_for_all_namespaces, label_selector=POD_SELECTOR),
            functools.partial(core.list_namespaced_pod, label_selector=POD_SELECTOR),
            lambda event: store.pod_event(event["type"], event["object"]),
            on_list=store.reset_pods,
        ),
    ]


def start(store: Store, namespaces: Iterable[str]) -> list[asyncio.Task[None]]:
    """The watches, as tasks on the running loop (cancel them to stop), of `namespaces` (none: the whole cluster)."""
    return [asyncio.create_task(w.run(tuple(namespaces)), name=f"watch-{w.plural}") for w in watches(store)]
