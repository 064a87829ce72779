"""Outlier detection per replica (pure state machine): which replicas get traffic.

NEW --probe ok--> HEALTHY --connection refused, or N failures in a row--> EJECTED --time up, probe ok--> HEALTHY;
a failed probe keeps a NEW replica new (probed again soon) and ejects an EJECTED one again, twice as long (capped).

Only HEALTHY replicas get traffic. A new replica is probed before its first request (a pod's Ready condition
reaches the gateway late, or in a simulated cluster is fiction), and an ejected one is probed back instead of risking
a user's request. A probe is the gateway's GET /v2/health/ready; `due` says which replicas to probe now.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum

from modelfleet.gateway.config import Ejection


class State(Enum):
    NEW = "new"
    HEALTHY = "healthy"
    EJECTED = "ejected"


@dataclass
class Health:
    state: State = State.NEW
    failures: int = 0
    ejections: int = 0
    until: float = 0.0
    """Ejected: when the next probe is due. New: when the next probe may run."""


class Outliers:
    def __init__(self, policy: Ejection) -> None:
        self.policy = policy
        self.health: dict[Hashable, Health] = {}
        self.generation = 0
        """Bumped whenever the set of routable replicas may have changed (callers cache what they derive)."""

    def track(self, key: Hashable) -> None:
        if key not in self.health:
            self.health[key] = Health()
            self.generation += 1

    def forget(self, key: Hashable) -> None:
        if self.health.pop(key, None) is not None:
            self.generation += 1

    def routable(self, key: Hashable) -> bool:
        return (h := self.health.get(key)) is not None and h.state is State.HEALTHY

    def succeeded(self, key: Hashable) -> None:
        if (h := self.health.get(key)) is not None and h.state is State.HEALTHY:
            h.failures = 0
            h.ejections = 0

    def failed(self, key: Hashable, now: float, refused: bool = False) -> bool:
        """Records a failed request; True when it ejects the replica."""
        h = self.health.get(key)
        if h is None or h.state is not State.HEALTHY:
            return False
        h.failures += 1
        if refused or h.failures >= self.policy.consecutive_failures:
            self._eject(h, now)
            return True
        return False

    def due(self, now: float) -> list[Hashable]:
        """Replicas to probe now: new ones, and ejected ones whose time is up."""
        return [k for k, h in self.health.items() if h.state is not State.HEALTHY and h.until <= now]

    def probed(self, key: Hashable, ok: bool, now: float) -> None:
        h = self.health.get(key)
        if h is None or h.state is State.HEALTHY:
            return
        if ok:
            h.state, h.failures = State.HEALTHY, 0
            self.generation += 1
        elif h.state is State.NEW:
            h.until = now + self.policy.probe_interval_seconds
        else:
            self._eject(h, now)

    def _eject(self, h: Health, now: float) -> None:
        seconds = min(self.policy.base_seconds * 2**h.ejections, self.policy.max_seconds)
        h.state, h.failures, h.until = State.EJECTED, 0, now + seconds
        h.ejections += 1
        self.generation += 1
