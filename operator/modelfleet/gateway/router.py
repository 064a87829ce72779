"""The gateway's routing state (what it measured and holds in flight) joined to the store: routes and replicas."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable

from modelfleet.gateway.config import GatewayConfig
from modelfleet.gateway.outlier import Outliers
from modelfleet.gateway.ranking import LatencyTable, MeasuredLatency, RegionLoad, Route, choose, rank_regions
from modelfleet.gateway.store import Replica, ServiceInfo, ServiceKey, Store

WARMUP_REQUESTS = 3
"""A replica's first answers carry its one-time warm-up (lazy initialisation, TorchScript's profiling runs), which
says nothing about its region's latency: they are left out of the measurement."""


class Router:
    def __init__(self, config: GatewayConfig, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.store, self.clock = config, store, clock
        self.table = LatencyTable(config.latency_ms, config.cross_region_ms)
        self.measured = MeasuredLatency(config.ewma_alpha, config.ewma_half_life_seconds)
        self.outliers = Outliers(config.ejection)
        self.inflight: Counter[Replica] = Counter()
        self.answered: Counter[Replica] = Counter()
        self._turn = itertools.count()

    def sync(self, key: ServiceKey) -> None:
        """The store changed for `key`: new replicas are tracked (probed before use), gone ones forgotten."""
        live = set(self.store.replicas_of(key))
        for replica in live:
            self.outliers.track(replica)
        for gone in [r for r in self.outliers.health if isinstance(r, Replica) and (r.namespace, r.service) == key]:
            if gone not in live:
                self.outliers.forget(gone)
                self.answered.pop(gone, None)

    def measured_answer(self, replica: Replica, seconds: float) -> None:
        """A successful answer's latency, past the replica's warm-up, feeds its region's EWMA."""
        self.outliers.succeeded(replica)
        self.answered[replica] += 1
        if self.answered[replica] > WARMUP_REQUESTS:
            self.measured.record(replica.region, seconds * 1000, self.clock())

    def loads(self, service: ServiceInfo) -> dict[str, RegionLoad]:
        replicas = self.store.replicas_of(service.key)
        loads = {}
        for region in service.regions:
            here = [r for r in replicas if r.region == region]
            routable = [r for r in here if self.outliers.routable(r)]
            loads[region] = RegionLoad(len(here), len(routable), sum(self.inflight[r] for r in here))
        return loads

    def route(self, service: ServiceInfo, client_region: str) -> Route:
        ranked = rank_regions(
            client_region, service.regions, self.table, self.measured, self.config.region, self.clock()
        )
        limit = (service.target or self.config.default_target) * self.config.spill_factor
        return choose(ranked, self.loads(service), limit)

    def pick(self, service: ServiceInfo, region: str, avoid: Replica | None = None) -> Replica | None:
        """The routable replica of `region` with the fewest requests in flight (turns taken among equals)."""
        candidates = [
            r for r in self.store.replicas_of(service.key)
            if r.region == region and r != avoid and self.outliers.routable(r)
        ]  # fmt: skip
        if not candidates:
            return None
        candidates.sort(key=lambda r: r.pod)
        turn = next(self._turn)
        return min(candidates, key=lambda r: (self.inflight[r], (candidates.index(r) - turn) % len(candidates)))
