"""Gateway routing decisions: the client's region, the nearest region, spillover."""

from __future__ import annotations

import pytest

from modelfleet.gateway.config import GatewayConfig
from modelfleet.gateway.ranking import LatencyTable, MeasuredLatency, RegionLoad, choose, rank_regions
from modelfleet.gateway.regions import client_region

CIDRS = {"10.0.0.0/8": "cn-hangzhou", "10.1.0.0/16": "cn-beijing", "2001:db8::/32": "us-west-1"}


@pytest.mark.parametrize(
    ("header", "address", "expected"),
    [
        ("US-West-1 ", "10.1.2.3", "us-west-1"),  # the edge's header wins, normalised
        (None, "10.1.2.3", "cn-beijing"),  # the longest prefix wins
        (None, "10.9.9.9", "cn-hangzhou"),
        ("", "2001:db8::1", "us-west-1"),
        (None, "192.168.0.1", "eu-central-1"),  # no rule: the gateway's own region
        (None, "not-an-ip", "eu-central-1"),
        (None, None, "eu-central-1"),
    ],
)
def test_client_region(header: str | None, address: str | None, expected: str) -> None:
    assert client_region(header, address, CIDRS, "eu-central-1") == expected


def test_config_refuses_a_bad_cidr() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.300"):
        GatewayConfig.model_validate({"clientCidrs": {"10.0.0.300/8": "x"}})


def test_latency_table_defaults_to_same_region_first_and_is_symmetric() -> None:
    table = LatencyTable({"cn-hangzhou": {"cn-beijing": 12.0}}, cross_region_ms=80.0)
    assert table.between("cn-hangzhou", "cn-hangzhou") == 0.0
    assert table.between("cn-beijing", "cn-hangzhou") == 12.0
    assert table.between("cn-hangzhou", "us-west-1") == 80.0


def test_nearest_region_first_corrected_by_measured_latency_which_fades() -> None:
    table = LatencyTable({"a": {"b": 10.0, "c": 30.0}, "b": {"c": 20.0}}, cross_region_ms=100.0)
    measured = MeasuredLatency(alpha=1.0, half_life_seconds=10.0)
    assert rank_regions("a", ["c", "b", "a"], table, measured, own="a", now=0.0) == ["a", "b", "c"]
    measured.record("a", 50.0, now=0.0)  # a alone measured: nothing to compare it with
    assert rank_regions("a", ["a", "b", "c"], table, measured, own="a", now=0.0) == ["a", "b", "c"]
    measured.record("b", 12.0, now=0.0)  # a serves 48 ms slower than b, beyond their network distances
    assert rank_regions("a", ["a", "b", "c"], table, measured, own="a", now=0.0) == ["b", "c", "a"]
    assert rank_regions("a", ["a", "b", "c"], table, measured, own="a", now=10.0) == ["b", "a", "c"]  # 25 ms left
    assert rank_regions("a", ["a", "b", "c"], table, measured, own="a", now=40.0) == ["a", "b", "c"]


def test_measured_latency_is_an_ewma() -> None:
    measured = MeasuredLatency(alpha=0.5, half_life_seconds=1e9)
    for ms in (10.0, 20.0, 20.0):
        measured.record("a", ms, now=0.0)
    assert measured.excess_ms("a", predicted_ms=5.0, now=0.0) == pytest.approx(12.5)


def test_choose_the_nearest_with_headroom_and_spill_when_saturated() -> None:
    ranked = ["a", "b", "c"]
    loads = {"a": RegionLoad(2, 2, 5), "b": RegionLoad(1, 1, 0), "c": RegionLoad(1, 1, 0)}
    route = choose(ranked, loads, limit_per_replica=3.0)
    assert (route.primary, route.fallback, route.spilled, route.cold) == ("a", "b", False, None)
    loads["a"] = RegionLoad(2, 2, 6)  # 3 per replica: saturated
    route = choose(ranked, loads, limit_per_replica=3.0)
    assert (route.primary, route.fallback, route.nearest, route.spilled) == ("b", "a", "a", True)


def test_every_region_saturated_stays_nearest() -> None:
    loads = {"a": RegionLoad(1, 1, 9), "b": RegionLoad(1, 1, 9)}
    route = choose(["a", "b"], loads, limit_per_replica=2.0)
    assert (route.primary, route.fallback, route.spilled) == ("a", "b", False)


def test_a_region_at_zero_is_skipped_and_named_as_cold() -> None:
    loads = {"a": RegionLoad(0, 0, 0), "b": RegionLoad(1, 1, 0)}
    route = choose(["a", "b"], loads, limit_per_replica=2.0)
    assert (route.primary, route.fallback, route.cold, route.spilled) == ("b", "b", "a", False)


def test_no_region_can_serve() -> None:
    route = choose(["a", "b"], {"a": RegionLoad(0, 0, 0), "b": RegionLoad(1, 0, 0)}, limit_per_replica=2.0)
    assert route.primary is None and route.cold == "a"
    # pods that exist but are not routable (unprobed, ejected) are not cold: they need no scale-up
    route = choose(["b", "a"], {"a": RegionLoad(0, 0, 0), "b": RegionLoad(1, 0, 0)}, limit_per_replica=2.0)
    assert route.primary is None and route.cold is None and route.wanted == "b"
