"""Placing a gang when its proof of owner fails: the placement status write meets a job that changed (a conflict) or
went, and the gang, still gated, is deleted and its GPUs freed; no worker is ungated. The API calls are stand-ins
that record what placement asked for: the order and the clean-up are what is tested here, against no cluster."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

from modelfleet import kube
from modelfleet.capacity import CapacityStore
from modelfleet.loops import ObjectGone
from modelfleet.owned import WORKER_PODS
from modelfleet.scheduling.planner import Plan
from modelfleet.training import placement
from modelfleet.training.status import Placed
from tests.unit.training_fixtures import META, NODES, spec


def ready_node(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"{name}-uid", "resourceVersion": "1"},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The API calls placement makes, in order; two Ready nodes of 8 free GPUs in a capacity store of its own."""
    made: list[tuple[str, ...]] = []
    capacity = CapacityStore()
    for node in NODES:
        capacity.nodes.apply_event(ready_node(node.name))
    monkeypatch.setattr(placement, "CAPACITY", capacity)

    async def apply(fn: Any, body: dict[str, Any]) -> dict[str, Any]:
        made.append(("apply", body["metadata"]["name"]))
        return body

    async def create(fn: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        made.append(("create", body["metadata"]["name"]))
        return {**body, "metadata": {**body["metadata"], "uid": f"{body['metadata']['name']}-uid"}}

    async def delete_pod(namespace: str, name: str, force: bool = False) -> None:
        made.append(("delete", name, "force" if force else "grace"))

    async def patch_pod(namespace: str, name: str, patch: Any, ignore: tuple[int, ...] = (404,)) -> None:
        made.append(("ungate", name))

    for name, stand_in in (("apply", apply), ("create", create), ("delete_pod", delete_pod), ("patch_pod", patch_pod)):
        monkeypatch.setattr(kube, name, stand_in)
    api = types.SimpleNamespace(patch_namespaced_service=None, create_namespaced_pod=None)
    monkeypatch.setattr(kube, "core", lambda: api)  # the calls above take the client's method: no client is made
    return made


@pytest.mark.parametrize("refusal", [kube.Conflict("the job changed"), ObjectGone("ns/job")])
def test_a_gang_whose_placement_write_is_refused_is_deleted_still_gated(
    calls: list[tuple[str, ...]], refusal: Exception
) -> None:
    recorded: list[Placed] = []

    async def record(placed: Placed) -> None:
        recorded.append(placed)
        raise refusal

    job = spec(placement={"gang": True})
    with pytest.raises(type(refusal)):
        asyncio.run(placement.place_gang(META, job, 0, Plan(NODES), record))

    workers = ["job-worker-0", "job-worker-1"]
    assert [c[0] for c in calls[:3]] == ["apply", "create", "create"] and len(recorded) == 1
    assert sorted(c[1:] for c in calls[3:]) == [(w, "force") for w in workers], "deleted at once, never ungated"
    assert placement.CAPACITY.free_gpus([n.name for n in NODES]) == {"n0": 8, "n1": 8}, "no GPU stays held"
    assert not placement.CAPACITY.claims and not placement.CAPACITY.reservations
    assert all(WORKER_PODS.get(f"{w}-uid") is None or WORKER_PODS.get(f"{w}-uid")["metadata"].get("deleting")
               for w in workers)  # fmt: skip


def test_a_gang_whose_placement_is_written_is_ungated_after_the_write(calls: list[tuple[str, ...]]) -> None:
    async def record(placed: Placed) -> None:
        calls.append(("record",))

    placed = asyncio.run(placement.place_gang(META, spec(placement={"gang": True}), 0, Plan(NODES), record))
    assert isinstance(placed, Placed) and placed.pod_names == ("job-worker-0", "job-worker-1")
    assert [c[0] for c in calls] == ["apply", "create", "create", "record", "ungate", "ungate"]
