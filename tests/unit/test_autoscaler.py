"""The autoscaler on synthetic traces, through the slow-start simulator."""

from __future__ import annotations

import math
import random
from copy import deepcopy

from benchmarks.autoscaling_sim import simulate

from modelfleet.api.inference import Autoscaling
from modelfleet.inference.autoscaler import RegionScaler, decide

CAPACITY = 10.0  # concurrent requests one replica serves


def policy(**overrides) -> Autoscaling:
    return Autoscaling.model_validate({"target": CAPACITY, "targetUtilization": 0.7, **overrides})


def scaler(pol: Autoscaling, min_replicas: int = 1, max_replicas: int = 50):
    state = RegionScaler()
    decisions = []

    def scale(now: float, concurrency: float | None, current: int, ready: int) -> int:
        state.add_sample(now, None if concurrency is None else concurrency / pol.target)
        d = decide(pol, state, now, current, ready, min_replicas, max_replicas)
        state.record(now, d, pol)
        decisions.append(d)
        return d.desired

    return scale, decisions


def needed(demand: float) -> int:
    return math.ceil(demand / (CAPACITY * 0.7))


def test_step_reaches_the_needed_replicas_and_stays() -> None:
    trace = [20.0] * 60 + [100.0] * 240
    scale, _ = scaler(policy())
    result = simulate(trace, scale, CAPACITY, startup=30)
    assert result.desired[-1] == needed(100)
    assert max(result.desired) <= needed(100) + 1
    assert result.ready[-1] == needed(100)


def test_three_x_spike_triggers_panic_and_no_overshoot_from_starting_replicas() -> None:
    trace = [30.0] * 120 + [90.0] * 180
    scale, decisions = scaler(policy())
    result = simulate(trace, scale, CAPACITY, startup=120)
    assert any(d.panic for d in decisions)
    assert max(result.desired) <= needed(90) + 1, "replicas already starting are counted, not added again"


def test_steady_noisy_load_does_not_oscillate() -> None:
    rng = random.Random(7)
    trace = [45.0 + rng.uniform(-8, 8) for _ in range(900)]
    scale, _ = scaler(policy())
    result = simulate(trace, scale, CAPACITY, startup=30)
    assert result.scaling_changes <= 3


def test_ramp_is_followed() -> None:
    trace = [float(t) / 5 for t in range(600)]  # 0 -> 120 concurrent
    scale, _ = scaler(policy())
    result = simulate(trace, scale, CAPACITY, startup=30)
    assert result.desired[-1] >= needed(110)
    assert result.overload_seconds < 120


def test_noisy_diurnal_scales_up_and_down_without_flapping() -> None:
    rng = random.Random(3)
    trace = [60 + 50 * math.sin(2 * math.pi * t / 1200) + rng.uniform(-5, 5) for t in range(2400)]
    scale, _ = scaler(policy())
    result = simulate(trace, scale, CAPACITY, startup=30)
    assert max(result.desired) >= needed(100)
    assert min(result.desired[600:]) <= needed(20) + 1
    assert result.scaling_changes < 80


def test_scale_down_rate_is_bounded() -> None:
    trace = [200.0] * 200 + [0.0] * 400
    scale, _ = scaler(policy(maxScaleDownRate=2.0, scaleDownDelaySeconds=30), min_replicas=1)
    result = simulate(trace, scale, CAPACITY, startup=10)
    for before, after in zip(result.desired, result.desired[1:], strict=False):
        if after < before:
            assert after >= math.ceil(before / 2)
    assert result.desired[-1] == 1


def test_scale_to_zero_after_grace_and_back() -> None:
    pol = policy(scaleToZero=True, scaleToZeroGracePeriodSeconds=30)
    state = RegionScaler()
    now, current = 0.0, 2
    for _ in range(40):
        state.add_sample(now, 0.0)
        d = decide(pol, state, now, current, current, 0, 5)
        state.record(now, d, pol)
        current = d.desired
        now += 2
    assert current == 0
    state.add_sample(now, 35 / pol.target)  # load seen again (from a source in front of the service)
    assert decide(pol, state, now, 0, 0, 0, 5).desired >= 1


def test_missing_metrics_hold_the_current_size() -> None:
    state = RegionScaler()
    d = decide(policy(), state, 100.0, current=4, ready=4, min_replicas=1, max_replicas=10)
    assert d.desired == 4 and d.reason == "NoMetrics"


def test_bounds_are_respected() -> None:
    state = RegionScaler()
    state.add_sample(0.0, 1000.0)
    assert decide(policy(), state, 0.0, current=2, ready=2, min_replicas=1, max_replicas=5).desired == 5
    state = RegionScaler()
    state.add_sample(0.0, 0.0)
    assert decide(policy(), state, 0.0, current=3, ready=3, min_replicas=3, max_replicas=5).desired == 3


def test_decide_changes_nothing_and_record_keeps_the_windows() -> None:
    pol = policy()
    state = RegionScaler()
    for t in range(0, 100, 2):
        state.add_sample(float(t), 50.0)
    before = deepcopy(state)
    d = decide(pol, state, 100.0, current=2, ready=2, min_replicas=1, max_replicas=50)
    assert state == before and d.panic_until is not None and d.desired > 2
    state.record(100.0, d, pol)
    assert state.panic_until == d.panic_until and state.recommendations[-1] == (100.0, d.recommendation)
    assert all(t >= 100.0 - pol.stable_window_seconds for t, _ in state.samples)
