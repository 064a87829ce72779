"""The gateway's routing state (what it measured and holds in flight) joined to the store: routes and replicas.

What a request needs that changes rarely is derived once and cached: each service's replicas per region (dropped
when the store changes the service or the outlier detector changes any replica's state) and the ranked regions per
(service, client region), which also follow the measured latency: they are recomputed at most every
`RANKING_TTL_SECONDS`, as every answer moves the EWMA a little. Per request only the in-flight counts are read.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from modelfleet.gateway.config import GatewayConfig
from modelfleet.gateway.outlier import Outliers
from modelfleet.gateway.ranking import LatencyTable, MeasuredLatency, RegionLoad, Route, choose, rank_regions
from modelfleet.gateway.store import Replica, ServiceInfo, ServiceKey, Store

WARMUP_REQUESTS = 3
"""A replica's first answers carry its one-time warm-up (lazy initialisation, TorchScript's profiling runs), which
says nothing about its region's latency: they are left out of the measurement."""
RANKING_TTL_SECONDS = 0.1
RANKINGS_KEPT = 4096
"""Client regions come from a header anyone can set: the cache starts over past this many (service, region) pairs."""


@dataclass(frozen=True)
class Pool:
    """A service's replicas by region, as of one store and outlier state."""

    ready: Mapping[str, tuple[Replica, ...]]
    """Ready pods the watch sees."""
    routable: Mapping[str, tuple[Replica, ...]]
    """Of those, the replicas probed and not ejected, by pod name."""


class Router:
    def __init__(self, config: GatewayConfig, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.store, self.clock = config, store, clock
        self.table = LatencyTable(config.latency_ms, config.cross_region_ms)
        self.measured = MeasuredLatency(config.ewma_alpha, config.ewma_half_life_seconds)
        self.outliers = Outliers(config.ejection)
        self.inflight: Counter[Replica] = Counter()
        self.answered: Counter[Replica] = Counter()
        self._turn = itertools.count()
        self._pools: dict[ServiceKey, Pool] = {}
        self._pools_generation = self.outliers.generation
        self._ranked: dict[tuple[ServiceKey, str], tuple[float, list[str]]] = {}

    def sync(self, key: ServiceKey) -> None:
        """The store changed for `key`: new replicas are tracked (probed before use), gone ones forgotten."""
        live = set(self.store.replicas_of(key))
        for replica in live:
            self.outliers.track(replica)
        for gone in [r for r in self.outliers.health if isinstance(r, Replica) and (r.namespace, r.service) == key]:
            if gone not in live:
                self.outliers.forget(gone)
                self.answered.pop(gone, None)
        self._pools.pop(key, None)
        self._ranked = {k: v for k, v in self._ranked.items() if k[0] != key}

    def measured_answer(self, replica: Replica, seconds: float) -> None:
        """A successful answer's latency, past the replica's warm-up, feeds its region's EWMA."""
        self.outliers.succeeded(replica)
        self.answered[replica] += 1
        if self.answered[replica] > WARMUP_REQUESTS:
            self.measured.record(replica.region, seconds * 1000, self.clock())

    def pool(self, key: ServiceKey) -> Pool:
        if self.outliers.generation != self._pools_generation:
            self._pools.clear()
            self._pools_generation = self.outliers.generation
        if (pool := self._pools.get(key)) is None:
            ready: defaultdict[str, list[Replica]] = defaultdict(list)
            for replica in sorted(self.store.replicas_of(key), key=lambda r: r.pod):
                ready[replica.region].append(replica)
            pool = self._pools[key] = Pool(
                {region: tuple(here) for region, here in ready.items()},
                {region: tuple(r for r in here if self.outliers.routable(r)) for region, here in ready.items()},
            )
        return pool

    def loads(self, service: ServiceInfo) -> dict[str, RegionLoad]:
        pool = self.pool(service.key)
        loads = {}
        for region in service.regions:
            here = pool.ready.get(region, ())
            inflight = sum(self.inflight[r] for r in here)
            loads[region] = RegionLoad(len(here), len(pool.routable.get(region, ())), inflight)
        return loads

    def ranked(self, service: ServiceInfo, client_region: str) -> list[str]:
        """The service's regions nearest first for a client in `client_region` (see ranking.rank_regions)."""
        now = self.clock()
        cached = self._ranked.get((service.key, client_region))
        if cached is not None and cached[0] > now:
            return cached[1]
        ranked = rank_regions(client_region, service.regions, self.table, self.measured, self.config.region, now)
        if len(self._ranked) >= RANKINGS_KEPT:
            self._ranked.clear()
        self._ranked[(service.key, client_region)] = (now + RANKING_TTL_SECONDS, ranked)
        return ranked

    def route(self, service: ServiceInfo, client_region: str) -> Route:
        limit = (service.target or self.config.default_target) * self.config.spill_factor
        return choose(self.ranked(service, client_region), self.loads(service), limit)

    def pick(self, service: ServiceInfo, region: str, avoid: Replica | None = None) -> Replica | None:
        """The routable replica of `region` with the fewest requests in flight (turns taken among equals)."""
        candidates = [r for r in self.pool(service.key).routable.get(region, ()) if r != avoid]
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        turn, count = next(self._turn), len(candidates)
        best = min(range(count), key=lambda i: (self.inflight[candidates[i]], (i - turn) % count))
        return candidates[best]
