"""A TrainingJob's place in the GPU queue from the cluster's PriorityClasses (scheduling.k8s.io/v1), as the
kube-scheduler reads them for pods: the named class's value, else the globalDefault class's, else 0."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Priority:
    value: int = 0
    may_preempt: bool = True
    """False when the class says preemptionPolicy: Never."""


def slim_priority_class(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": obj.get("metadata", {}).get("name"),
        "value": int(obj.get("value") or 0),
        "globalDefault": bool(obj.get("globalDefault")),
        "preemptionPolicy": obj.get("preemptionPolicy") or "PreemptLowerPriority",
    }


def resolve_priority(name: str | None, classes: Iterable[Mapping[str, Any]]) -> Priority | None:
    """The priority a job with this priorityClassName gets; None when it names a class that does not exist."""
    known = list(classes)
    chosen = next((c for c in known if c["name"] == name), None) if name else None
    if name and chosen is None:
        return None
    chosen = chosen or max((c for c in known if c["globalDefault"]), key=lambda c: c["value"], default=None)
    if chosen is None:
        return Priority()
    return Priority(chosen["value"], chosen["preemptionPolicy"] != "Never")


def default_priority(classes: Iterable[Mapping[str, Any]]) -> int:
    """The value a job without priorityClassName gets: the globalDefault class's, else 0."""
    chosen = resolve_priority(None, classes)
    assert chosen is not None  # only a named class can be missing
    return chosen.value
