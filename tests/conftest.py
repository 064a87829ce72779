"""Fixtures: one real control plane per test session (or the cluster KUBECONFIG names)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfleet.devcluster import DevCluster, binaries_dir
from modelfleet.devcluster.nodes import RUN_PODS_LABEL, default_inventory, fake_nodes, run_pods_inventory
from tests.support.kube import Kube, wait_for
from tests.support.operator import OperatorProcess

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[DevCluster | None]:
    """The session's local control plane; None when KUBECONFIG names a cluster to use instead."""
    if os.environ.get("KUBECONFIG"):
        yield None
        return
    # Without the run-pods nodes: a job that names no region could land there and run for real instead of as KWOK
    # simulates it. The modules that need them add them (run_pods_nodes).
    cluster = DevCluster(
        Path(tempfile.mkdtemp(prefix="modelfleet-e2e-")), bin_dir=binaries_dir(), nodes=fake_nodes(default_inventory())
    ).up()
    try:
        yield cluster
    finally:
        if os.environ.get("MODELFLEET_KEEP_CLUSTER"):
            print(f"\nkeeping the test cluster: KUBECONFIG={cluster.kubeconfig_path}")
        else:
            cluster.down()


@pytest.fixture(scope="session")
def kube(local_cluster: DevCluster | None) -> Kube:
    if local_cluster and local_cluster.bin_dir:
        kube = Kube(local_cluster.kubeconfig_path, local_cluster.bin_dir)
    else:
        kube = Kube(Path(os.environ["KUBECONFIG"]), binaries_dir())
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kube.kubectl("wait", "--for", "condition=Established", "crd", "--all", "--timeout=60s")
    return kube


@pytest.fixture(autouse=True)
def revived_components(request: pytest.FixtureRequest) -> None:
    """Before each test on the local cluster: a control-plane component that exited on its own during an earlier
    test is started again (a kubelet would have restarted it), so one crash does not fail every test after it."""
    if "local_cluster" not in request.fixturenames:
        return
    cluster: DevCluster | None = request.getfixturevalue("local_cluster")
    if cluster is not None and (started := cluster.revive()):
        print(f"\nrestarted control-plane components that had exited: {', '.join(started)}")


@pytest.fixture
def cluster(local_cluster: DevCluster | None) -> DevCluster:
    """The local control plane, for tests that restart, stop or pause its components."""
    if local_cluster is None:
        pytest.skip("the session uses an external cluster (KUBECONFIG)")
    return local_cluster


@pytest.fixture(scope="module")
def run_pods_nodes(kube: Kube, local_cluster: DevCluster | None) -> Iterator[None]:
    """The local cluster's run-pods nodes (their pods run for real, as local processes) while a module needs them."""
    selector = f"{RUN_PODS_LABEL}=true"
    if local_cluster is None:
        if not kube.get_json("nodes", "-l", selector)["items"]:
            pytest.skip("the cluster has no run-pods nodes (the local cluster's pod runner)")
        yield
        return
    nodes = fake_nodes(run_pods_inventory())
    for node in nodes:
        kube.apply(node)

    def ready() -> bool:
        items = kube.get_json("nodes", "-l", selector)["items"]
        return len(items) == len(nodes) and all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
            for n in items
        )

    wait_for(ready, timeout=60, what="run-pods nodes Ready")
    yield
    kube.kubectl("delete", "nodes", "-l", selector, "--wait=false", check=False)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    name = kube.new_namespace()
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def operator(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """modelfleet's operator running as a process against the test cluster for the whole session, unless
    MODELFLEET_E2E_OPERATOR=installed says one already runs in the cluster (the kind run). A fixed identity lets a
    restarted process (after a test's kill -9) take its own unexpired Lease back at once."""
    proc = OperatorProcess(kube.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", "e2e-operator")
    if os.environ.get("MODELFLEET_E2E_OPERATOR") == "installed":
        yield proc
        return
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def local_operator(operator: OperatorProcess) -> OperatorProcess:
    """For tests that kill or replace the operator process."""
    if operator.proc is None:
        pytest.skip("the operator runs in the cluster (MODELFLEET_E2E_OPERATOR=installed)")
    return operator


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """On an e2e failure, attach the operator's log tail to the report."""
    outcome = yield
    report = outcome.get_result()
    proc = item.funcargs.get("operator") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(proc, OperatorProcess):
        report.sections.append(("operator log", proc.log_tail()))
