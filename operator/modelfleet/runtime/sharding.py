"""Heterogeneous shards: each rank's slice of every global batch, in proportion to its weight."""

from __future__ import annotations

import math
from collections.abc import Sequence


def parse_weights(raw: str | None, world: int, nproc_per_node: int = 1) -> list[float]:
    """Per-process weights from MODELFLEET_SHARD_WEIGHTS (one per pod, split evenly among a pod's processes).
    Equal weights when absent or when the world does not match (e.g. an elastic gang that changed size)."""
    if raw:
        per_pod = [float(w) for w in raw.split(",") if w.strip()]
        if len(per_pod) * nproc_per_node == world and all(w >= 0 for w in per_pod) and sum(per_pod) > 0:
            return [w / nproc_per_node for w in per_pod for _ in range(nproc_per_node)]
    return [1.0] * world


def slice_bounds(batch: int, weights: Sequence[float], rank: int) -> tuple[int, int]:
    """[start, end) of `rank`'s rows in a global batch, sizes by largest remainder so they add up to `batch`."""
    total = sum(weights)
    shares = [batch * w / total for w in weights]
    sizes = [math.floor(s) for s in shares]
    for i in sorted(range(len(weights)), key=lambda i: (sizes[i] - shares[i], i))[: batch - sum(sizes)]:
        sizes[i] += 1
    start = sum(sizes[:rank])
    return start, start + sizes[rank]
