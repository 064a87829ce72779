"""Heterogeneous shards: each rank's slice of every global batch, in proportion to its weight.

Static weights come from MODELFLEET_SHARD_WEIGHTS (one per pod, looked up by the pod's own replica index, so they
follow the pod under elastic torchrun, whose c10d rendezvous hands out ranks in any order). `AdaptiveShares` moves
them toward each rank's measured throughput (`dataset.sharding: Adaptive`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def pod_weight(raw: str | None, replica_index: int, nproc_per_node: int = 1) -> float:
    """This process's static weight: its pod's entry of MODELFLEET_SHARD_WEIGHTS, split evenly among the pod's
    processes; NaN when the list is absent or has no valid entry for the pod (the gang then shares equally)."""
    try:
        per_pod = [float(w) for w in (raw or "").split(",") if w.strip()]
        weight = per_pod[replica_index]
    except (ValueError, IndexError):
        return math.nan
    return weight / nproc_per_node if weight > 0 and math.isfinite(weight) else math.nan


def normalized(weights: Sequence[float]) -> list[float]:
    """Weights summing to 1; equal shares when any weight is missing (NaN) or not above 0."""
    if not weights or any(not (w > 0) or not math.isfinite(w) for w in weights):
        return [1 / len(weights)] * len(weights)
    total = sum(weights)
    return [w / total for w in weights]


def slice_bounds(batch: int, weights: Sequence[float], rank: int) -> tuple[int, int]:
    """[start, end) of `rank`'s rows in a global batch, sizes by largest remainder so they add up to `batch`."""
    total = sum(weights)
    shares = [batch * w / total for w in weights]
    sizes = [math.floor(s) for s in shares]
    for i in sorted(range(len(weights)), key=lambda i: (sizes[i] - shares[i], i))[: batch - sum(sizes)]:
        sizes[i] += 1
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


@dataclass
class AdaptiveShares:
    """Every rank's share of the global batch, moved toward its share of the gang's measured throughput.

    Every rank holds one and feeds it the same all-gathered measurements, so all compute the same shares.
    Throughput is smoothed (exponential average, `smoothing` the weight of the new window); a share moves by at
    most `max_change` of its value per update and never below `min_share` of an equal share, so a slow rank keeps
    a few rows and its speed stays measured.
    """

    shares: list[float]
    adaptive: bool = True
    smoothing: float = 0.5
    max_change: float = 0.5
    min_share: float = 0.05
    throughput: list[float] = field(default_factory=list)

    def update(self, rows: Sequence[float], seconds: Sequence[float]) -> list[float]:
        """Feeds one window's rows and compute seconds per rank; returns the shares for the next steps."""
        measured = [r / s if r > 0 and s > 0 else math.nan for r, s in zip(rows, seconds, strict=True)]
        if not self.throughput:
            self.throughput = [0.0 if math.isnan(m) else m for m in measured]
        else:
            self.throughput = [
                old if math.isnan(new) else (new if old <= 0 else self.smoothing * new + (1 - self.smoothing) * old)
                for old, new in zip(self.throughput, measured, strict=True)
            ]
        total = sum(self.throughput)
        if not self.adaptive or total <= 0 or any(t <= 0 for t in self.throughput):
            return self.shares
        floor = self.min_share / len(self.shares)
        bounded = [
            max(min(t / total, s * (1 + self.max_change)), s * (1 - self.max_change), floor)
            for t, s in zip(self.throughput, self.shares, strict=True)
        ]
        self.shares = normalized(bounded)
        return self.shares
