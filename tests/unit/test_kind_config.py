from __future__ import annotations

from pathlib import Path

import yaml

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[2] / "kind-config.yaml").read_text())


def test_kind_config_is_a_multi_region_cluster() -> None:
    assert CONFIG["apiVersion"] == "kind.x-k8s.io/v1alpha4" and CONFIG["kind"] == "Cluster"
    roles = [n["role"] for n in CONFIG["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") >= 4
    workers = [n.get("labels", {}) for n in CONFIG["nodes"] if n["role"] == "worker"]
    assert all("topology.kubernetes.io/region" in w and "topology.kubernetes.io/zone" in w for w in workers)
    assert len({w["topology.kubernetes.io/region"] for w in workers}) >= 2
    assert {w.get("nvidia.com/gpu.product") for w in workers} >= {"H100", "A100", "T4"}
