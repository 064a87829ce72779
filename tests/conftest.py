"""Fixtures: one real control plane per test session (or the cluster KUBECONFIG names)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfleet.devcluster import DevCluster, binaries_dir
from tests.support.kube import Kube
from tests.support.operator import OperatorProcess

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[DevCluster | None]:
    """The session's local control plane; None when KUBECONFIG names a cluster to use instead."""
    if os.environ.get("KUBECONFIG"):
        yield None
        return
    cluster = DevCluster(Path(tempfile.mkdtemp(prefix="modelfleet-e2e-")), bin_dir=binaries_dir()).up()
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


@pytest.fixture
def cluster(local_cluster: DevCluster | None) -> DevCluster:
    """The local control plane, for tests that restart, stop or pause its components."""
    if local_cluster is None:
        pytest.skip("the session uses an external cluster (KUBECONFIG)")
    return local_cluster


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
