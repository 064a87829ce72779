"""Placing a gang: its placement is written to the job's status before any worker is created, so a job that changed
(a conflict) or went gets no worker and its GPUs are freed; a worker the API refuses takes the workers created with it
(deleted at once) and is reported. The API calls are stand-ins that record what placement asked for: the order and
the clean-up are what is tested here, against no cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelfleet import kube
from modelfleet.capacity import CapacityStore
from modelfleet.loops import ObjectGone
from modelfleet.owned import WORKER_PODS
from modelfleet.scheduling.planner import Plan
from modelfleet.training import placement
from modelfleet.training.status import CreateRefused, Placed
from tests.unit.training_fixtures import META, NODES, spec


def ready_node(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"{name}-uid", "resourceVersion": "1"},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


@pytest.fixture
def refused() -> set[str]:
    return set()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, refused: set[str]) -> list[tuple[str, ...]]:
    """The API calls placement makes, in order; two Ready nodes of 8 free GPUs in a capacity store of its own; the
    API refuses to create the pods named in `refused`."""
    made: list[tuple[str, ...]] = []
    capacity = CapacityStore()
    for node in NODES:
        capacity.nodes.apply_event(ready_node(node.name))
    monkeypatch.setattr(placement, "CAPACITY", capacity)

    async def apply(body: dict[str, Any]) -> dict[str, Any]:
        made.append(("apply", body["metadata"]["name"]))
        return body

    async def create(body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        made.append(("create", name))
        if name in refused:
            raise kube.Refused("CreateFailed", f'pods "{name}" is forbidden: exceeded quota')
        return {**body, "metadata": {**body["metadata"], "uid": f"{name}-uid"}}

    async def delete_pod(namespace: str, name: str, force: bool = False) -> None:
        made.append(("delete", name, "force" if force else "grace"))

    for name, stand_in in (("apply", apply), ("create", create), ("delete_pod", delete_pod)):
        monkeypatch.setattr(kube, name, stand_in)
    return made


WORKERS = ["job-worker-0", "job-worker-1"]


def no_gpu_held() -> bool:
    free = placement.CAPACITY.free_gpus([n.name for n in NODES]) == {"n0": 8, "n1": 8}
    return free and not placement.CAPACITY.claims and not placement.CAPACITY.reservations


@pytest.mark.parametrize("refusal", [kube.Conflict("the job changed"), ObjectGone("ns/job")])
def test_a_gang_whose_placement_write_is_refused_is_never_created(
    calls: list[tuple[str, ...]], refusal: Exception
) -> None:
    recorded: list[Placed] = []

    async def record(placed: Placed) -> None:
        recorded.append(placed)
        raise refusal

    with pytest.raises(type(refusal)):
        asyncio.run(placement.place_gang(META, spec(), 0, Plan(NODES), record))
    assert len(recorded) == 1 and recorded[0].pod_names == tuple(WORKERS)
    assert calls == [], "no worker, no Service"
    assert no_gpu_held()


def test_a_gangs_workers_are_created_after_its_placement_is_written(calls: list[tuple[str, ...]]) -> None:
    async def record(placed: Placed) -> None:
        calls.append(("record",))

    placed = asyncio.run(placement.place_gang(META, spec(), 0, Plan(NODES), record))
    assert isinstance(placed, Placed) and placed.pod_names == tuple(WORKERS)
    assert [c[0] for c in calls] == ["record", "apply", "create", "create"]
    assert placement.CAPACITY.held_gpus(["n0", "n1"]) == {"n0": 8, "n1": 8}, "its reservations hold the GPUs"


def test_a_worker_the_api_refuses_takes_its_gang_with_it(calls: list[tuple[str, ...]], refused: set[str]) -> None:
    refused.add("job-worker-1")

    async def record(placed: Placed) -> None:
        calls.append(("record",))

    outcome = asyncio.run(placement.place_gang(META, spec(), 0, Plan(NODES), record))
    assert isinstance(outcome, CreateRefused) and outcome.reason == "CreateFailed" and "quota" in outcome.message
    assert [c[0] for c in calls[:4]] == ["record", "apply", "create", "create"]
    assert calls[4:] == [("delete", "job-worker-0", "force")], "the worker created is deleted at once"
    assert no_gpu_held()
    entry = WORKER_PODS.get("job-worker-0-uid")
    assert entry is None or entry["metadata"].get("deleting")
