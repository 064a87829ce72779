"""The operator's policy: node-level volumes, pickled models and Prometheus URLs, each refusal naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from modelfleet.api.inference import InferenceServiceSpec
from modelfleet.api.training import TrainingJobSpec
from modelfleet.contract import (
    POLICY_ALLOW_HOST_PATH_ENV,
    POLICY_ALLOW_PICKLED_MODELS_ENV,
    POLICY_PROMETHEUS_URLS_ENV,
)
from modelfleet.inference.builders import server_env
from modelfleet.policy import (
    Policy,
    current,
    prometheus_url_allowed,
    refusal,
    violations,
)

DEFAULT = Policy()


def job(**fields: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({"workers": {"replicas": 2}, **fields})


def service(**fields: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate(
        {"model": {"uri": "file:///m.pt"}, "regions": [{"name": "us-west-1"}], **fields}
    )


def test_policy_from_env_defaults_to_refusing() -> None:
    assert Policy.from_env({}) == Policy(False, False, ())
    assert Policy.from_env({POLICY_ALLOW_HOST_PATH_ENV: "yes please", POLICY_ALLOW_PICKLED_MODELS_ENV: ""}) == DEFAULT
    env = {
        POLICY_ALLOW_HOST_PATH_ENV: "true",
        POLICY_ALLOW_PICKLED_MODELS_ENV: "1",
        POLICY_PROMETHEUS_URLS_ENV: " http://a:9090  http://b ",
    }
    assert Policy.from_env(env) == Policy(True, True, ("http://a:9090", "http://b"))


def test_node_level_volumes_are_refused_naming_the_field() -> None:
    volumes = [
        {"name": "data", "persistentVolumeClaim": {"claimName": "d"}},
        {"name": "host", "hostPath": {"path": "/var/lib"}},
        {"name": "flex", "flexVolume": {"driver": "x/y"}},
    ]
    for spec in (job(volumes=volumes), service(volumes=volumes)):
        found = violations(spec, DEFAULT)
        assert [v.split(":")[0] for v in found] == ["spec.volumes[1].hostPath", "spec.volumes[2].flexVolume"]
        assert all("policy.allowHostPath" in v for v in found)
        assert violations(spec, Policy(allow_host_path=True)) == []


def test_safe_specs_pass_the_default_policy() -> None:
    safe = [{"name": "s", "emptyDir": {}}, {"name": "c", "configMap": {"name": "cfg"}}]
    assert violations(job(volumes=safe), DEFAULT) == []
    assert violations(service(volumes=safe), DEFAULT) == []
    assert refusal(job(), DEFAULT) is None


def test_pickled_models_only_when_allowed() -> None:
    pickled = service(model={"uri": "file:///m.pt", "format": "pytorch"})
    [found] = violations(pickled, DEFAULT)
    assert found.startswith("spec.model.format: pytorch") and "policy.allowPickledModels" in found
    assert violations(pickled, Policy(allow_pickled_models=True)) == []
    refused = refusal(pickled, DEFAULT)
    assert refused is not None and refused.reason == "PolicyDenied" and refused.message == found


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("http://prometheus.monitoring.svc:9090", True),
        ("https://prometheus.monitoring.svc.cluster.local/prom", True),
        ("http://prometheus.monitoring.svc.evil.example", False),
        ("http://prometheus.example.com", False),
        ("http://169.254.169.254/latest", False),
        ("http://127.0.0.1:9090", False),
        ("http://localhost:9090", False),
        ("http://svc", False),
        ("http://user@prometheus.monitoring.svc", False),
        ("http://prometheus.monitoring.svc@evil.example", False),
        ("http://prometheus.monitoring.svc/?x=1", False),
        ("http://prometheus.monitoring.svc:99999", False),
        ("ftp://prometheus.monitoring.svc", False),
    ],
)
def test_an_empty_allow_list_admits_in_cluster_services_only(url: str, allowed: bool) -> None:
    assert prometheus_url_allowed(url, ()) is allowed


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://prom.example.com/tenant-a", True),
        ("https://prom.example.com:443/tenant-a/", True),
        ("https://PROM.example.com/tenant-a/sub", True),
        ("https://prom.example.com/tenant-ab", False),
        ("https://prom.example.com/", False),
        ("http://prom.example.com/tenant-a", False),
        ("https://prom.example.com:8443/tenant-a", False),
        ("https://prom.example.com.evil.example/tenant-a", False),
        ("http://prometheus.monitoring.svc:9090", False),
        ("http://thanos:10902", True),
    ],
)
def test_an_allow_list_admits_urls_under_its_entries(url: str, allowed: bool) -> None:
    assert prometheus_url_allowed(url, ("https://prom.example.com/tenant-a", "http://thanos:10902", "::bad")) is allowed


def test_prometheus_url_refusal_names_the_field_and_the_list() -> None:
    spec = service(autoscaling={"source": "Prometheus", "prometheusUrl": "http://203.0.113.9:9090"})
    [found] = violations(spec, DEFAULT)
    assert found.startswith("spec.autoscaling.prometheusUrl: http://203.0.113.9:9090 is not under an in-cluster")
    [found] = violations(spec, Policy(prometheus_urls=("http://prom.monitoring.svc:9090",)))
    assert "one of http://prom.monitoring.svc:9090" in found and "policy.prometheusUrls" in found
    assert violations(spec, Policy(prometheus_urls=("http://203.0.113.9:9090",))) == []


def test_the_server_gets_the_pickle_policy_and_a_user_cannot_override_it() -> None:
    spec = service(env=[{"name": "MODELFLEET_ALLOW_PICKLE", "value": "1"}])
    env = [e for e in server_env("m", spec, "/m.pt") if e["name"] == "MODELFLEET_ALLOW_PICKLE"]
    assert env == [{"name": "MODELFLEET_ALLOW_PICKLE", "value": "0"}]


def test_the_server_may_load_pickles_when_the_policy_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLICY_ALLOW_PICKLED_MODELS_ENV, "true")
    current.cache_clear()
    try:
        env = {e["name"]: e["value"] for e in server_env("m", service(), "/m.pt")}
    finally:
        current.cache_clear()
    assert env["MODELFLEET_ALLOW_PICKLE"] == "1"
