"""The Helm chart: lint, schema, install on the real control plane, and its RBAC proven by running the operator
as the chart's ServiceAccount."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def rendered(kube: Kube, *values: str) -> list[dict[str, Any]]:
    sets = [arg for value in values for arg in ("--set", value)]
    return [d for d in yaml.safe_load_all(helm(kube, "template", "mf", str(CHART), *sets).stdout) if d]


def test_chart_renders_the_policy_and_takes_global_values(kube: Kube) -> None:
    default = rendered(kube, "global.imageRegistry=example.com")  # a subchart gets its umbrella's globals
    container = next(d for d in default if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODELFLEET_POLICY_ALLOW_HOST_PATH"] == "false"
    assert env["MODELFLEET_POLICY_ALLOW_PICKLED_MODELS"] == "false"
    assert env["MODELFLEET_POLICY_PROMETHEUS_URLS"] == ""
    policy = next(d for d in default if d["kind"] == "ValidatingAdmissionPolicy")
    assert [("hostPath" in str(v), "pytorch" in str(v)) for v in policy["spec"]["validations"]] == [
        (True, False),
        (False, True),
    ]
    binding = next(d for d in default if d["kind"] == "ValidatingAdmissionPolicyBinding")
    assert "matchResources" not in binding["spec"] and binding["spec"]["validationActions"] == ["Deny"]
    only_pickles = next(
        d for d in rendered(kube, "policy.allowHostPath=true") if d["kind"] == "ValidatingAdmissionPolicy"
    )
    assert "variables" not in only_pickles["spec"] and len(only_pickles["spec"]["validations"]) == 1
    for values in (("policy.allowHostPath=true", "policy.allowPickledModels=true"), ("policy.admission=false",)):
        assert not {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} & {
            d["kind"] for d in rendered(kube, *values)
        }
    urls = rendered(kube, "policy.prometheusUrls={http://prom.monitoring.svc:9090,https://thanos.example.com/q}")
    container = next(d for d in urls if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {
        "name": "MODELFLEET_POLICY_PROMETHEUS_URLS",
        "value": "http://prom.monitoring.svc:9090 https://thanos.example.com/q",
    } in container["env"]
    bad = helm(kube, "template", "mf", str(CHART), "--set", "policy.allowHostPath=maybe", check=False)
    assert bad.returncode != 0 and "allowHostPath" in bad.stderr


CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces", "nodes", "priorityclasses", "gpuquotas"}


def test_chart_rbac_is_namespaced_when_watch_namespaces_is_set(kube: Kube) -> None:
    cluster_wide = rendered(kube)
    assert not [d for d in cluster_wide if d["kind"] == "Role" and d["metadata"]["name"] == "mf-modelfleet"]
    docs = rendered(kube, "watchNamespaces={team-a,team-b}")
    cluster_role = next(d for d in docs if d["kind"] == "ClusterRole")
    cluster_wide_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert {"customresourcedefinitions", "namespaces", "nodes"} <= cluster_wide_resources <= CLUSTER_SCOPED
    roles = {
        d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "mf-modelfleet"
    }
    bindings = {
        d["metadata"]["namespace"]
        for d in docs
        if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "mf-modelfleet"
    }
    assert set(roles) == bindings == {"team-a", "team-b"}
    whole = next(d for d in cluster_wide if d["kind"] == "ClusterRole")["rules"]
    assert roles["team-a"]["rules"] == [r for r in whole if not CLUSTER_SCOPED & set(r["resources"])]
    binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding")
    selector = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert selector == [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}]


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


@contextmanager
def operator_as_service_account(
    local_operator: OperatorProcess, config: Path, log: Path, args: Sequence[str] = ()
) -> Iterator[OperatorProcess]:
    """The operator run with the chart's ServiceAccount's token in place of the session's (admin) operator."""
    local_operator.stop()
    limited = OperatorProcess(
        config, log, "sa-operator", ["--lease-namespace=modelfleet-system", "--lease-name=mf-modelfleet", *args]
    )
    limited.start()
    try:
        wait_for(lambda: "leads (lease modelfleet-system/mf-modelfleet)" in limited.log_tail(), what="the lease taken")
        yield limited
        log_text = limited.log_tail(200_000)
        assert "403" not in log_text and "Forbidden" not in log_text, log_text[-3000:]
    finally:
        limited.stop()
        local_operator.start()


