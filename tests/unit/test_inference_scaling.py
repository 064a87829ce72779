"""The autoscaling tick: at most once per interval, and a resync only while there is load to observe."""

from __future__ import annotations

import asyncio

from modelfleet.api.inference import InferenceServiceSpec
from modelfleet.inference.scaling import Scaling, resync_seconds
from modelfleet.loops import NO_RESYNC


def spec(**overrides) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate(
        {"model": {"uri": "file:///m.pt"}, "regions": [{"name": "r1", "maxReplicas": 4}], **overrides}
    )


def deployment(replicas: int) -> dict:
    return {"metadata": {"name": "svc-r1"}, "spec": {"replicas": replicas}}


def test_a_pass_sooner_than_the_interval_reuses_the_last_tick() -> None:
    scaling, s = Scaling(), spec(autoscaling={"intervalSeconds": 60})
    first = asyncio.run(scaling.desired("ns", "svc", s, s.regions[0], deployment(3), [], 1))
    state = scaling.regions[("ns", "svc", "r1")]
    ticked_at = state.last_tick
    again = asyncio.run(scaling.desired("ns", "svc", s, s.regions[0], deployment(3), [], 1))
    assert first == again and first.reason == "NoMetrics" and first.desired == 3
    assert state.last_tick == ticked_at
    narrower = spec(autoscaling={"intervalSeconds": 60}, regions=[{"name": "r1", "maxReplicas": 2}])
    assert asyncio.run(scaling.desired("ns", "svc", narrower, narrower.regions[0], deployment(3), [], 1)).desired == 2
    scaling.forget("ns", "svc")
    assert scaling.regions == {}


def test_no_tick_without_autoscaling_or_before_the_deployment() -> None:
    scaling = Scaling()
    manual = spec(replicas=2, autoscaling={"enabled": False})
    assert asyncio.run(scaling.desired("ns", "svc", manual, manual.regions[0], deployment(1), [], 2)).desired == 2
    auto = spec()
    assert asyncio.run(scaling.desired("ns", "svc", auto, auto.regions[0], None, [], 1)).reason == "Created"
    assert scaling.regions == {}


def test_resync_only_while_there_is_load_to_observe() -> None:
    auto = spec(autoscaling={"intervalSeconds": 15})
    assert resync_seconds(auto, replicas=2) == 15.0
    assert resync_seconds(auto, replicas=0) == NO_RESYNC  # scraped from the replicas: none to scrape
    prometheus = spec(autoscaling={"intervalSeconds": 15, "source": "Prometheus", "prometheusUrl": "http://p"})
    assert resync_seconds(prometheus, replicas=0) == 15.0
    assert resync_seconds(spec(replicas=1, autoscaling={"enabled": False}), replicas=1) == NO_RESYNC
