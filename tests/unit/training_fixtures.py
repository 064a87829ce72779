"""A two-worker TrainingJob and its worker pods as the builders make them, for the unit tests."""

from __future__ import annotations

from typing import Any

from modelfleet.api.training import TrainingJobSpec
from modelfleet.contract import GANG_SCHEDULING_GATE
from modelfleet.scheduling.nodes import NodeInfo
from modelfleet.training.builders import worker_pod

META = {"name": "job", "namespace": "ns", "uid": "u1"}
NODES = (NodeInfo("n0", "r1", "z1", "H100", 8, 8), NodeInfo("n1", "r1", "z1", "A100", 8, 8))


def spec(**fields: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({"workers": {"replicas": 2}, "resources": {"gpus": 8}, **fields})


def pod(
    index: int,
    phase: str = "Running",
    attempt: int = 0,
    exit_code: int | None = None,
    gated: bool = False,
    at: str = "",
) -> dict[str, Any]:
    """Worker `index` on node n<index>; `exit_code` and `at` make it terminated. `gated`: unscheduled, held by the
    gate earlier versions of the operator created workers with."""
    p = worker_pod(META, spec(), index, NODES, attempt)
    p["spec"]["nodeName"] = None if gated else NODES[index].name
    if gated:
        p["spec"]["schedulingGates"] = [{"name": GANG_SCHEDULING_GATE}]
    p["status"] = {"phase": phase}
    if exit_code is not None:
        p["status"]["containerStatuses"] = [{"state": {"terminated": {"exitCode": exit_code, "finishedAt": at}}}]
    return p


def terminating_pod(p: dict[str, Any]) -> dict[str, Any]:
    p["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:30Z"
    return p
