"""The operator's view of GPU capacity: watch-fed stores of nodes and GPU pods, plus placements in flight.

The stores heal: kopf re-lists after a watch gap (410 Gone) but emits no deletion for an object that went away
during the gap, so after every re-list (and every few minutes) `resync` compares each store with a fresh list and
drops what the list no longer holds. A ghost node never looks Ready and a deleted pod never holds GPUs for ever.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from modelfleet.api.common import GANG_ATTEMPT_LABEL
from modelfleet.loops import shared_strings
from modelfleet.scheduling.gpus import gpu_type_matches
from modelfleet.scheduling.nodes import (
    NodeInfo,
    build_view,
    node_is_ready,
    pod_gpu_request,
    pod_holds_resources,
    pod_node,
)
from modelfleet.scheduling.priority import slim_priority_class
from modelfleet.scheduling.quota import slim_gpu_quota

Slim = Callable[[Mapping[str, Any]], dict[str, Any] | None]
Owner = Callable[[Mapping[str, Any]], Hashable | None]


def slim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """Only what capacity accounting needs, to keep the store small: its node (bound or pinned) and the GPUs it
    requests (`gpus`), counted once instead of on every view."""
    spec = {"nodeName": node} if (node := pod_node(pod)) else {}
    meta = pod.get("metadata", {})
    attempt = (meta.get("labels") or {}).get(GANG_ATTEMPT_LABEL)
    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "attempt": attempt,
            "deleting": bool(meta.get("deletionTimestamp")),
        },
        "spec": spec,
        "status": {"phase": pod.get("status", {}).get("phase")},
        "gpus": pod_gpu_request(pod),
    }


def gpu_pod(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The slim pod when it is live, holds GPUs and has a node (bound or pinned); else None (not stored)."""
    if pod_node(pod) and pod_holds_resources(pod) and pod_gpu_request(pod) > 0:
        return shared_strings(slim_pod(pod))  # 1.2 -> 1.0 KB a pod
    return None


def held_by(pod: Mapping[str, Any] | None) -> tuple[str | None, int, bool] | None:
    """What a stored GPU pod means for capacity: its node, its GPUs, whether it is stopping (None: not stored)."""
    return None if pod is None else (pod_node(pod), pod["gpus"], pod["metadata"]["deleting"])


