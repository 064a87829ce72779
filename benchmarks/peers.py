"""Re-implementations of the peers' autoscalers from their published formulas and defaults, for side-by-side runs.

Knative KPA: stable window 60 s, panic window 6 s, target utilisation 0.7, panic when the panic-window desired
count is >= 2x ready pods, never scale down in panic, scale down at most 2x per tick, 2 s ticks.
Kubernetes HPA (autoscaling/v2 defaults): desired = ceil(current * metric / target) with 10 % tolerance, 15 s sync,
scale-down stabilisation 300 s, scale-up at most max(+4 pods, +100 %) per 15 s; metric is the average over ready pods.
"""

from __future__ import annotations

import math
from collections import deque


class KnativeKPA:
    def __init__(self, target: float, util: float = 0.7, stable: float = 60, panic: float = 6, max_down: float = 2.0):
        self.target, self.util, self.stable, self.panic, self.max_down = target, util, stable, panic, max_down
        self.samples: deque[tuple[float, float]] = deque()
        self.panic_until: float | None = None

    def __call__(self, now: float, concurrency: float | None, current: int, ready: int) -> int:
        if concurrency is not None:
            self.samples.append((now, concurrency))
        while self.samples and self.samples[0][0] < now - self.stable:
            self.samples.popleft()
        if not self.samples:
            return current
        stable = sum(v for _, v in self.samples) / len(self.samples)
        recent = [v for t, v in self.samples if t >= now - self.panic] or [stable]
        panic = sum(recent) / len(recent)
        per_pod = self.target * self.util
        desired_stable, desired_panic = math.ceil(stable / per_pod), math.ceil(panic / per_pod)
        if desired_panic / max(ready, 1) >= 2.0:
            self.panic_until = now + self.stable
        if self.panic_until and now < self.panic_until:
            return max(desired_panic, current)
        self.panic_until = None
        return max(desired_stable, math.ceil(current / self.max_down), 1)


class KubernetesHPA:
    def __init__(self, target: float, util: float = 0.7, sync: float = 15, down_window: float = 300):
        self.target, self.util, self.sync, self.down_window = target * util, util, sync, down_window
        self.next_sync = 0.0
        self.recommendations: deque[tuple[float, int]] = deque()

    def __call__(self, now: float, concurrency: float | None, current: int, ready: int) -> int:
        if now < self.next_sync or concurrency is None or ready == 0:
            return current
        self.next_sync = now + self.sync
        ratio = (concurrency / ready) / self.target
        desired = current if abs(ratio - 1) <= 0.1 else math.ceil(ready * ratio)
        desired = min(desired, max(current + 4, current * 2))
        self.recommendations.append((now, desired))
        while self.recommendations and self.recommendations[0][0] < now - self.down_window:
            self.recommendations.popleft()
        if desired < current:
            desired = max(r for _, r in self.recommendations)
        return max(desired, 1)
