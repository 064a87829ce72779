"""GPU products: matching a requested type against node labels, and relative speeds for data sharding."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence

from modelfleet.contract import GPU_SPEEDS_ENV

# Relative training throughput per GPU (A100 = 1.0), from published dense BF16/FP16 training figures.
# Overridable per job (spec.dataset.gpuSpeeds) and per installation (the chart's gpuSpeeds value).
DEFAULT_GPU_SPEEDS: dict[str, float] = {
    "B200": 4.0,
    "H200": 2.6,
    "H100": 2.5,
    "A100": 1.0,
    "L40S": 0.9,
    "A10": 0.4,
    "L4": 0.35,
    "V100": 0.45,
    "T4": 0.2,
}


def gpu_type_matches(node_product: str | None, wanted: str | None) -> bool:
    """True when no type is wanted, or the node's product is it: exactly, or as a dash-separated word.

    `A100` matches the labels `A100` and `NVIDIA-A100-SXM4-80GB`; matching ignores case.
    """
    if not wanted:
        return True
    if not node_product:
        return False
    product, wanted = node_product.upper(), wanted.upper()
    return product == wanted or wanted in product.split("-")


@functools.cache
def installation_gpu_speeds() -> dict[str, float]:
    """The installation's table: the defaults, updated by MODELFLEET_GPU_SPEEDS (JSON, the chart's gpuSpeeds)."""
    return {**DEFAULT_GPU_SPEEDS, **json.loads(os.environ.get(GPU_SPEEDS_ENV) or "{}")}


def gpu_speed(product: str | None, overrides: Mapping[str, float] | None = None) -> float:
    """Speed of a GPU product relative to an A100; unknown products count as 1.0."""
    table = {**installation_gpu_speeds(), **(overrides or {})}
    if not product:
        return 1.0
    for name, speed in table.items():
        if gpu_type_matches(product, name):
            return speed
    return 1.0


def shard_weights(
    products: Sequence[str | None], gpus_per_worker: int, overrides: Mapping[str, float] | None = None
) -> list[float]:
    """Each worker's share of every global batch, in proportion to its GPUs' speed; shares sum to 1."""
    raw = [gpu_speed(p, overrides) * max(gpus_per_worker, 1) for p in products]
    total = sum(raw)
    return [r / total for r in raw]
