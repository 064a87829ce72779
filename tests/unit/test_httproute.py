"""The HTTPRoute builder (pure): a header rule per region, a default rule, owner and parent."""

from __future__ import annotations

from modelfleet.api.inference import InferenceServiceSpec
from modelfleet.inference.routes import MAX_RULES, RouteSettings, httproute

META = {"name": "mlp", "namespace": "team", "uid": "u-1"}


def spec(regions: list[str], model_name: str | None = None) -> InferenceServiceSpec:
    model = {"uri": "pvc://models/mlp", **({"name": model_name} if model_name else {})}
    return InferenceServiceSpec.model_validate({"model": model, "regions": [{"name": r} for r in regions]})


def test_one_header_rule_per_region_then_the_first_region_for_everyone_else() -> None:
    settings = RouteSettings("gateways", "edge", "X-Edge-Region")
    route = httproute(META, spec(["cn-hangzhou", "us-west-1"], "m"), settings)
    assert route["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert route["metadata"]["namespace"] == "team" and route["metadata"]["name"] == "mlp"
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge", "namespace": "gateways"}
    ]
    rules = route["spec"]["rules"]
    path = {"type": "PathPrefix", "value": "/v2/models/m"}
    assert [r["matches"] for r in rules] == [
        [{"path": path, "headers": [{"type": "Exact", "name": "X-Edge-Region", "value": "cn-hangzhou"}]}],
        [{"path": path, "headers": [{"type": "Exact", "name": "X-Edge-Region", "value": "us-west-1"}]}],
        [{"path": path}],
    ]
    assert [r["backendRefs"] for r in rules] == [
        [{"name": "mlp-cn-hangzhou", "port": 80}],
        [{"name": "mlp-us-west-1", "port": 80}],
        [{"name": "mlp-cn-hangzhou", "port": 80}],
    ]


def test_settings_from_the_environment() -> None:
    assert RouteSettings.from_env({}) is None
    assert RouteSettings.from_env({"MODELFLEET_HTTPROUTE_PARENT": "edge"}) == RouteSettings(None, "edge")
    parsed = RouteSettings.from_env({"MODELFLEET_HTTPROUTE_PARENT": "gw/edge", "MODELFLEET_HTTPROUTE_HEADER": "X-R"})
    assert parsed == RouteSettings("gw", "edge", "X-R")
    route = httproute(META, spec(["a"]), RouteSettings(None, "edge"))
    assert "namespace" not in route["spec"]["parentRefs"][0]  # the route's own namespace
    assert route["spec"]["rules"][0]["matches"][0]["path"]["value"] == "/v2/models/mlp"  # the model's default name


def test_regions_past_the_gateway_apis_rule_limit_are_left_to_the_default_rule() -> None:
    regions = [f"r{i:02d}" for i in range(20)]
    rules = httproute(META, spec(regions), RouteSettings(None, "edge"))["spec"]["rules"]
    assert len(rules) == MAX_RULES
    assert [r["matches"][0]["headers"][0]["value"] for r in rules[:-1]] == regions[: MAX_RULES - 1]
