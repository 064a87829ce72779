"""The outlier-ejection state machine: probe before first use, eject, probe back with growing ejections."""

from __future__ import annotations

from modelfleet.gateway.config import Ejection
from modelfleet.gateway.outlier import Outliers

POLICY = Ejection(consecutive_failures=3, base_seconds=5, max_seconds=12, probe_interval_seconds=0.5)


def healthy(outliers: Outliers, key: str, now: float = 0.0) -> None:
    outliers.track(key)
    outliers.probed(key, True, now)


def test_a_new_replica_gets_traffic_only_after_a_probe_passes() -> None:
    outliers = Outliers(POLICY)
    outliers.track("r")
    assert not outliers.routable("r") and outliers.due(0.0) == ["r"]
    outliers.probed("r", False, 0.0)
    assert outliers.due(0.2) == [] and outliers.due(0.5) == ["r"]
    outliers.probed("r", True, 0.5)
    assert outliers.routable("r") and outliers.due(1.0) == []


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    outliers = Outliers(POLICY)
    healthy(outliers, "r")
    assert not outliers.failed("r", 1.0) and not outliers.failed("r", 1.0)
    outliers.succeeded("r")
    assert not outliers.failed("r", 2.0) and not outliers.failed("r", 2.0)
    assert outliers.failed("r", 2.0)
    assert not outliers.routable("r")


def test_connection_refused_ejects_at_once_and_probing_back_doubles_up_to_the_cap() -> None:
    outliers = Outliers(POLICY)
    healthy(outliers, "r")
    assert outliers.failed("r", 10.0, refused=True)
    assert outliers.due(14.9) == [] and outliers.due(15.0) == ["r"]
    outliers.probed("r", False, 15.0)  # ejected again for 10 s
    assert outliers.due(24.9) == [] and outliers.due(25.0) == ["r"]
    outliers.probed("r", False, 25.0)  # 20 s, capped at 12
    assert outliers.due(37.0) == ["r"]
    outliers.probed("r", True, 37.0)
    assert outliers.routable("r")
    outliers.succeeded("r")
    assert outliers.failed("r", 40.0, refused=True) and outliers.due(45.0) == ["r"]  # back to the base time


def test_failures_of_unknown_or_ejected_replicas_change_nothing() -> None:
    outliers = Outliers(POLICY)
    assert not outliers.failed("gone", 0.0)
    healthy(outliers, "r")
    outliers.failed("r", 0.0, refused=True)
    assert not outliers.failed("r", 1.0, refused=True)  # late answers of requests sent before the ejection
    outliers.forget("r")
    assert outliers.due(100.0) == []
