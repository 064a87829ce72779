"""Figures: the CPU a process has used; over repeated runs, the median with the spread beside it."""

from __future__ import annotations

import contextlib
import os
import statistics
from pathlib import Path
from typing import Any


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds the process has used so far (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """`cpu_seconds` of the process and of every process under it (a server's worker processes)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):  # the thread ended
            children += [int(child) for child in task.read_text().split()]
    return cpu_seconds(pid) + sum(tree_cpu_seconds(child) for child in children)


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
