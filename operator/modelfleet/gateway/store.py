"""What the gateway knows of the cluster: InferenceServices (model name, regions, target) and their ready replicas,
fed by the watch thread through `loop.call_soon_threadsafe`, so only the event loop ever touches it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from modelfleet.api.common import REGION_NAME_LABEL, SERVICE_NAME_LABEL
from modelfleet.api.inference import InferenceServiceSpec, ScaleMetric
from modelfleet.pods import pod_ready

ServiceKey = tuple[str, str]
"""(namespace, name) of an InferenceService."""


@dataclass(frozen=True)
class ServiceInfo:
    namespace: str
    name: str
    model: str
    regions: tuple[str, ...]
    target: float | None
    """In-flight requests per replica the service autoscales to; None when it scales on another metric."""
    created: str

    @property
    def key(self) -> ServiceKey:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Replica:
    namespace: str
    service: str
    region: str
    pod: str
    address: str
    """host:port of the model server."""


def service_info(obj: Mapping[str, Any]) -> ServiceInfo | None:
    """None for a spec the gateway cannot read (the operator reports it)."""
    meta = obj["metadata"]
    try:
        spec = InferenceServiceSpec.model_validate(obj.get("spec") or {})
    except ValidationError:
        return None
    scaling = spec.autoscaling
    target = scaling.target if scaling.enabled and scaling.metric == ScaleMetric.CONCURRENCY else None
    return ServiceInfo(
        namespace=meta["namespace"],
        name=meta["name"],
        model=spec.model.name or meta["name"],
        regions=tuple(r.name for r in spec.regions),
        target=target,
        created=meta.get("creationTimestamp") or "",
    )


def replica_of(pod: Mapping[str, Any]) -> Replica | None:
    """The serving replica a pod is, when it is ready and has an address and an http port."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    labels = meta.get("labels") or {}
    if not pod_ready(pod) or not status.get("podIP") or SERVICE_NAME_LABEL not in labels:
        return None
    ports = [p for c in spec.get("containers") or [] for p in c.get("ports") or [] if p.get("name") == "http"]
    if not ports or REGION_NAME_LABEL not in labels:
        return None
    host = status["podIP"]
    host = f"[{host}]" if ":" in host else host
    return Replica(
        meta["namespace"], labels[SERVICE_NAME_LABEL], labels[REGION_NAME_LABEL], meta["name"],
        f"{host}:{ports[0]['containerPort']}",
    )  # fmt: skip


class Store:
    def __init__(self, namespaces: Iterable[str] = ()) -> None:
        self.namespaces = frozenset(namespaces)
        self.services: dict[ServiceKey, ServiceInfo] = {}
        self.replicas: dict[tuple[str, str], Replica] = {}
        """(namespace, pod) -> replica."""
        self.listeners: list[Callable[[ServiceKey], None]] = []
        self.synced = {"services": False, "pods": False}
        self._by_model: dict[str, ServiceInfo] | None = None
        """model name -> service, derived from `services` on first use after a change."""

    def _watched(self, namespace: str) -> bool:
        return not self.namespaces or namespace in self.namespaces

    def _changed(self, keys: Iterable[ServiceKey]) -> None:
        for key in set(keys):
            for listener in self.listeners:
                listener(key)

    def service_for_model(self, model: str) -> ServiceInfo | None:
        """The service serving `model`; when several do, the oldest (so a newcomer cannot take a name over)."""
        if self._by_model is None:
            by_model: dict[str, ServiceInfo] = {}
            for info in sorted(self.services.values(), key=lambda s: (s.created, s.namespace, s.name), reverse=True):
                by_model[info.model] = info
            self._by_model = by_model
        return self._by_model.get(model)

    def replicas_of(self, key: ServiceKey) -> list[Replica]:
        return [r for r in self.replicas.values() if (r.namespace, r.service) == key]

    def reset_services(self, objects: Iterable[Mapping[str, Any]], namespace: str | None = None) -> None:
        """A full listing of `namespace` (None: all): replaces what was known there, so changes a watch break
        hid are covered."""
        before = set(self.services)
        kept = {k: s for k, s in self.services.items() if namespace is not None and k[0] != namespace}
        infos = [i for o in objects if (i := service_info(o)) and self._watched(i.namespace)]
        self.services = {**kept, **{i.key: i for i in infos}}
        self._by_model = None
        self.synced["services"] = True
        self._changed(before | set(self.services))

    def service_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        info = service_info(obj) if kind != "DELETED" and self._watched(key[0]) else None
        if info is None:
            self.services.pop(key, None)
        else:
            self.services[key] = info
        self._by_model = None
        self._changed([key])

    def reset_pods(self, pods: Iterable[Mapping[str, Any]], namespace: str | None = None) -> None:
        before = {(r.namespace, r.service) for r in self.replicas.values()}
        kept = {k: r for k, r in self.replicas.items() if namespace is not None and k[0] != namespace}
        replicas = [r for p in pods if (r := replica_of(p)) and self._watched(r.namespace)]
        self.replicas = {**kept, **{(r.namespace, r.pod): r for r in replicas}}
        self.synced["pods"] = True
        self._changed(before | {(r.namespace, r.service) for r in replicas})

    def pod_event(self, kind: str, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        old = self.replicas.pop(key, None)
        new = replica_of(pod) if kind != "DELETED" and self._watched(key[0]) else None
        if new is not None:
            self.replicas[key] = new
        if old != new:
            self._changed({(r.namespace, r.service) for r in (old, new) if r is not None})
