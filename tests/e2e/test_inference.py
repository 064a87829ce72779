"""InferenceService end to end: Deployments per region on the real scheduler, status, rollouts, scale subresource,
and the full autoscaling loop against real model servers on loopback."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from modelfleet.runtime.modelio import save_artifact
from modelfleet.runtime.models import build_model
from tests.support.kube import Kube, wait_for
from tests.support.serving import PodServers

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]


def inference_service(name: str, regions: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "file:///models/m/model.pt"}, "regions": regions, **spec},
    }


def status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return kube.get_json("inferenceservice", name, "-n", namespace).get("status") or {}


def region(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next((r for r in st.get("regions", []) if r["name"] == name), {})


def deployment(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return kube.get_json("deployment", name, "-n", namespace)


def test_two_regions_get_pinned_deployments_on_the_right_gpus(kube: Kube, namespace: str) -> None:
    kube.apply(
        inference_service(
            "twin", [{"name": "cn-beijing"}, {"name": "us-west-1", "minReplicas": 2}],
            resources={"gpus": 1, "gpuType": "T4"},
        ),
        namespace,
    )  # fmt: skip
    ready = wait_for(
        lambda: (s := status(kube, namespace, "twin")).get("readyReplicas") == 3 and s, what="3 replicas ready"
    )  # a GPU freed by an earlier test's pod frees only when that pod's grace period ends
    assert ready["phase"] == "Ready" and ready["replicas"] == 3
    assert ready["regionNames"] == "cn-beijing,us-west-1"
    assert region(ready, "us-west-1")["url"] == f"http://twin-us-west-1.{namespace}.svc.cluster.local"
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"] for n in kube.get_json("nodes")["items"]}
    pods = kube.get_json("pods", "-n", namespace, "-l", "modelfleet.dev/service-name=twin")["items"]
    assert len(pods) == 3
    for pod in pods:
        labels = nodes[pod["spec"]["nodeName"]]
        assert labels["topology.kubernetes.io/region"] == pod["metadata"]["labels"]["modelfleet.dev/region"]
        assert labels["nvidia.com/gpu.product"] == "T4"
        probe = pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]
        assert probe["path"] == "/v2/health/ready"
    dep = deployment(kube, namespace, "twin-cn-beijing")
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert kube.get_json("service", "twin-us-west-1", "-n", namespace)["spec"]["ports"][0]["port"] == 80


def test_changed_model_uri_rolls_out_and_removed_region_is_cleaned_up(kube: Kube, namespace: str) -> None:
    kube.apply(inference_service("roll", [{"name": "cn-hangzhou"}, {"name": "cn-beijing"}]), namespace)
    first = wait_for(lambda: (s := status(kube, namespace, "roll")).get("phase") == "Ready" and s, what="Ready")
    old_revision = region(first, "cn-hangzhou")["revision"]
    kube.kubectl(
        "patch", "mfis", "roll", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"model": {"uri": "file:///models/m/v2.pt"}, "regions": [{"name": "cn-hangzhou"}]}}',
    )  # fmt: skip

    def rolled() -> bool:
        st = status(kube, namespace, "roll")
        entry = region(st, "cn-hangzhou")
        return (
            st.get("phase") == "Ready"
            and entry.get("revision") != old_revision
            and st.get("regionNames") == "cn-hangzhou"
        )

    wait_for(rolled, what="new revision serving")
    env = deployment(kube, namespace, "roll-cn-hangzhou")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MODELFLEET_MODEL_PATH", "value": "/models/m/v2.pt"} in env
    wait_for(
        lambda: kube.kubectl("get", "deployment", "roll-cn-beijing", "-n", namespace, check=False).returncode != 0,
        what="removed region's Deployment deleted",
    )
    assert kube.kubectl("get", "service", "roll-cn-beijing", "-n", namespace, check=False).returncode != 0


def test_region_without_capacity_reports_unschedulable_while_others_serve(kube: Kube, namespace: str) -> None:
    kube.apply(
        inference_service(
            "h100", [{"name": "cn-beijing"}, {"name": "us-west-1"}], resources={"gpus": 8, "gpuType": "H100"}
        ),
        namespace,
    )
    st = wait_for(
        lambda: (
            (s := status(kube, namespace, "h100")).get("phase") == "Degraded"
            and region(s, "cn-beijing").get("reason") == "Unschedulable"
            and s
        ),
        what="cn-beijing Unschedulable",
    )
    assert "node" in region(st, "cn-beijing")["message"]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "cn-beijing: Unschedulable" in ready["message"]


def test_scale_subresource_drives_replicas_when_autoscaling_is_off(kube: Kube, namespace: str) -> None:
    kube.apply(
        inference_service(
            "manual", [{"name": "cn-hangzhou", "weight": 3, "maxReplicas": 10}, {"name": "us-west-1", "weight": 1}],
            autoscaling={"enabled": False},
        ),
        namespace,
    )  # fmt: skip
    wait_for(lambda: status(kube, namespace, "manual").get("readyReplicas") == 2, what="min replicas")
    kube.kubectl("scale", "inferenceservice", "manual", "-n", namespace, "--replicas=4")
    st = wait_for(lambda: (s := status(kube, namespace, "manual")).get("readyReplicas") == 4 and s, what="scaled to 4")
    assert region(st, "cn-hangzhou")["replicas"] == 3 and region(st, "us-west-1")["replicas"] == 1
    scale = kube.get_json("inferenceservice", "manual", "-n", namespace, "--subresource=scale")
    assert scale["status"]["replicas"] == 4 and "modelfleet.dev/service-name=manual" in scale["status"]["selector"]


def test_fields_removed_from_the_spec_leave_the_deployment_and_a_deleted_service_comes_back(
    kube: Kube, namespace: str
) -> None:
    extras = {
        "serviceAccountName": "default",
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        "podMetadata": {"labels": {"team": "search", "tier": "gold"}},
    }
    regions = [{"name": "cn-hangzhou"}]
    kube.apply(inference_service("drift", regions, autoscaling={"enabled": False}, **extras), namespace)
    wait_for(lambda: status(kube, namespace, "drift").get("phase") == "Ready", what="Ready")
    dep = kube.get_json("deployment", "drift-cn-hangzhou", "-n", namespace, "--show-managed-fields")
    managers = {(m["manager"], m["operation"]) for m in dep["metadata"]["managedFields"]}
    assert ("modelfleet", "Apply") in managers, managers
    kube.kubectl("annotate", "deployment", "drift-cn-hangzhou", "-n", namespace, "example.com/owner=ops")

    old = kube.get_json("service", "drift-cn-hangzhou", "-n", namespace)["metadata"]["uid"]
    kube.kubectl("delete", "service", "drift-cn-hangzhou", "-n", namespace)
    back = wait_for(
        lambda: kube.get_json("service", "drift-cn-hangzhou", "-n", namespace)["metadata"]["uid"] != old,
        timeout=30,
        what="deleted region Service recreated",
    )
    assert back

    kube.apply(
        inference_service("drift", regions, autoscaling={"enabled": False}, podMetadata={"labels": {"team": "search"}}),
        namespace,
    )

    def cleaned() -> dict[str, Any] | None:
        dep = deployment(kube, namespace, "drift-cn-hangzhou")
        pod = dep["spec"]["template"]["spec"]
        left = {"serviceAccountName", "serviceAccount"} & pod.keys()
        volumes = [v["name"] for v in pod.get("volumes", [])]
        mounts = [m["name"] for m in pod["containers"][0].get("volumeMounts", [])]
        only_tmp = volumes == mounts == ["modelfleet-tmp"]  # the operator's own emptyDir at /tmp stays
        if left or not only_tmp or "tier" in dep["spec"]["template"]["metadata"]["labels"]:
            return None
        return dep

    dep = wait_for(cleaned, what="removed fields gone from the Deployment")
    assert dep["spec"]["template"]["metadata"]["labels"]["team"] == "search"
    assert dep["metadata"]["annotations"]["example.com/owner"] == "ops", "another manager's field is left alone"


def test_spec_only_the_api_refuses_ends_invalid_spec_without_retrying_and_heals(kube: Kube, namespace: str) -> None:
    two_sources = {"name": "scratch", "emptyDir": {}, "configMap": {"name": "cfg"}}
    mounts = [{"name": "scratch", "mountPath": "/scratch"}]
    regions = [{"name": "cn-hangzhou"}]
    kube.apply(inference_service("refused", regions, volumes=[two_sources], volumeMounts=mounts), namespace)

    def refused() -> dict[str, Any] | None:
        st = status(kube, namespace, "refused")
        ready = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), {})
        return ready if st.get("phase") == "Failed" and ready.get("reason") == "InvalidSpec" else None

    ready = wait_for(refused, what="Ready=False, reason InvalidSpec")
    assert ready["status"] == "False" and "spec.template.spec.volumes[0]" in ready["message"], ready
    assert kube.kubectl("get", "deployment", "refused-cn-hangzhou", "-n", namespace, check=False).returncode != 0

    def warnings() -> list[dict[str, Any]]:
        events = kube.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=refused")["items"]
        return [e for e in events if e["type"] == "Warning" and e["reason"] == "InvalidSpec"]

    assert wait_for(warnings, what="a Warning Event")[0]["message"] == ready["message"]
    version = kube.get_json("inferenceservice", "refused", "-n", namespace)["metadata"]["resourceVersion"]
    time.sleep(12)  # longer than the loop's resync: a refused generation is not retried
    assert kube.get_json("inferenceservice", "refused", "-n", namespace)["metadata"]["resourceVersion"] == version
    assert len(warnings()) == 1

    kube.apply(
        inference_service("refused", regions, volumes=[{"name": "scratch", "emptyDir": {}}], volumeMounts=mounts),
        namespace,
    )
    healed = wait_for(lambda: (s := status(kube, namespace, "refused")).get("phase") == "Ready" and s, what="healed")
    assert next(c for c in healed["conditions"] if c["type"] == "Ready")["status"] == "True"


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model, shape, classes = build_model("paper-mlp")
    return save_artifact(model, "paper-mlp", shape, classes, tmp_path_factory.mktemp("model"), {})


def generate_load(urls: Any, stop: threading.Event, concurrency: int) -> None:
    body = {"inputs": [{"name": "input__0", "shape": [1, 3], "datatype": "FP32", "data": [[0.1, 0.2, 0.3]]}]}

    async def worker(turn: itertools.count) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while not stop.is_set():
                targets = urls()
                if not targets:
                    await asyncio.sleep(0.1)
                    continue
                try:
                    await client.post(f"{targets[next(turn) % len(targets)]}/v2/models/auto/infer", json=body)
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)

    async def main() -> None:
        turn = itertools.count()
        await asyncio.gather(*(worker(turn) for _ in range(concurrency)))

    asyncio.run(main())


def test_autoscaler_scales_up_under_real_load_and_back_down(
    kube: Kube, namespace: str, slow_model: Path, tmp_path: Path
) -> None:
    kube.apply(
        inference_service(
            "auto", [{"name": "cn-hangzhou", "minReplicas": 1, "maxReplicas": 4}],
            model={"uri": f"file://{slow_model}", "name": "auto"},
            port=18080,
            batching={"maxBatchSize": 64, "maxDelayMs": 250},
            autoscaling={
                "metric": "concurrency", "target": 2, "targetUtilization": 1.0, "stableWindowSeconds": 12,
                "panicWindowSeconds": 4, "scaleDownDelaySeconds": 6, "intervalSeconds": 1,
            },
        ),
        namespace,
    )  # fmt: skip
    with PodServers(kube, namespace, "auto", tmp_path) as servers:
        wait_for(lambda: len(servers.urls()) == 1, timeout=90, what="first server ready")
        stop = threading.Event()
        load = threading.Thread(target=generate_load, args=(servers.urls, stop, 12), daemon=True)
        load.start()
        loads: list[float] = []

        def scaled_up() -> bool:
            # The server answers in milliseconds, so one status read may catch an instant with nothing in flight:
            # the load reported over the climb is what must have been seen.
            loads.append(region(status(kube, namespace, "auto"), "cn-hangzhou").get("observedLoad") or 0.0)
            return deployment(kube, namespace, "auto-cn-hangzhou")["spec"]["replicas"] >= 3

        try:
            wait_for(scaled_up, timeout=60, what="scale up under load")
            assert max(loads) > 0
        finally:
            stop.set()
            load.join(timeout=15)
        wait_for(
            lambda: deployment(kube, namespace, "auto-cn-hangzhou")["spec"]["replicas"] == 1,
            timeout=90,
            what="scale back down when idle",
        )
    events = kube.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=auto")["items"]
    reasons = {e["reason"] for e in events}
    assert {"ScaledUp", "ScaledDown"} <= reasons, reasons