@pytest.mark.kwok
def test_operator_runs_as_the_charts_service_account(
    kube: Kube, namespace: str, local_operator: OperatorProcess, tmp_path: Path
) -> None:
    install = ("upgrade", "--install", "mf", str(CHART), "-n", "modelfleet-system", "--create-namespace")
    helm(kube, *install, "--set", "policy.admission=false")  # the admission policy is test_policy's to apply
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

    def can_i(verb: str, resource: str, ns: str, *more: str) -> str:
        return as_sa.kubectl("auth", "can-i", verb, resource, "-n", ns, *more, check=False).stdout.strip()

    for ns in (namespace, "default"):  # cluster-wide mode: workloads in every namespace
        assert can_i("create", "pods", ns) == "yes"
        assert can_i("patch", "trainingjobs.modelfleet.dev", ns, "--subresource=status") == "yes"
    for verb in ("create", "update"):  # the Lease: in the release's namespace, and only there
        assert can_i(verb, "leases/mf-modelfleet", "modelfleet-system") == "yes"
        assert can_i(verb, "leases", namespace) == "no"
    assert can_i("update", "leases/other", "modelfleet-system") == "no"

    with operator_as_service_account(local_operator, config, tmp_path / "sa-operator.log"):
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


def test_operator_runs_namespaced_as_the_charts_service_account(
    kube: Kube, namespace: str, local_operator: OperatorProcess, tmp_path: Path
) -> None:
    """watchNamespaces: the ServiceAccount may write only in the watched namespaces, and that is enough."""
    outside = kube.new_namespace("outside")
    install = ("upgrade", "--install", "mf", str(CHART), "-n", "modelfleet-system", "--create-namespace")
    helm(kube, *install, "--set", "policy.admission=false", "--set", f"watchNamespaces={{{namespace}}}")
    try:
        config = service_account_kubeconfig(kube, "modelfleet-system", "mf-modelfleet", tmp_path / "sa.kubeconfig")
        as_sa = Kube(config, kube.bin_dir)

        def can_i(*args: str) -> str:
            return as_sa.kubectl("auth", "can-i", *args, check=False).stdout.strip()

        for check in (
            ("create", "pods"),
            ("delete", "pods"),
            ("create", "deployments.apps"),
            ("create", "services"),
            ("create", "events"),
            ("patch", "trainingjobs.modelfleet.dev", "--subresource=status"),
            ("patch", "inferenceservices.modelfleet.dev", "--subresource=status"),
        ):
            assert can_i(*check, "-n", namespace) == "yes", check
            assert can_i(*check, "-n", outside) == "no", check
            assert can_i(*check, "-A") == "no", check
        assert can_i("list", "nodes") == can_i("watch", "customresourcedefinitions.apiextensions.k8s.io") == "yes"
        assert can_i("list", "pods", "-A") == "no"
        refused = as_sa.kubectl("run", "intruder", "--image=x", "-n", outside, check=False)
        assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr

        log = tmp_path / "sa-operator.log"
        with operator_as_service_account(local_operator, config, log, [f"--namespace={namespace}"]):
            kube.apply(training_job("scoped", workers=2, gpus=1, gpu_type="T4"), namespace)
            running = wait_phase(kube, namespace, "scoped", "Running", timeout=60)
            assert running["workers"]["running"] == 2
            kube.kubectl("delete", "trainingjob", "scoped", "-n", namespace)
    finally:
        helm(kube, *install, "--set", "policy.admission=false")  # cluster-wide again, as the other tests expect
        kube.kubectl("delete", "namespace", outside, "--wait=false", check=False)
