"""Replicas per region from observed load: `decide` is a pure function of what was seen and what is running;
`RegionScaler` is what is seen (its samples, recommendations and panic), changed only by its own methods.

The algorithm, per region, at every observation tick:

1. Load is a series of samples, each in *replica-equivalents at target*: for `concurrency` the in-flight requests
   of all ready replicas divided by `target`; for `rps` the requests per second of all ready replicas divided by
   `target`; for `latency` the ready replicas times observed p90 latency divided by `target`.
2. `stable` is the mean over the stable window (default 60 s), `panic` the mean over the panic window (6 s).
   Each becomes a replica count by dividing by `targetUtilization` (0.7: headroom for bursts) and rounding up.
3. Panic mode starts when the panic-window count is at least `panicThreshold` (2.0) times the ready replicas,
   and lasts one stable window after the last such tick. In panic the recommendation is the panic count and it
   never goes down; otherwise it is the stable count.
4. Scale-up counts replicas already starting: the recommendation is an absolute count, and replicas that are
   requested but not yet ready are part of it, so slow GPU starts never make it add more for the same load.
   One step grows at most to `maxScaleUpRate` times the ready replicas (at least +1).
5. Changes within 10% of the current size are ignored (as HPA's tolerance), outside panic.
6. Scale-down is stabilised: the result is the highest recommendation of the last `scaleDownDelaySeconds`, and
   one step shrinks at most to current / `maxScaleDownRate`.
7. Bounds: per-region `minReplicas`..`maxReplicas`. With `scaleToZero`, a region whose `minReplicas` is 0 goes to
   zero once it has seen no load for `scaleToZeroGracePeriodSeconds`; otherwise it keeps at least one replica
   while it has any.

Missing metrics (see `load_sources.py`) are never read as zero load: a ready replica whose scrape fails counts as
exactly at target, and a tick where no replica could be read adds no sample, so the region holds its size.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelfleet.api.inference import Autoscaling, Region

TOLERANCE = 0.1


@dataclass
class RegionScaler:
    """What the autoscaler remembers about one region between ticks."""

    samples: deque[tuple[float, float]] = field(default_factory=deque)
    recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    panic_until: float | None = None
    last_active: float | None = None

    def add_sample(self, now: float, load: float | None) -> None:
        """Adds a sample (replica-equivalents at target); None means nothing could be read."""
        if load is None:
            return
        self.samples.append((now, load))
        if load > 0:
            self.last_active = now

    def record(self, now: float, decision: ScaleDecision, policy: Autoscaling) -> None:
        """Remembers a decision made at `now` (its recommendation and panic), and forgets the samples and
        recommendations that have left their windows."""
        if decision.recommendation is not None:
            self.recommendations.append((now, decision.recommendation))
        self.panic_until = decision.panic_until
        while self.samples and self.samples[0][0] < now - policy.stable_window_seconds:
            self.samples.popleft()
        horizon = now - max(policy.stable_window_seconds, policy.scale_down_delay_seconds)
        while self.recommendations and self.recommendations[0][0] < horizon:
            self.recommendations.popleft()


@dataclass(frozen=True)
class ScaleDecision:
    desired: int
    reason: str
    panic: bool
    stable_load: float
    recommendation: int | None = None
    """The window's recommendation before tolerance and stabilisation (None without metrics)."""
    panic_until: float | None = None
    """When panic mode ends (None: not in panic)."""


def _mean_since(samples: deque[tuple[float, float]], since: float) -> float | None:
    values = [v for t, v in samples if t >= since]
    return sum(values) / len(values) if values else None


def decide(
    policy: Autoscaling,
    state: RegionScaler,
    now: float,
    current: int,
    ready: int,
    min_replicas: int,
    max_replicas: int,
) -> ScaleDecision:
    """Desired replicas for one region. `current` counts requested replicas, `ready` those serving. Pure: the
    caller hands the decision back to `state.record`."""
    floor = min_replicas
    if min_replicas == 0 and not policy.scale_to_zero:
        floor = 1
    stable = _mean_since(state.samples, now - policy.stable_window_seconds)
    if stable is None:
        held = max(floor, min(current, max_replicas))
        return ScaleDecision(held, "NoMetrics", False, 0.0, panic_until=state.panic_until)
    panic_load = _mean_since(state.samples, now - policy.panic_window_seconds) or 0.0
    stable_count = math.ceil(round(stable / policy.target_utilization, 6))
    panic_count = math.ceil(round(panic_load / policy.target_utilization, 6))

    panic_until = state.panic_until
    if panic_count >= policy.panic_threshold * max(ready, 1) and panic_count > current:
        panic_until = now + policy.stable_window_seconds
    panic = panic_until is not None and now < panic_until
    if panic:
        recommended = max(panic_count, current)
        reason = "Panic"
    else:
        panic_until = None
        recommended = stable_count
        reason = "StableWindow"

    up_limit = max(math.ceil(policy.max_scale_up_rate * max(ready, 1)), ready + 1)
    recommended = min(recommended, max(up_limit, current))
    recommendation = recommended

    if not panic and current and abs(stable / policy.target_utilization - current) <= TOLERANCE * current:
        recommended = current  # close enough: as HPA, ignore changes within 10%
    desired = recommended
    if desired < current:
        since = now - policy.scale_down_delay_seconds
        delayed = max([r for t, r in state.recommendations if t >= since] + [recommendation])
        desired = max(desired, delayed, math.ceil(current / policy.max_scale_down_rate))
        if desired < current:
            reason = "ScaleDown"
    if desired > current:
        reason = "PanicScaleUp" if panic else "ScaleUp"

    idle_since = state.last_active if state.last_active is not None else -math.inf
    idle = now - idle_since >= policy.scale_to_zero_grace_period_seconds
    if policy.scale_to_zero and min_replicas == 0 and recommended == 0 and idle:
        return ScaleDecision(0, "ScaleToZero" if current else "Idle", panic, stable, recommendation, panic_until)
    keep_one = 1 if current or stable > 0 else 0
    if desired > max_replicas:
        reason = "AtMaxReplicas"
    desired = min(max(desired, floor, keep_one), max_replicas)
    return ScaleDecision(desired, reason, panic, stable, recommendation, panic_until)


def split_replicas(total: int | None, regions: Sequence[Region]) -> dict[str, int]:
    """Replicas per region when autoscaling is off: `total` split by weight (largest remainders), clamped to
    each region's bounds; without a total, each region runs its minReplicas."""
    if total is None:
        return {r.name: r.min_replicas for r in regions}
    weights = {r.name: r.weight for r in regions}
    weight_sum = sum(weights.values()) or 1
    shares = {name: total * w / weight_sum for name, w in weights.items()}
    counts = {name: math.floor(share) for name, share in shares.items()}
    leftover = total - sum(counts.values())
    for name in sorted(shares, key=lambda n: (counts[n] - shares[n], n))[:leftover]:
        counts[name] += 1
    return {r.name: min(max(counts[r.name], r.min_replicas), r.max_replicas) for r in regions}
