"""Replays a load trace through a scaling policy with slow-starting replicas (pure; used by tests and benchmarks).

Each replica serves `capacity` concurrent requests once ready, `startup` seconds after it was requested.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ScaleFn = Callable[[float, float | None, int, int], int]
"""(now, observed concurrent requests or None when no replica is ready, current, ready) -> desired replicas."""


@dataclass
class SimulationResult:
    times: list[float] = field(default_factory=list)
    demand: list[float] = field(default_factory=list)
    desired: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    overload_seconds: float = 0.0
    unserved_request_seconds: float = 0.0
    replica_seconds: float = 0.0
    scaling_changes: int = 0


def simulate(
    trace: Sequence[float], scale: ScaleFn, capacity: float, startup: float, tick: float = 2.0, initial: int = 1
) -> SimulationResult:
    """`trace[i]` is the concurrent demand during second i; the policy runs every `tick` seconds."""
    starts: list[float] = [-startup] * initial  # ready at t=0
    result = SimulationResult()
    desired = initial
    next_tick = 0.0
    for second, demand in enumerate(trace):
        now = float(second)
        ready = sum(1 for s in starts if now - s >= startup)
        if now >= next_tick:
            new = scale(now, demand if ready else None, len(starts), ready)
            if new != len(starts):
                result.scaling_changes += 1
            if new > len(starts):
                starts.extend([now] * (new - len(starts)))
            elif new < len(starts):
                starts.sort()
                del starts[new:]
            desired = new
            next_tick = now + tick
        ready = sum(1 for s in starts if now - s >= startup)
        served = ready * capacity
        if demand > served:
            result.overload_seconds += 1
            result.unserved_request_seconds += demand - served
        result.replica_seconds += len(starts)
        result.times.append(now)
        result.demand.append(demand)
        result.desired.append(desired)
        result.ready.append(ready)
    return result
