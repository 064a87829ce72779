"""`autoscaling.source: Gateway`: the gateway's series read as per-region load."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from modelfleet.api.inference import Autoscaling, MetricsSource
from modelfleet.gateway.metrics import GatewayMetrics
from modelfleet.inference.gateway_load import (
    GatewaySample,
    GatewaySettings,
    gateway_load,
    merge,
    parse_gateway_metrics,
)

A = ("ns", "svc", "a")
B = ("ns", "svc", "b")


def exported() -> str:
    metrics = GatewayMetrics()
    metrics.inflight.labels("ns", "svc", "a").set(3)
    metrics.queued.labels("ns", "svc", "b").set(2)
    metrics.redirected.labels("ns", "svc", "b").set(1)
    metrics.requests.labels("ns", "svc", "a", "200").inc(10)
    metrics.requests.labels("ns", "svc", "a", "503").inc(2)
    metrics.latency.labels("ns", "svc", "a").observe(0.2)
    return generate_latest(metrics.registry).decode()


def test_the_gateways_own_series_parse_per_region_and_sum_over_gateways() -> None:
    samples = parse_gateway_metrics(exported(), at=1.0)
    assert (samples[A].inflight, samples[A].waiting, samples[A].requests) == (3, 0, 12)
    assert (samples[B].inflight, samples[B].waiting) == (0, 3)
    assert dict(samples[A].buckets)[0.25] == 1
    both = merge([samples, samples], at=2.0)
    assert (both[A].inflight, both[B].waiting, both[A].requests, dict(both[A].buckets)[0.25]) == (6, 6, 24, 2)


def test_concurrency_counts_in_flight_and_waiting_requests() -> None:
    policy = Autoscaling(target=2)
    assert gateway_load(policy, GatewaySample(1.0, inflight=3, waiting=1), None, ready=2) == (2.0, 2.0)
    assert gateway_load(policy, GatewaySample(1.0, waiting=1), None, ready=0) == (0.5, 1.0)  # wakes a region at zero
    assert gateway_load(policy, GatewaySample(1.0), None, ready=0) == (0.0, 0.0)


def test_rps_needs_two_samples_but_a_waiting_request_wakes_a_region_at_zero() -> None:
    policy = Autoscaling(metric="rps", target=5, target_utilization=0.5)
    assert gateway_load(policy, GatewaySample(1.0, requests=10), None, ready=1) == (None, None)
    load, raw = gateway_load(policy, GatewaySample(3.0, requests=30), GatewaySample(1.0, requests=10), ready=2)
    assert (load, raw) == (2.0, 5.0)
    assert gateway_load(policy, GatewaySample(1.0, waiting=1), None, ready=0) == (0.5, None)
    # a counter that went back (a gateway restarted) gives no rate
    assert gateway_load(policy, GatewaySample(3.0, requests=1), GatewaySample(1.0, requests=10), ready=1)[0] is None


def test_latency_uses_the_p90_of_the_window() -> None:
    policy = Autoscaling(metric="latency", target=0.1)
    before = GatewaySample(1.0, buckets=((0.1, 10.0), (0.25, 10.0), (float("inf"), 10.0)))
    after = GatewaySample(2.0, buckets=((0.1, 10.0), (0.25, 20.0), (float("inf"), 20.0)))
    load, p90 = gateway_load(policy, after, before, ready=2)
    assert p90 == pytest.approx(0.235) and load == pytest.approx(4.7)


def test_gateway_is_the_default_source_only_with_a_gateway() -> None:
    with_gateway = GatewaySettings.from_env({"MODELFLEET_GATEWAY_URL": "http://gw.ns.svc:8080/"})
    assert with_gateway.metrics_urls == ("http://gw.ns.svc:8080/metrics",)
    assert with_gateway.model_url("m") == "http://gw.ns.svc:8080/v2/models/m"
    assert with_gateway.source(Autoscaling()) == MetricsSource.GATEWAY
    assert with_gateway.source(Autoscaling(source="Scrape")) == MetricsSource.SCRAPE
    without = GatewaySettings.from_env({})
    assert without.source(Autoscaling()) == MetricsSource.SCRAPE and without.model_url("m") is None
    headless = GatewaySettings.from_env({"MODELFLEET_GATEWAY_METRICS_URLS": "http://a:1/metrics http://b:1/metrics"})
    assert headless.metrics_urls == ("http://a:1/metrics", "http://b:1/metrics") and headless.url is None
