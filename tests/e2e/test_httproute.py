"""HTTPRoutes for Gateway API users: the operator, told a Gateway, writes one per InferenceService once the cluster
serves the real HTTPRoute CRD (from sigs.k8s.io/gateway-api), with a header rule per region, and the route goes with
its service. Nothing is routed through them (no Gateway implementation runs here)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelfleet.devcluster.control_plane import BUILD_SCRIPT
from tests.support.kube import Kube, wait_for
from tests.support.operator import OperatorProcess

pytestmark = [pytest.mark.e2e]

CRD = "httproutes.gateway.networking.k8s.io"
CRDS_SCRIPT = BUILD_SCRIPT.with_name("gateway-api-crds.sh")
PARENT = ["--httproute-parent", "gateways/edge", "--httproute-header", "X-Edge-Region"]


@pytest.fixture(scope="module")
def route_operator(
    kube: Kube, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator restarted with a Gateway to attach routes to (the session's own comes back afterwards)."""
    if operator.proc is None:
        pytest.skip("the operator runs in the cluster (MODELFLEET_E2E_OPERATOR=installed)")
    operator.stop()
    routes = OperatorProcess(
        kube.kubeconfig, tmp_path_factory.mktemp("routes") / "operator.log", "e2e-operator", PARENT
    )
    try:
        yield routes
    finally:
        routes.stop()
        kube.kubectl("delete", "crd", CRD, "--ignore-not-found", check=False)
        operator.start()


def service(name: str, regions: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "file:///models/m/model.pt", "name": f"{name}-model"},
            "regions": [{"name": r} for r in regions],
            "autoscaling": {"enabled": False},
            "replicas": len(regions),
        },
    }


def route(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    found = kube.kubectl("get", "httproute", name, "-n", namespace, "-o", "json", check=False)
    return None if found.returncode else kube.get_json("httproute", name, "-n", namespace)


def test_without_the_crd_the_operator_writes_no_route(
    kube: Kube, namespace: str, route_operator: OperatorProcess
) -> None:
    route_operator.start()
    try:
        kube.apply(service("no-crd", ["cn-hangzhou"]), namespace)
        wait_for(lambda: kube.get_json("inferenceservice", "no-crd", "-n", namespace).get("status", {}).get("regions"),
                 what="the service reconciled")  # fmt: skip
        assert "are not served" in route_operator.log_tail(100_000)
    finally:
        route_operator.stop()


def test_a_route_per_service_with_a_rule_per_region_gone_with_the_service(
    kube: Kube, namespace: str, route_operator: OperatorProcess
) -> None:
    crds = Path(subprocess.run(["bash", str(CRDS_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
                .stdout.strip().splitlines()[-1])  # fmt: skip
    kube.kubectl("apply", "--server-side", "-f", str(crds / f"gateway.networking.k8s.io_{CRD.split('.')[0]}.yaml"))
    kube.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s")
    route_operator.start()
    kube.apply(service("routed", ["cn-hangzhou", "us-west-1"]), namespace)

    written = wait_for(lambda: route(kube, namespace, "routed"), what="the HTTPRoute")
    parent = written["spec"]["parentRefs"][0]
    assert (parent["kind"], parent["namespace"], parent["name"]) == ("Gateway", "gateways", "edge")
    owner = written["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("InferenceService", "routed")
    rules = written["spec"]["rules"]
    assert [r["backendRefs"][0]["name"] for r in rules] == [
        "routed-cn-hangzhou",
        "routed-us-west-1",
        "routed-cn-hangzhou",
    ]
    assert [[h["value"] for h in r["matches"][0].get("headers", [])] for r in rules] == [
        ["cn-hangzhou"],
        ["us-west-1"],
        [],
    ]
    assert {r["matches"][0]["headers"][0]["name"] for r in rules[:2]} == {"X-Edge-Region"}
    assert {r["matches"][0]["path"]["value"] for r in rules} == {"/v2/models/routed-model"}

    patch = '{"spec": {"regions": [{"name": "us-west-1"}], "replicas": 1}}'
    kube.kubectl("patch", "inferenceservice", "routed", "-n", namespace, "--type=merge", "-p", patch)
    wait_for(lambda: len(route(kube, namespace, "routed")["spec"]["rules"]) == 2, what="the removed region's rule gone")

    kube.kubectl("delete", "inferenceservice", "routed", "-n", namespace)
    wait_for(lambda: route(kube, namespace, "routed") is None, what="the HTTPRoute deleted with its service")
