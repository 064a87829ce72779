"""Per-namespace GPU quotas (GPUQuota objects) as the GPU queue applies them. Pure.

A namespace without a GPUQuota is unlimited. One with a quota holds at most `gpus` GPUs in all and at most
`gpusPerType[T]` GPUs on nodes of type T. With `borrowing` it may go over a limit by what the other quotas with
that limit leave idle (their limits less what their namespaces hold: a namespace above its own limit lowers it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from modelfleet.api.quota import GPUQuotaSpec
from modelfleet.scheduling.gpus import gpu_type_matches

ANY = ""
"""The limit key of `gpus`: GPUs of every type."""


@dataclass(frozen=True)
class Quota:
    limits: Mapping[str, int]
    """GPU type (ANY: all types) -> GPUs."""
    borrowing: bool = False


def slim_gpu_quota(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The quota of the namespace the object is named after; None for a spec the API server should have refused."""
    try:
        spec = GPUQuotaSpec.model_validate(obj.get("spec") or {})
    except ValidationError:
        return None
    limits = dict(spec.gpus_per_type)
    if spec.gpus is not None:
        limits[ANY] = spec.gpus
    return {"namespace": obj.get("metadata", {}).get("name"), "limits": limits, "borrowing": spec.borrowing}


def quotas_by_namespace(slims: Iterable[Mapping[str, Any]]) -> dict[str, Quota]:
    return {s["namespace"]: Quota(s["limits"], s["borrowing"]) for s in slims}


def _label(key: str) -> str:
    return "" if key == ANY else f"{key} "


class Ledger:
    """What each namespace with a quota holds, per limit, as one planning pass admits and stops gangs."""

    def __init__(self, quotas: Mapping[str, Quota], gpu_types: Mapping[str, str | None]) -> None:
        self.quotas = quotas
        self.gpu_types = gpu_types
        """Node name -> GPU product label."""
        self.used: dict[str, dict[str, int]] = {ns: dict.fromkeys(q.limits, 0) for ns, q in quotas.items()}
        self.claimed: dict[str, dict[str, int]] = {ns: dict.fromkeys(q.limits, 0) for ns, q in quotas.items()}
        """What waiting gangs within their own quota will need: not idle, so not lent."""

    def count(self, namespace: str, held: Mapping[str, int]) -> dict[str, int]:
        """GPUs per node, counted against each of the namespace's limits."""
        quota = self.quotas.get(namespace)
        if quota is None:
            return {}
        return {
            key: sum(g for node, g in held.items() if key == ANY or gpu_type_matches(self.gpu_types.get(node), key))
            for key in quota.limits
        }

    def count_demand(self, namespace: str, gpus: int, gpu_type: str | None) -> dict[str, int]:
        """What a gang not placed yet surely counts against: all its GPUs against `gpus` and against the limit of
        the type it names (an untyped gang is checked against type limits once it has a plan)."""
        quota = self.quotas.get(namespace)
        if quota is None:
            return {}
        return {
            key: gpus for key in quota.limits if key == ANY or (gpu_type and gpu_type_matches(gpu_type, key))
        }  # fmt: skip

    def take(self, namespace: str, counted: Mapping[str, int], sign: int = 1) -> None:
        for key, gpus in counted.items():
            self.used[namespace][key] += sign * gpus

    def claim(self, namespace: str, counted: Mapping[str, int], sign: int = 1) -> None:
        for key, gpus in counted.items():
            self.claimed[namespace][key] += sign * gpus

    def excess(self, namespace: str, counted: Mapping[str, int]) -> dict[str, int]:
        """GPUs above its own limits it would hold with `counted` more."""
        quota = self.quotas.get(namespace)
        if quota is None:
            return {}
        over = {key: self.used[namespace][key] + gpus - quota.limits[key] for key, gpus in counted.items()}
        return {key: gpus for key, gpus in over.items() if gpus > 0}

    def idle(self, key: str, borrower: str) -> int:
        """What the other quotas with this limit leave idle (neither held nor claimed by a waiting gang), net of
        what is already borrowed from them."""
        return sum(
            q.limits[key] - self.used[ns][key] - self.claimed[ns][key]
            for ns, q in self.quotas.items()
            if ns != borrower and key in q.limits
        )

    def refusal(self, namespace: str, counted: Mapping[str, int]) -> str | None:
        """Why the namespace may not hold `counted` more GPUs; None when it may (within quota, or borrowing)."""
        quota = self.quotas.get(namespace)
        for key, over in self.excess(namespace, counted).items():
            assert quota is not None
            if quota.borrowing and over <= (idle := self.idle(key, namespace)):
                continue
            limit, used = quota.limits[key], self.used[namespace][key]
            why = (
                f"namespace {namespace} holds {used} of its {limit} {_label(key)}GPU quota and this job needs "
                f"{counted[key]}"
            )
            if quota.borrowing:
                left = max(idle - max(used - limit, 0), 0)
                why += f"; other namespaces' quotas leave {left} idle to borrow"
            return why
        return None

    def borrowing(self, namespace: str) -> bool:
        """Whether the namespace holds more than one of its limits (borrowed quota)."""
        quota = self.quotas.get(namespace)
        return quota is not None and any(self.used[namespace][k] > limit for k, limit in quota.limits.items())
