"""Seeded load traces (concurrent requests per second of time)."""

from __future__ import annotations

import math
import random


def step(seconds: int = 1800) -> list[float]:
    return [20.0 if t < 300 else 120.0 for t in range(seconds)]


def spike(seconds: int = 1800) -> list[float]:
    return [40.0 if not 600 <= t < 900 else 120.0 for t in range(seconds)]


def ramp(seconds: int = 1800) -> list[float]:
    return [5 + 150 * t / seconds for t in range(seconds)]


def diurnal(seconds: int = 3600, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [max(0.0, 70 + 60 * math.sin(2 * math.pi * t / 1800) + rng.gauss(0, 6)) for t in range(seconds)]


def bursty(seconds: int = 1800, seed: int = 2) -> list[float]:
    rng = random.Random(seed)
    out, on = [], False
    while len(out) < seconds:
        span = int(rng.expovariate(1 / (60 if on else 120))) + 1
        out += [(90.0 + rng.gauss(0, 8)) if on else 10.0] * span
        on = not on
    return out[:seconds]


def heavy_tail(seconds: int = 3600, seed: int = 3) -> list[float]:
    """Shaped like published serverless serving traces: a low base with lognormal-sized bursts
    (median 3x base, sigma 0.8) arriving as a Poisson process (mean gap 240 s), each lasting 30-180 s."""
    rng = random.Random(seed)
    base = [15.0 + rng.gauss(0, 2) for _ in range(seconds)]
    t = 0
    while t < seconds:
        t += int(rng.expovariate(1 / 240)) + 1
        height, length = 45 * rng.lognormvariate(0, 0.8), rng.randint(30, 180)
        for i in range(t, min(t + length, seconds)):
            base[i] += height
    return [max(0.0, v) for v in base]


TRACES = {
    "step": step,
    "3x-spike": spike,
    "ramp": ramp,
    "diurnal": diurnal,
    "bursty-on-off": bursty,
    "heavy-tail": heavy_tail,
}
