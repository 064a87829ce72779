"""Figures over repeated runs: the median, with the spread beside it."""

from __future__ import annotations

import statistics
from typing import Any


def with_spread(value: float, values: list[float]) -> str:
    """`value (min-max)` of the values, or the value alone when they do not differ."""
    return f"{value:g}" + (f" ({min(values):g}-{max(values):g})" if min(values) != max(values) else "")


def median_and_spread(runs: list[dict[str, Any]], key: str) -> tuple[float | None, str]:
    """The median of `key` over the runs that have it, and how to print it: `median (min-max)`."""
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return None, "-"
    mid = statistics.median(values)
    return mid, with_spread(mid, values)
