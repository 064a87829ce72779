"""The gateway end to end: real model servers on pod IPs, the gateway as a process on loopback watching the test
cluster, the operator reading the gateway's load, and tritonclient's V2 HTTP client as the user."""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.gateway.config import GatewayConfig
from modelfleet.runtime.modelio import save_artifact
from modelfleet.runtime.models import build_model
from tests.support.gateway import GatewayProcess
from tests.support.kube import Kube, wait_for
from tests.support.operator import OperatorProcess
from tests.support.serving import PodServers

pytestmark = [pytest.mark.e2e]

HANGZHOU, BEIJING, US = "cn-hangzhou", "cn-beijing", "us-west-1"
ROUTING = {
    "region": HANGZHOU,
    "latencyMs": {HANGZHOU: {BEIJING: 30}, US: {HANGZHOU: 150, BEIJING: 160}},
    "spillFactor": 1.0,
    "queueTimeoutSeconds": 90,
    "ejection": {"baseSeconds": 5},
}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net, shape, classes = build_model("paper-mlp")
    return save_artifact(net, "paper-mlp", shape, classes, tmp_path_factory.mktemp("model"), {})


@pytest.fixture(scope="module")
def gateway(
    kube: Kube, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The gateway, and the operator restarted so that it knows the gateway (status.url, source Gateway)."""
    if operator.proc is None:
        pytest.skip("the operator runs in the cluster (MODELFLEET_E2E_OPERATOR=installed)")
    work = tmp_path_factory.mktemp("gateway")
    gw = GatewayProcess(kube.kubeconfig, ROUTING, work)
    operator.stop()
    with_gateway = OperatorProcess(kube.kubeconfig, work / "operator.log", "e2e-operator", ["--gateway-url", gw.url])
    try:
        gw.wait_ready()
        with_gateway.start()
        yield gw
    finally:
        with_gateway.stop()
        gw.stop()
        operator.start()


def service(name: str, model: Path, regions: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"model": {"uri": f"file://{model}", "name": name}, "regions": regions, "port": 18090, **spec},
    }


def infer(gw: GatewayProcess, model: str, region: str | None = None, timeout: float = 30) -> np.ndarray:
    client = triton.InferenceServerClient(gw.url.removeprefix("http://"), network_timeout=timeout)
    tensor = triton.InferInput("input__0", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.array([[0.1, 0.2, 0.3]], dtype=np.float32), binary_data=False)
    try:
        result = client.infer(model, [tensor], headers={"X-Client-Region": region} if region else None)
        return result.as_numpy("output__0")
    finally:
        client.close()


def served_by_region(servers: PodServers, service_name: str) -> Counter[str]:
    """Requests each region's servers answered, from their own /metrics."""
    counts: Counter[str] = Counter()
    with servers.lock:
        running = {name: s.url for name, s in servers.servers.items() if s.proc.poll() is None}
    for pod, url in running.items():
        region = pod.removeprefix(f"{service_name}-").rsplit("-", 2)[0]
        text = httpx.get(f"{url}/metrics", timeout=5).text
        counts[region] += sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "modelfleet_requests_total"
        )
    return counts


def status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return kube.get_json("inferenceservice", name, "-n", namespace).get("status") or {}


def serving(gw: GatewayProcess, model: str, regions: list[str]) -> None:
    """Waits until the gateway has a probed replica in each region (answers carry the serving region)."""

    def served_in(region: str) -> bool:
        try:
            answer = httpx.get(f"{gw.url}/v2/models/{model}/ready", headers={"X-Client-Region": region}, timeout=5)
        except httpx.TimeoutException:
            return False  # held by the activator: no replica yet
        return answer.headers.get("x-modelfleet-region") == region

    for region in regions:
        wait_for(lambda region=region: served_in(region), timeout=90, what=f"{model} served in {region}")


