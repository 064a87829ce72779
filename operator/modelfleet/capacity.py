"""The operator's view of GPU capacity: watch-fed stores of nodes and GPU pods, plus placements in flight.

The stores heal: kopf re-lists after a watch gap (410 Gone) but emits no deletion for an object that went away
during the gap, so after every re-list (and every few minutes) `resync` compares each store with a fresh list and
drops what the list no longer holds. A ghost node never looks Ready and a deleted pod never holds GPUs for ever.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelfleet.api.common import GANG_ATTEMPT_LABEL
from modelfleet.scheduling.gpus import gpu_type_matches
from modelfleet.scheduling.nodes import NodeInfo, build_view, pod_gpu_request, pod_holds_resources, pod_node
from modelfleet.scheduling.priority import slim_priority_class
from modelfleet.scheduling.quota import slim_gpu_quota

Slim = Callable[[Mapping[str, Any]], dict[str, Any] | None]
Owner = Callable[[Mapping[str, Any]], Hashable | None]


def slim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """Only what capacity accounting needs, to keep the store small."""
    containers = [{"resources": c.get("resources") or {}} for c in pod.get("spec", {}).get("containers", [])]
    spec = {"containers": containers}
    if node := pod_node(pod):
        spec["nodeName"] = node
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
    }


def gpu_pod(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The slim pod when it is live, holds GPUs and has a node (bound or pinned); else None (not stored)."""
    if pod_node(pod) and pod_holds_resources(pod) and pod_gpu_request(pod) > 0:
        return slim_pod(pod)
    return None


def plain_node(node: Mapping[str, Any]) -> dict[str, Any]:
    return {key: dict(node.get(key) or {}) for key in ("metadata", "spec", "status")}


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
        present = set()
        for obj in listed:
            uid = obj["metadata"]["uid"]
            present.add(uid)
            known = self.entries.get(uid)
            if known is None or _version(obj) >= known[1]:
                self.apply_event(obj)
        stale = [uid for uid, (_, _, seen) in self.entries.items() if uid not in present and seen < listed_at]
        for uid in stale:
            self._drop(uid)
        return len(stale)

    def values(self) -> list[dict[str, Any]]:
        return [value for value, _, _ in self.entries.values()]

    def owned_by(self, key: Hashable) -> list[dict[str, Any]]:
        """The slim values of the objects this owner key indexes (no API request)."""
        return [self.entries[uid][0] for uid in self.by_owner.get(key, ())]

    def mark_deleting(self, uids: Iterable[str], gone: bool = False) -> None:
        """What a pass just deleted, before the watch says so: stopping (gone: removed at once, as a pod deleted
        with no grace period), so the next pass neither counts it live nor deletes it again."""
        for uid in uids:
            if gone:
                self._drop(uid)
            elif known := self.entries.get(uid):
                value, version, seen = known
                meta = {**value["metadata"], "deletionTimestamp": value["metadata"].get("deletionTimestamp") or _now()}
                self.entries[uid] = ({**value, "metadata": meta}, version, seen)

    def _drop(self, uid: str) -> None:
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


@dataclass
class CapacityStore:
    nodes: ObjectStore = field(default_factory=lambda: ObjectStore(plain_node))
    gpu_pods: ObjectStore = field(default_factory=lambda: ObjectStore(gpu_pod))
    reservations: dict[tuple[str, str, str | None], tuple[dict[str, Any], float]] = field(default_factory=dict)
    priority_classes: ObjectStore = field(default_factory=lambda: ObjectStore(slim_priority_class))
    gpu_quotas: ObjectStore = field(default_factory=lambda: ObjectStore(slim_gpu_quota))

    def reserve(self, pods: Iterable[dict[str, Any]]) -> None:
        """Counts pods being created until the watch delivers them, so two plans never share GPUs. Called again
        with the created pods once the API has them: a reservation remembers when its pod was last known to exist.

        No timer ends a reservation: a busy operator's pod watch can lag a minute behind its own creates (at 1,000
        jobs a 60 s timer handed the same GPUs out twice). The watch, a delete (`release`) or a fresh list that
        started after the pod existed (`settle`) ends it."""
        now = time.monotonic()
        for pod in pods:
            self.reservations[reservation_key(pod)] = (slim_pod(pod), now)

    def release(self, namespace: str, names: Iterable[str]) -> None:
        """Drops the reservations of these pods, whatever their attempt (they were deleted or never made)."""
        doomed = {(namespace, name) for name in names}
        for key in [k for k in self.reservations if k[:2] in doomed]:
            del self.reservations[key]

    def pod_event(self, pod: Mapping[str, Any], deleted: bool = False) -> None:
        """A watch event of any pod: the store takes it, and a reservation for it ends whatever its state (a pod that
        finished before the watch saw it hold GPUs never enters the store, and must not stay reserved)."""
        self.gpu_pods.apply_event(pod, deleted=deleted)
        if pod.get("metadata", {}).get("namespace"):
            self.reservations.pop(reservation_key(pod), None)

    def settle(self, listed_at: float) -> int:
        """After `gpu_pods` took a fresh list that started at `listed_at`: a pod reserved before it is in the store
        now if it exists at all, so its reservation goes. Returns how many went."""
        stale = [key for key, (_, made) in self.reservations.items() if made < listed_at]
        for key in stale:
            del self.reservations[key]
        return len(stale)

    def view(self) -> list[NodeInfo]:
        indexed = self.gpu_pods.values()
        seen = {reservation_key(p) for p in indexed}
        for key in [k for k in self.reservations if k in seen]:
            del self.reservations[key]
        pending = [pod for pod, _ in self.reservations.values()]
        return build_view(self.nodes.values(), [*indexed, *pending], datetime.now(UTC))

    def freeing(self) -> dict[str, int]:
        """GPUs per node held by pods that are stopping (deleted, not yet gone): free soon."""
        held: dict[str, int] = {}
        for pod in self.gpu_pods.values():
            if pod["metadata"].get("deleting") and (node := pod_node(pod)):
                held[node] = held.get(node, 0) + pod_gpu_request(pod)
        return held

    def gpu_products(self, wanted: str) -> list[str]:
        """The product labels in the cluster that a requested GPU type matches."""
        return sorted(
            {n.gpu_type for n in self.nodes_by_name().values() if n.gpu_type and gpu_type_matches(n.gpu_type, wanted)}
        )

    def nodes_by_name(self) -> dict[str, NodeInfo]:
        return {n.name: n for n in build_view(self.nodes.values(), [], datetime.now(UTC))}


CAPACITY = CapacityStore()
