"""InferenceService builders, load observation and replica splitting, without a cluster."""

from __future__ import annotations

import pytest

from modelfleet.api.inference import Autoscaling, InferenceServiceSpec, Region
from modelfleet.inference.autoscaler import split_replicas
from modelfleet.inference.builders import covers, deployment, model_location, service
from modelfleet.inference.handlers import CREATE_FAILED_RETRY_SECONDS, Hold
from modelfleet.inference.load_sources import ReplicaSample, parse_metrics, quantile, region_load
from modelfleet.kube import Refused

META = {"name": "svc", "namespace": "ns", "uid": "u"}
METRICS = """
# TYPE modelfleet_inflight_requests gauge
modelfleet_inflight_requests{model="m"} 6.0
# TYPE modelfleet_requests counter
modelfleet_requests_total{code="200",model="m"} 90.0
modelfleet_requests_total{code="400",model="m"} 10.0
# TYPE modelfleet_request_duration_seconds histogram
modelfleet_request_duration_seconds_bucket{le="0.1",model="m"} 50.0
modelfleet_request_duration_seconds_bucket{le="0.2",model="m"} 100.0
modelfleet_request_duration_seconds_bucket{le="+Inf",model="m"} 100.0
modelfleet_request_duration_seconds_count{model="m"} 100.0
modelfleet_request_duration_seconds_sum{model="m"} 12.0
"""


def spec(**fields) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate(
        {"model": {"uri": "pvc://models/mlp/model.pt"}, "regions": [{"name": "r1"}], **fields}
    )


def test_deployment_pins_region_and_gpu_type_and_mounts_the_claim() -> None:
    s = spec(
        resources={"gpus": 1, "gpuType": "A100"}, model={"uri": "pvc://models/mlp/model.pt", "quantization": "bf16"}
    )
    dep = deployment(META, s, s.regions[0], 2, ["NVIDIA-A100-SXM4-80GB"])
    pod = dep["spec"]["template"]["spec"]
    exprs = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"
    ]
    assert {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]} in exprs
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert (
        env["MODELFLEET_MODEL_PATH"] == "/mnt/models/models/mlp/model.pt" and env["MODELFLEET_QUANTIZATION"] == "bf16"
    )
    assert env["MODELFLEET_DEVICE"] == "cuda"
    assert {v["name"]: v for v in pod["volumes"]}["model"]["persistentVolumeClaim"]["claimName"] == "models"
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_server_pod_is_restricted_by_default_and_takes_the_user_fields() -> None:
    pod = deployment(META, spec(), Region(name="r1"), 1)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"modelfleet-tmp": "/tmp", "model": "/mnt/models/models"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TMPDIR"] == env["HOME"] == "/tmp"

    relaxed = spec(securityContext={"runAsUser": 0, "runAsNonRoot": False}, containerSecurityContext={"runAsGroup": 7})
    pod = deployment(META, relaxed, Region(name="r1"), 1)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 0 and pod["securityContext"]["runAsNonRoot"] is False
    assert pod["containers"][0]["securityContext"]["runAsGroup"] == 7
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


def test_revision_changes_with_the_model_only() -> None:
    a = deployment(META, spec(), Region(name="r1"), 1)
    b = deployment(META, spec(), Region(name="r1"), 5)
    c = deployment(META, spec(model={"uri": "file:///other.pt"}), Region(name="r1"), 1)
    rev = lambda d: d["spec"]["template"]["metadata"]["annotations"]["modelfleet.dev/revision"]  # noqa: E731
    assert rev(a) == rev(b) != rev(c)


def test_model_location() -> None:
    assert model_location("file:///models/a.pt") == ("/models/a.pt", None)
    assert model_location("/models/a.pt") == ("/models/a.pt", None)


def test_parse_metrics_and_quantile() -> None:
    s = parse_metrics(METRICS, 10.0)
    assert s.inflight == 6 and s.requests == 100
    assert quantile(s.buckets, 0.9) == pytest.approx(0.18)
    assert quantile((), 0.9) is None


def test_region_load_per_metric_and_missing_scrapes() -> None:
    now = parse_metrics(METRICS, 10.0)
    before = ReplicaSample(0.0, 0, 50.0, ((0.1, 25.0), (0.2, 50.0), (float("inf"), 50.0)))
    concurrency = Autoscaling(target=2)
    assert region_load(concurrency, {"a": now, "b": now}, {}) == (6.0, 6.0)
    assert region_load(concurrency, {"a": now, "b": None}, {})[0] == 4.0, "a failed scrape counts as at target"
    assert region_load(concurrency, {"a": None}, {}) == (None, None), "nothing read: no sample"
    rps = Autoscaling(metric="rps", target=5)
    assert region_load(rps, {"a": now}, {"a": before}) == (1.0, 5.0)
    latency = Autoscaling(metric="latency", target=0.1)
    load, p90 = region_load(latency, {"a": now}, {"a": before})
    assert p90 == pytest.approx(0.18) and load == pytest.approx(1.8)


def test_split_replicas_by_weight_within_bounds() -> None:
    regions = [
        Region(name="a", weight=3, maxReplicas=10),
        Region(name="b", weight=1),
        Region(name="c", weight=0, minReplicas=1),
    ]
    assert split_replicas(4, regions) == {"a": 3, "b": 1, "c": 1}
    assert split_replicas(None, regions) == {"a": 1, "b": 1, "c": 1}
    assert split_replicas(100, regions)["a"] == 10


def test_service_account_name_sets_the_deprecated_alias_too_and_without_one_no_api_token_is_mounted() -> None:
    pod = deployment(META, spec(serviceAccountName="reader"), Region(name="r1"), 1)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == pod["serviceAccount"] == "reader"
    assert "automountServiceAccountToken" not in pod
    bare = deployment(META, spec(), Region(name="r1"), 1)["spec"]["template"]["spec"]
    assert "serviceAccountName" not in bare and "serviceAccount" not in bare
    assert bare["automountServiceAccountToken"] is False


def test_covers_ignores_defaulted_fields_but_not_changed_or_missing_ones() -> None:
    wanted = service(META, spec(), "r1")["spec"]
    live = {**wanted, "clusterIP": "10.0.0.1", "ports": [{**p, "protocol": "TCP"} for p in wanted["ports"]]}
    assert covers(live, wanted)
    assert not covers({**live, "selector": {"a": "b"}}, wanted)
    assert not covers({**live, "ports": live["ports"] * 2}, wanted)
    assert not covers({k: v for k, v in live.items() if k != "ports"}, wanted)
    assert not covers(None, wanted)


def test_hold_after_invalid_spec_lasts_until_the_generation_changes() -> None:
    hold = Hold.after(Refused("InvalidSpec", "bad"), generation=3, now=100.0)
    assert hold.wait(3, 100.0) == hold.wait(3, 1e9) == float("inf")
    assert hold.wait(4, 100.0) is None


def test_hold_after_create_failed_retries_slowly() -> None:
    hold = Hold.after(Refused("CreateFailed", "forbidden"), generation=3, now=100.0)
    assert hold.wait(3, 110.0) == pytest.approx(CREATE_FAILED_RETRY_SECONDS - 10)
    assert hold.wait(3, 100.0 + CREATE_FAILED_RETRY_SECONDS) is None
    assert hold.wait(4, 110.0) is None
