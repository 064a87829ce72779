"""Which region serves a request (pure): the expected latency from the client's region, then spillover.

Expected latency of region r for a client in region c is the table's c -> r figure plus r's *excess*: what the
gateway measured to r (an EWMA) beyond what the table predicts from the gateway's own region, less the smallest
excess among the regions ranked (serving time that every region adds is no reason to prefer one). The excess
fades with a half-life while r gets no traffic, so a region that was slow once is tried again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LatencyTable:
    ms: Mapping[str, Mapping[str, float]]
    cross_region_ms: float = 50.0

    def between(self, client: str, region: str) -> float:
        """The table's figure (either direction), else 0 within a region and `cross_region_ms` across."""
        for a, b in ((client, region), (region, client)):
            if (value := self.ms.get(a, {}).get(b)) is not None:
                return value
        return 0.0 if client == region else self.cross_region_ms


@dataclass
class MeasuredLatency:
    """EWMA of the measured milliseconds per region, with when each was last updated."""

    alpha: float = 0.2
    half_life_seconds: float = 30.0
    ewma: dict[str, tuple[float, float]] = field(default_factory=dict)

    def record(self, region: str, ms: float, now: float) -> None:
        old = self.ewma.get(region)
        value = ms if old is None else old[0] + self.alpha * (ms - old[0])
        self.ewma[region] = (value, now)

    def excess_ms(self, region: str, predicted_ms: float, now: float) -> float:
        if (seen := self.ewma.get(region)) is None:
            return 0.0
        value, at = seen
        return max(0.0, value - predicted_ms) * math.pow(0.5, max(0.0, now - at) / self.half_life_seconds)


def rank_regions(
    client: str, regions: Sequence[str], table: LatencyTable, measured: MeasuredLatency, own: str, now: float
) -> list[str]:
    """The service's regions, nearest first (ties by name, so the order is stable)."""
    excess = {r: measured.excess_ms(r, table.between(own, r), now) for r in regions}
    baseline = min((excess[r] for r in regions if r in measured.ewma), default=0.0)

    def expected(region: str) -> float:
        return table.between(client, region) + max(0.0, excess[region] - baseline)

    return sorted(regions, key=lambda r: (expected(r), r))


@dataclass(frozen=True)
class RegionLoad:
    pods: int
    """Ready pods the watch sees."""
    routable: int
    """Of those, replicas the gateway has probed and not ejected."""
    inflight: int
    """Requests the gateway has in flight there."""


@dataclass(frozen=True)
class Route:
    primary: str | None
    """Region to send to; None: no region can serve now (hold the request)."""
    fallback: str | None
    """Region for the one retry: the next nearest that can serve, else the primary itself."""
    nearest: str | None
    """The nearest region that can serve; when it is not the primary, it was saturated (a spill)."""
    cold: str | None
    """The nearest region when it has no ready pod: the demand that must wake it."""
    wanted: str | None = None
    """The nearest region, serving or not: where a request waits when no region can serve."""

    @property
    def spilled(self) -> bool:
        return self.primary != self.nearest


def choose(ranked: Sequence[str], loads: Mapping[str, RegionLoad], limit_per_replica: float) -> Route:
    """The nearest region with headroom (in-flight below `limit_per_replica` per routable replica); when every
    serving region is saturated, the nearest serving one (its replicas queue the excess)."""
    empty = RegionLoad(0, 0, 0)
    serving = [r for r in ranked if loads.get(r, empty).routable > 0]
    cold = ranked[0] if ranked and loads.get(ranked[0], empty).pods == 0 else None
    if not serving:
        return Route(None, None, None, cold, ranked[0] if ranked else None)
    with_headroom = [r for r in serving if loads[r].inflight < loads[r].routable * limit_per_replica]
    primary = with_headroom[0] if with_headroom else serving[0]
    fallback = next((r for r in serving if r != primary), primary)
    return Route(primary, fallback, serving[0], cold, ranked[0])