def slim_node(node: Mapping[str, Any]) -> dict[str, Any]:
    """What the node view reads (`build_view`): name, labels, deletion, schedulability, taints, allocatable GPUs and
    the Ready condition; not managedFields, images or the other conditions."""
    meta, spec, status = (node.get(key) or {} for key in ("metadata", "spec", "status"))
    return {
        "metadata": {key: meta[key] for key in ("name", "labels", "deletionTimestamp") if key in meta},
        "spec": {key: spec[key] for key in ("unschedulable", "taints") if key in spec},
        "status": {
            "allocatable": dict(status.get("allocatable") or {}),
            "conditions": [c for c in status.get("conditions") or [] if c.get("type") == "Ready"],
        },
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version(obj: Mapping[str, Any]) -> int:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class ObjectStore:
    """One kind of object by uid, fed by watch events, pruned against a fresh list after a watch gap.

    With `owner` (a function of the slim value), it is also indexed by owner, so a reconcile reads its object's
    children from memory instead of listing them."""

    def __init__(self, slim: Slim, owner: Owner | None = None) -> None:
        self.slim = slim
        self.owner = owner
        self.entries: dict[str, tuple[dict[str, Any], int, float]] = {}
        """uid -> (slim value, resourceVersion, when it was last seen: monotonic)."""
        self.by_owner: dict[Hashable, set[str]] = {}
        """owner key -> uids, when the store has an `owner`."""
        self.changes = 0
        """Counts every change of the entries, so what is computed from them can be kept until the next."""

    def apply_event(self, obj: Mapping[str, Any], deleted: bool = False) -> None:
        """Takes a watch event's object, or the API's answer to one of the operator's own writes: an answer the
        watch has already overtaken (an older resourceVersion) is ignored, so it never hides a newer state."""
        uid = obj.get("metadata", {}).get("uid")
        if not uid:
            return
        known, version = self.entries.get(uid), _version(obj)
        if not deleted and known is not None and 0 < version < known[1]:
            return
        value = None if deleted else self.slim(obj)
        self.changes += 1
        if value is None:
            self._drop(uid)
        else:
            self._unindex(uid)
            self.entries[uid] = (value, _version(obj), time.monotonic())
            if self.owner and (key := self.owner(value)) is not None:
                self.by_owner.setdefault(key, set()).add(uid)

    def replace(self, listed: Iterable[Mapping[str, Any]], listed_at: float) -> int:
        """Takes a fresh list made at `listed_at`: adds or updates what it holds (unless the watch already brought
        a newer version) and drops what it lacks (unless a watch event came after the list started).
        Returns how many entries were dropped."""
        return self.drop_unlisted({self.refresh(obj) for obj in listed}, listed_at)

    def refresh(self, obj: Mapping[str, Any]) -> str:
        """Takes one object of a fresh list, unless the watch already brought a newer version; returns its uid.
        (A list taken page by page: no page needs to outlive its turn.)"""
        uid = obj["metadata"]["uid"]
        known = self.entries.get(uid)
        if known is None or _version(obj) >= known[1]:
            self.apply_event(obj)
        return uid

    def drop_unlisted(self, present: Collection[str], listed_at: float) -> int:
        """After a fresh list made at `listed_at` held the uids `present`: drops what it lacked, unless a watch
        event came after the list started. Returns how many entries were dropped."""
        stale = [uid for uid, (_, _, seen) in self.entries.items() if uid not in present and seen < listed_at]
        for uid in stale:
            self._drop(uid)
        return len(stale)

    def values(self) -> list[dict[str, Any]]:
        return [value for value, _, _ in self.entries.values()]

    def get(self, uid: str) -> dict[str, Any] | None:
        known = self.entries.get(uid)
        return known[0] if known else None

    def owned_by(self, key: Hashable) -> list[dict[str, Any]]:
        """The slim values of the objects this owner key indexes (no API request)."""
        return [self.entries[uid][0] for uid in self.by_owner.get(key, ())]

    def mark_deleting(self, uids: Iterable[str], gone: bool = False) -> None:
        """What a pass just deleted, before the watch says so: stopping (gone: removed at once, as a pod deleted
        with no grace period), so the next pass neither counts it live nor deletes it again."""
        for uid in uids:
            self.changes += 1
            if gone:
                self._drop(uid)
            elif known := self.entries.get(uid):
                value, version, seen = known
                meta = {**value["metadata"], "deletionTimestamp": value["metadata"].get("deletionTimestamp") or _now()}
                self.entries[uid] = ({**value, "metadata": meta}, version, seen)

    def _drop(self, uid: str) -> None:
        self.changes += 1
        self._unindex(uid)
        self.entries.pop(uid, None)

    def _unindex(self, uid: str) -> None:
        if self.owner and (known := self.entries.get(uid)) and (key := self.owner(known[0])) is not None:
            uids = self.by_owner.get(key)
            if uids is not None:
                uids.discard(uid)
                if not uids:
                    del self.by_owner[key]


def reservation_key(pod: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """Namespace, name and gang attempt: an old pod of the same name never stands for a new one."""
    meta = pod["metadata"]
    attempt = meta.get("attempt", (meta.get("labels") or {}).get(GANG_ATTEMPT_LABEL))
    return meta["namespace"], meta["name"], attempt


NODE_VIEW_SECONDS = 1.0
"""How long the nodes' view is reused while no node changes: a NotReady node counts as ready for a grace period,
so the view also depends on the time."""


@dataclass
class CapacityStore:
    nodes: ObjectStore = field(default_factory=lambda: ObjectStore(slim_node))
    gpu_pods: ObjectStore = field(default_factory=lambda: ObjectStore(gpu_pod, owner=pod_node))
    """Indexed by node."""
    reservations: dict[tuple[str, str, str | None], tuple[dict[str, Any], float]] = field(default_factory=dict)
    claims: dict[str, dict[str, int]] = field(default_factory=dict)
    """GPUs per node held for an admitted gang (by job uid) from its plan's check until its pods are reserved:
    a gang waiting for a placement slot keeps what the queue planned it on."""
    priority_classes: ObjectStore = field(default_factory=lambda: ObjectStore(slim_priority_class))
    gpu_quotas: ObjectStore = field(default_factory=lambda: ObjectStore(slim_gpu_quota))
    _nodes_view: tuple[int, float, dict[str, NodeInfo]] = field(default=(-1, 0.0, {}), init=False, repr=False)
    _timeless: dict[str, tuple[int, NodeInfo]] = field(default_factory=dict, init=False, repr=False)
    """Node uid -> (resourceVersion, NodeInfo) of the nodes whose NodeInfo the time does not change (Ready, or not
    Ready past the grace period): rebuilt only when the node changes."""

    def reserve(self, pods: Iterable[dict[str, Any]]) -> None:
        """Counts pods being created until the watch delivers them, so two plans never share GPUs. Called again
        with the created pods once the API has them: a reservation remembers when its pod was last known to exist.

        No timer ends a reservation: a busy operator's pod watch can lag a minute behind its own creates (at 1,000
        jobs a 60 s timer handed the same GPUs out twice). The watch, a delete (`release`) or a fresh list that
        started after the pod existed (`settle`) ends it."""
        now = time.monotonic()
        for pod in pods:
            self.reservations[reservation_key(pod)] = (slim_pod(pod), now)

    def claim(self, owner: str, gpus: Mapping[str, int]) -> None:
        """Holds these GPUs for a gang about to be placed; no list or timer ends a claim, only `unclaim`."""
        self.claims[owner] = dict(gpus)

    def unclaim(self, owner: str) -> None:
        self.claims.pop(owner, None)

    def release(self, namespace: str, names: Iterable[str]) -> None:
        """Drops the reservations of these pods, whatever their attempt (they were deleted or never made)."""
        doomed = {(namespace, name) for name in names}
        for key in [k for k in self.reservations if k[:2] in doomed]:
            del self.reservations[key]

    def pod_event(self, pod: Mapping[str, Any], deleted: bool = False) -> bool:
        """A watch event of any pod: the store takes it, and a reservation for it ends whatever its state (a pod that
        finished before the watch saw it hold GPUs never enters the store, and must not stay reserved).

        Returns whether the GPUs held or being freed changed (a pod came, went, moved or began stopping): a pod
        that only went from Pending to Running, or a placed pod the watch delivers, is no news to the GPU queue."""
        uid = pod.get("metadata", {}).get("uid") or ""
        before = held_by(self.gpu_pods.get(uid))
        self.gpu_pods.apply_event(pod, deleted=deleted)
        if pod.get("metadata", {}).get("namespace") and (reserved := self.reservations.pop(reservation_key(pod), None)):
            before = before or held_by(reserved[0])  # the watch delivering a placed pod changes nothing
        return held_by(self.gpu_pods.get(uid)) != before

    def settle(self, listed_at: float) -> int:
        """After `gpu_pods` took a fresh list that started at `listed_at`: a pod reserved before it is in the store
        now if it exists at all, so its reservation goes. Returns how many went."""
        stale = [key for key, (_, made) in self.reservations.items() if made < listed_at]
        for key in stale:
            del self.reservations[key]
        return len(stale)

    def view(self) -> list[NodeInfo]:
        """Every node, its free GPUs net of the stored GPU pods, the reservations and the claims."""
        held = self.held_gpus()
        return [
            replace(info, free_gpus=max(0, info.gpus - held[name])) if name in held else info
            for name, info in self.nodes_by_name().items()
        ]

    def free_gpus(self, names: Collection[str]) -> dict[str, int]:
        """Free GPUs on those of these nodes that are Ready and schedulable (as `view` counts them, for a few
        nodes: a placement's check, which must not cost a whole-cluster view per gang)."""
        nodes = self.nodes_by_name()
        usable = [n for n in names if (info := nodes.get(n)) and info.ready and not info.unschedulable]
        held = self.held_gpus(usable)
        return {n: max(0, nodes[n].gpus - held.get(n, 0)) for n in usable}

    def held_gpus(self, names: Collection[str] | None = None) -> dict[str, int]:
        """GPUs held per node (of `names`, else all) by the stored GPU pods, the reservations the watch has not
        delivered yet and the claims of gangs about to be placed; a reservation whose pod the store holds is
        dropped."""
        held: dict[str, int] = {}
        stored = set()
        groups = (
            self.gpu_pods.by_owner.items() if names is None else ((n, self.gpu_pods.by_owner.get(n, ())) for n in names)
        )
        for node, uids in groups:
            for uid in uids:
                pod = self.gpu_pods.entries[uid][0]
                stored.add(reservation_key(pod))
                held[node] = held.get(node, 0) + pod["gpus"]
        for key in [k for k in self.reservations if k in stored]:
            del self.reservations[key]
        for pod, _ in self.reservations.values():
            if (node := pod_node(pod)) and (names is None or node in names):
                held[node] = held.get(node, 0) + pod["gpus"]
        for claimed in self.claims.values():
            for node, gpus in claimed.items():
                if names is None or node in names:
                    held[node] = held.get(node, 0) + gpus
        return held

    def freeing(self) -> dict[str, int]:
        """GPUs per node held by pods that are stopping (deleted, not yet gone): free soon."""
        held: dict[str, int] = {}
        for pod in self.gpu_pods.values():
            if pod["metadata"].get("deleting") and (node := pod_node(pod)):
                held[node] = held.get(node, 0) + pod["gpus"]
        return held

    def gpu_products(self, wanted: str) -> list[str]:
        """The product labels in the cluster that a requested GPU type matches."""
        return sorted(
            {n.gpu_type for n in self.nodes_by_name().values() if n.gpu_type and gpu_type_matches(n.gpu_type, wanted)}
        )

    def nodes_by_name(self) -> dict[str, NodeInfo]:
        """Every node by name, all its GPUs free (read-only: it is reused until a node changes, for at most
        NODE_VIEW_SECONDS: every reconcile reads it). Made again, only the nodes that changed are read again (node
        status reports change one node at a time, a few every second at 500 nodes)."""
        changes, made, view = self._nodes_view
        now = time.monotonic()
        if changes != self.nodes.changes or now - made > NODE_VIEW_SECONDS:
            view = self._build_nodes_view(datetime.now(UTC))
            self._nodes_view = (self.nodes.changes, now, view)
        return view

    def _build_nodes_view(self, at: datetime) -> dict[str, NodeInfo]:
        view, timeless = {}, {}
        for uid, (node, version, _) in self.nodes.entries.items():
            known = self._timeless.get(uid)
            if known is not None and known[0] == version:
                info = known[1]
            else:
                info = build_view([node], [], at)[0]
                # Ready, or not Ready past its grace: the same at any time (a node within its grace is made anew)
                known = (version, info) if info.ready == node_is_ready(node) else None
            if known is not None:
                timeless[uid] = known
            view[info.name] = info
        self._timeless = timeless
        return view


CAPACITY = CapacityStore()