def test_two_client_regions_go_to_their_nearest_region(
    kube: Kube, namespace: str, gateway: GatewayProcess, model: Path, tmp_path: Path
) -> None:
    regions = [{"name": HANGZHOU, "maxReplicas": 1}, {"name": US, "maxReplicas": 1}]
    kube.apply(service("gw-near", model, regions, autoscaling={"enabled": False}), namespace)
    with PodServers(kube, namespace, "gw-near", tmp_path) as servers:
        serving(gateway, "gw-near", [HANGZHOU, US])
        before = served_by_region(servers, "gw-near")
        for _ in range(10):
            infer(gateway, "gw-near", BEIJING)  # Beijing's nearest: Hangzhou (30 ms) rather than US (160 ms)
            infer(gateway, "gw-near", US)
        after = served_by_region(servers, "gw-near")
        assert {r: after[r] - before[r] for r in (HANGZHOU, US)} == {HANGZHOU: 10, US: 10}

    st = status(kube, namespace, "gw-near")
    assert st["url"] == f"{gateway.url}/v2/models/gw-near"
    assert {r["name"]: r["url"] for r in st["regions"]}[US] == f"http://gw-near-{US}.{namespace}.svc.cluster.local"
    # autoscaling off: a scale beyond the regions' summed maxReplicas runs the cap and says so
    kube.kubectl("scale", "mfis", "gw-near", "-n", namespace, "--replicas=5")

    def capped() -> list[dict[str, Any]]:
        events = kube.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=gw-near")["items"]
        return [e for e in events if e["reason"] == "ReplicasCapped"]

    assert "running 2" in wait_for(capped, timeout=30, what="a ReplicasCapped Event")[0]["message"]


def test_killing_a_region_mid_load_loses_no_request(
    kube: Kube, namespace: str, gateway: GatewayProcess, model: Path, tmp_path: Path
) -> None:
    regions = [{"name": HANGZHOU, "maxReplicas": 1}, {"name": BEIJING, "maxReplicas": 1}]
    kube.apply(service("gw-failover", model, regions, autoscaling={"enabled": False}), namespace)
    with PodServers(kube, namespace, "gw-failover", tmp_path) as servers:
        serving(gateway, "gw-failover", [HANGZHOU, BEIJING])
        stop, results = threading.Event(), Counter[str]()

        def user() -> None:
            while not stop.is_set():
                try:
                    infer(gateway, "gw-failover", HANGZHOU)
                    results["ok"] += 1
                except Exception as exc:
                    results[f"lost: {exc}"] += 1

        with ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                pool.submit(user)
            wait_for(lambda: results["ok"] >= 40, what="load flowing")
            with servers.lock:
                for name, server in servers.servers.items():
                    if name.startswith(f"gw-failover-{HANGZHOU}-"):
                        server.proc.kill()
                answered_before_kill = results["ok"]
            wait_for(lambda: results["ok"] >= answered_before_kill + 150, what="load after the kill")
            stop.set()
        assert [k for k in results if k != "ok"] == []
        # Hangzhou is dead, so everything answered after the kill was Beijing's (less the 4 users' in-flight ones).
        assert served_by_region(servers, "gw-failover")[BEIJING] >= results["ok"] - answered_before_kill - 4
        assert gateway.metric("modelfleet_gateway_ejections_total", service="gw-failover", region=HANGZHOU) >= 1


def test_a_saturated_region_spills_to_the_next_nearest(
    kube: Kube, namespace: str, gateway: GatewayProcess, model: Path, tmp_path: Path
) -> None:
    regions = [{"name": HANGZHOU, "maxReplicas": 1}, {"name": BEIJING, "maxReplicas": 1}]
    slow = {"maxBatchSize": 64, "maxDelayMs": 200}  # each request waits for a batch: requests pile up in flight
    autoscaling = {"target": 2, "targetUtilization": 1.0}  # spill above 2 in flight per replica
    kube.apply(service("gw-spill", model, regions, batching=slow, autoscaling=autoscaling), namespace)
    with PodServers(kube, namespace, "gw-spill", tmp_path) as servers:
        serving(gateway, "gw-spill", [HANGZHOU, BEIJING])
        before = served_by_region(servers, "gw-spill")
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: infer(gateway, "gw-spill", HANGZHOU), range(60)))
        assert len(answers) == 60
        after = served_by_region(servers, "gw-spill")
        spilled = after[BEIJING] - before[BEIJING]
        assert spilled >= 10, after  # 6 clients, 2 in flight at most in Hangzhou: most of the rest in Beijing
        # some by spillover, the rest because Hangzhou's queueing shows in its measured latency
        assert 1 <= gateway.metric("modelfleet_gateway_spills_total", service="gw-spill", region=HANGZHOU) <= spilled


