"""Fixtures: one real control plane per test session (or the cluster KUBECONFIG names)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kube import Kube

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    from modelfleet.devcluster import DevCluster, binaries_dir

    bin_dir = binaries_dir()
    cluster = None
    if external := os.environ.get("KUBECONFIG"):
        kube = Kube(Path(external), bin_dir)
    else:
        cluster = DevCluster(Path(tempfile.mkdtemp(prefix="modelfleet-e2e-")), bin_dir=bin_dir).up()
        kube = Kube(cluster.kubeconfig_path, bin_dir)
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kube.kubectl("wait", "--for", "condition=Established", "crd", "--all", "--timeout=60s")
    try:
        yield kube
    finally:
        if cluster and os.environ.get("MODELFLEET_KEEP_CLUSTER"):
            print(f"\nkeeping the test cluster: KUBECONFIG={cluster.kubeconfig_path}")
        elif cluster:
            cluster.down()


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    name = kube.new_namespace()
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)
