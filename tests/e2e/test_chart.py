"""The Helm chart: lint, schema, install on the real control plane, and its RBAC proven by running the operator
as the chart's ServiceAccount."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.kube import Kube, wait_for
from tests.support.operator import OperatorProcess
from tests.support.training import training_job, wait_phase

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelfleet"


def helm(kube: Kube, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(kube.bin_dir / "helm"), "--kubeconfig", str(kube.kubeconfig), *args], capture_output=True, text=True
    )
    if check and result.returncode:
        raise AssertionError(f"helm {' '.join(args)}: {result.stderr}")
    return result


def test_chart_lints_renders_and_refuses_bad_values(kube: Kube) -> None:
    assert "0 chart(s) failed" in helm(kube, "lint", str(CHART)).stdout
    rendered = list(yaml.safe_load_all(helm(kube, "template", "mf", str(CHART), "--set", "replicas=2").stdout))
    kinds = {d["kind"] for d in rendered if d}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service"} <= kinds
    deployment = next(d for d in rendered if d and d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert "--lease-name=mf-modelfleet" in container["args"], "replicas campaign for the release's Lease"
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert {"Role", "RoleBinding"} <= kinds and "ClusterKopfPeering" not in kinds
    cluster_role = next(d for d in rendered if d and d["kind"] == "ClusterRole")
    assert all("coordination.k8s.io" not in rule["apiGroups"] for rule in cluster_role["rules"]), "Leases: one Role"
    bad = helm(kube, "template", "mf", str(CHART), "--set", "replicas=0", check=False)
    assert bad.returncode != 0 and "replicas" in bad.stderr
    bad = helm(kube, "template", "mf", str(CHART), "--set", "gpuSpeeds.H100=fast", check=False)
    assert bad.returncode != 0 and "gpuSpeeds" in bad.stderr
    bad = helm(kube, "template", "mf", str(CHART), "--set", "leaderElection.retryPeriod=0", check=False)
    assert bad.returncode != 0 and "retryPeriod" in bad.stderr


def test_chart_crds_match_the_generated_ones() -> None:
    for name in ("trainingjobs.yaml", "inferenceservices.yaml"):
        assert (CHART / "crds" / name).read_text() == (ROOT / "crds" / name).read_text()


def service_account_kubeconfig(kube: Kube, namespace: str, account: str, path: Path) -> Path:
    token = kube.kubectl("create", "token", account, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": account}}],
        "current-context": "c",
    }))  # fmt: skip
    return path


def test_operator_runs_as_the_charts_service_account(
    kube: Kube, namespace: str, local_operator: OperatorProcess, tmp_path: Path
) -> None:
    helm(kube, "upgrade", "--install", "mf", str(CHART), "-n", "modelfleet-system", "--create-namespace")
    for kind, name in (
        ("deployment", "mf-modelfleet"),
        ("serviceaccount", "mf-modelfleet"),
        ("service", "mf-modelfleet-metrics"),
    ):
        kube.kubectl("get", kind, name, "-n", "modelfleet-system")
    kube.kubectl("get", "clusterrole", "mf-modelfleet")
    config = service_account_kubeconfig(kube, "modelfleet-system", "mf-modelfleet", tmp_path / "sa.kubeconfig")
    as_sa = Kube(config, kube.bin_dir)
    refused = as_sa.kubectl("get", "secrets", "-A", check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()
    assert as_sa.kubectl("auth", "can-i", "delete", "nodes", check=False).stdout.strip() == "no"
    assert as_sa.kubectl("auth", "can-i", "create", "pods", "-n", namespace).stdout.strip() == "yes"

    def can_i(verb: str, resource: str, ns: str) -> str:
        return as_sa.kubectl("auth", "can-i", verb, resource, "-n", ns, check=False).stdout.strip()

    for verb in ("create", "update"):  # the Lease: in the release's namespace, and only there
        assert can_i(verb, "leases/mf-modelfleet", "modelfleet-system") == "yes"
        assert can_i(verb, "leases", namespace) == "no"
    assert can_i("update", "leases/other", "modelfleet-system") == "no"

    local_operator.stop()
    limited = OperatorProcess(
        config,
        tmp_path / "sa-operator.log",
        "sa-operator",
        ["--lease-namespace=modelfleet-system", "--lease-name=mf-modelfleet"],
    )
    limited.start()
    try:
        wait_for(lambda: "leads (lease modelfleet-system/mf-modelfleet)" in limited.log_tail(), what="the lease taken")
        kube.apply(
            training_job("rbac", workers=2, gpus=1, gpu_type="T4", exit_code=0, ttlSecondsAfterFinished=2), namespace
        )
        kube.apply({
            "apiVersion": "modelfleet.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "rbac"},
            "spec": {"model": {"uri": "file:///m.pt"}, "regions": [{"name": "cn-beijing"}, {"name": "us-west-1"}]},
        }, namespace)  # fmt: skip
        wait_phase(kube, namespace, "rbac", "Succeeded", timeout=60)
        wait_for(
            lambda: (
                kube.get_json("inferenceservice", "rbac", "-n", namespace).get("status", {}).get("phase") == "Ready"
            ),
            what="InferenceService Ready under the chart's RBAC",
        )
        kube.kubectl(
            "patch",
            "mfis",
            "rbac",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"spec":{"regions":[{"name":"us-west-1"}]}}',
        )
        wait_for(
            lambda: kube.kubectl("get", "deployment", "rbac-cn-beijing", "-n", namespace, check=False).returncode != 0,
            what="region removed under the chart's RBAC",
        )
        wait_for(
            lambda: "rbac" not in kube.kubectl("get", "tj", "-n", namespace, "-o", "name").stdout, what="TTL delete"
        )
        log = limited.log_tail(200_000)
        assert "403" not in log and "Forbidden" not in log, log[-3000:]
    finally:
        limited.stop()
        local_operator.start()