def test_a_region_at_zero_serves_its_first_request_and_scales_from_zero(
    kube: Kube, namespace: str, gateway: GatewayProcess, model: Path, tmp_path: Path
) -> None:
    regions = [{"name": HANGZHOU, "minReplicas": 0, "maxReplicas": 2}]
    autoscaling = {"scaleToZero": True, "target": 2, "intervalSeconds": 1, "scaleToZeroGracePeriodSeconds": 600}
    kube.apply(service("gw-cold", model, regions, autoscaling=autoscaling), namespace)
    st = wait_for(
        lambda: (s := status(kube, namespace, "gw-cold")).get("regions", [{}])[0].get("reason") == "ScaledToZero" and s,
        what="a region at zero",
    )
    assert st["url"] == f"{gateway.url}/v2/models/gw-cold"
    refused = kube.kubectl("scale", "mfis", "gw-cold", "-n", namespace, "--replicas=2", check=False)
    assert refused.returncode != 0 and "autoscaling" in refused.stderr, refused.stderr

    with PodServers(kube, namespace, "gw-cold", tmp_path):
        answer = infer(gateway, "gw-cold", HANGZHOU, timeout=120)  # held until a replica is up, then answered
    assert answer.shape == (1, 2)
    dep = kube.get_json("deployment", f"gw-cold-{HANGZHOU}", "-n", namespace)
    assert dep["spec"]["replicas"] >= 1
    events = kube.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=gw-cold")["items"]
    assert any(e["reason"] == "ScaledUp" and "0 ->" in e["message"] for e in events), events
    assert gateway.metric("modelfleet_gateway_activations_total", service="gw-cold") == 1


def test_chart_renders_the_gateway_global_or_per_region(kube: Kube) -> None:
    chart = Path(__file__).resolve().parents[2] / "charts" / "modelfleet"

    def render(*sets: str, check: bool = True) -> Any:
        args = [str(kube.bin_dir / "helm"), "template", "mf", str(chart), "--set", "gateway.enabled=true"]
        result = subprocess.run([*args, *(a for s in sets for a in ("--set", s))], capture_output=True, text=True)
        if not check:
            return result
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]

    docs = render("gateway.latencyMs.cn-hangzhou.us-west-1=150", "gateway.region=cn-hangzhou")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "mf-modelfleet-gateway"), ("Service", "mf-modelfleet-gateway"),
            ("Service", "mf-modelfleet-gateway-pods"), ("ClusterRole", "mf-modelfleet-gateway")} <= kinds  # fmt: skip
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "mf-modelfleet-gateway")
    assert {v for rule in role["rules"] for v in rule["verbs"]} == {"get", "list", "watch"}  # read-only
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["gateway.yaml"])
    assert GatewayConfig.model_validate(config).latency_ms == {"cn-hangzhou": {"us-west-1": 150.0}}
    operator = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mf-modelfleet")
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELFLEET_GATEWAY_URL"] == "http://mf-modelfleet-gateway.default.svc:8080"

    per_region = render("gateway.mode=perRegion", "gateway.regions={cn-hangzhou,us-west-1}")
    deployments = [d for d in per_region if d["kind"] == "Deployment" and "gateway" in d["metadata"]["name"]]
    assert [d["metadata"]["name"] for d in deployments] == [
        "mf-modelfleet-gateway-cn-hangzhou",
        "mf-modelfleet-gateway-us-west-1",
    ]
    args = deployments[1]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--region=us-west-1" in args
    assert render("gateway.mode=perRegion", check=False).returncode != 0  # perRegion needs regions
    assert render("gateway.clientCidrs.10\\.0\\.0\\.0/8=Not_A_Region", check=False).returncode != 0
