"""Watch-fed state that heals after a watch gap: stores and loop registries pruned against a fresh list."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY

from modelfleet.capacity import CapacityStore, ObjectStore, gpu_pod, slim_node
from modelfleet.kube import NamespaceGone, raise_if_namespace_gone
from modelfleet.loops import ReconcileLoops, counts_watch_events


def node(name: str, uid: str, rv: int = 1) -> dict:
    return {"metadata": {"name": name, "uid": uid, "resourceVersion": str(rv)}, "spec": {}, "status": {}}


def gpu_worker(name: str, uid: str, attempt: str, node_name: str = "n1", phase: str = "Running") -> dict:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "labels": {"modelfleet.dev/attempt": attempt}},
        "spec": {"nodeName": node_name, "containers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}]},
        "status": {"phase": phase},
    }


def test_a_relist_drops_what_it_lacks_unless_the_watch_saw_it_after_the_list_began() -> None:
    store = ObjectStore(slim_node)
    store.apply_event(node("ghost", "u1"))
    store.apply_event(node("kept", "u2"))
    listed_at = time.monotonic()
    store.apply_event(node("new", "u3"))  # created after the list was made: the watch is newer
    assert store.replace([node("kept", "u2")], listed_at) == 1
    assert sorted(n["metadata"]["name"] for n in store.values()) == ["kept", "new"]


def test_a_list_never_overrides_a_newer_watch_event() -> None:
    store = ObjectStore(slim_node)
    store.apply_event(node("n", "u1", rv=7) | {"spec": {"unschedulable": True}})
    store.replace([node("n", "u1", rv=5)], time.monotonic())
    assert store.values()[0]["spec"] == {"unschedulable": True}


def test_gpu_pods_leave_the_store_when_they_stop_holding_gpus_or_are_deleted() -> None:
    store = ObjectStore(gpu_pod)
    store.apply_event(gpu_worker("w", "u1", "0"))
    store.apply_event(gpu_worker("w", "u1", "0", phase="Failed"))
    assert store.values() == []
    store.apply_event(gpu_worker("w", "u2", "1"))
    store.apply_event(gpu_worker("w", "u2", "1"), deleted=True)
    assert store.values() == []


def test_a_reservation_is_not_hidden_by_an_old_pod_of_the_same_name() -> None:
    state = CapacityStore()
    state.nodes.apply_event(node("n1", "n-u") | {"status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [
        {"type": "Ready", "status": "True"}]}})  # fmt: skip
    state.gpu_pods.apply_event(gpu_worker("job-worker-0", "old", "0"))  # terminating, attempt 0
    state.reserve([gpu_worker("job-worker-0", "", "1")])  # attempt 1, created but not yet watched
    assert state.view()[0].free_gpus == 0, "both hold 4 GPUs until the old one is gone"
    state.gpu_pods.apply_event(gpu_worker("job-worker-0", "new", "1"))
    state.gpu_pods.apply_event(gpu_worker("job-worker-0", "old", "0"), deleted=True)
    assert state.view()[0].free_gpus == 4 and not state.reservations


def test_a_reservation_outlives_a_slow_watch_and_ends_with_a_later_list() -> None:
    state = CapacityStore()
    state.nodes.apply_event(node("n1", "n-u") | {"status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [
        {"type": "Ready", "status": "True"}]}})  # fmt: skip
    before = time.monotonic()
    state.reserve([gpu_worker("job-worker-0", "", "0")])
    state.settle(before)  # a list that started before the pod was created may lack it: the reservation stays
    assert state.view()[0].free_gpus == 4
    state.settle(time.monotonic())  # a list that started after it: the store holds the pod if it exists at all
    assert state.view()[0].free_gpus == 8 and not state.reservations
    state.reserve([gpu_worker("job-worker-1", "", "0")])
    state.pod_event(gpu_worker("job-worker-1", "u9", "0", phase="Succeeded"))  # seen only once it had finished
    assert state.view()[0].free_gpus == 8 and not state.reservations


def test_a_claim_holds_gpus_through_any_list_until_it_is_withdrawn() -> None:
    """A gang waiting for its placement slot has no pods yet: a fresh list must not free what it was admitted on."""
    state = CapacityStore()
    state.nodes.apply_event(node("n1", "n-u") | {"status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [
        {"type": "Ready", "status": "True"}]}})  # fmt: skip
    state.claim("job-uid", {"n1": 6})
    state.settle(time.monotonic() + 1)
    assert state.view()[0].free_gpus == 2 and state.free_gpus(["n1"]) == {"n1": 2}
    state.unclaim("job-uid")
    state.unclaim("job-uid")  # a placement ends once, whichever way: a second withdrawal changes nothing
    assert state.view()[0].free_gpus == 8


def test_loops_of_objects_a_fresh_list_lacks_are_stopped() -> None:
    async def scenario() -> None:
        seen: list[str] = []

        async def reconcile(body: dict) -> float | None:
            seen.append(body["metadata"]["name"])
            return None

        loops = ReconcileLoops("test", reconcile)
        for name in ("gone", "here"):
            loops.apply_event({"metadata": {"namespace": "ns", "name": name, "resourceVersion": "1"}})
        await asyncio.sleep(0.05)
        assert loops.prune({("ns", "here")}, time.monotonic()) == [("ns", "gone")]
        assert set(loops.tasks) == {("ns", "here")} and sorted(seen) == ["gone", "here"]
        loops.stop()

    asyncio.run(scenario())


def api_error(status: int, details: dict) -> ApiException:
    exc = ApiException(status=status, reason="Forbidden" if status == 403 else "Not Found")
    exc.body = json.dumps({"kind": "Status", "code": status, "message": "said", "details": details})
    return exc


def test_a_namespace_being_deleted_or_gone_is_told_apart_from_other_refusals() -> None:
    terminating = {"name": "p", "kind": "pods", "causes": [{"reason": "NamespaceTerminating"}]}
    for gone in (api_error(403, terminating), api_error(404, {"name": "t-1", "kind": "namespaces"})):
        with pytest.raises(NamespaceGone, match="said"):
            raise_if_namespace_gone(gone)
    for other in (api_error(403, {"name": "p", "kind": "pods"}), api_error(404, {"name": "p", "kind": "pods"})):
        raise_if_namespace_gone(other)  # a quota refusal, a missing object: not the namespace's doing


def test_a_loop_whose_namespace_goes_stops_instead_of_retrying() -> None:
    async def scenario() -> tuple[int, set]:
        passes = 0

        async def reconcile(body: dict) -> float | None:
            nonlocal passes
            passes += 1
            raise NamespaceGone("namespace ns: Forbidden")

        loops = ReconcileLoops("test", reconcile)
        loops.apply_event({"metadata": {"namespace": "ns", "name": "job", "resourceVersion": "1"}})
        await asyncio.sleep(2.0)  # an error would have been retried after 1 s
        return passes, set(loops.bodies)

    passes, kept = asyncio.run(scenario())
    assert passes == 1 and kept == set()


def test_a_woken_loop_waits_out_a_burst_unless_woken_to_act_at_once() -> None:
    async def scenario() -> tuple[float, float]:
        passes: list[float] = []

        async def reconcile(body: dict) -> float:
            passes.append(time.monotonic())
            return 60.0

        loops = ReconcileLoops("test", reconcile, coalesce=0.5)
        loops.apply_event({"metadata": {"namespace": "ns", "name": "job", "resourceVersion": "1"}})
        await asyncio.sleep(0.7)  # the first pass, after its coalescing wait
        woken = time.monotonic()
        loops.wake(("ns", "job"))
        await asyncio.sleep(0.7)
        coalesced = passes[-1] - woken
        loops.wake(("ns", "job"))
        await asyncio.sleep(0.1)  # in its coalescing wait, when a decision comes
        woken = time.monotonic()
        loops.wake(("ns", "job"), at_once=True)
        await asyncio.sleep(0.2)
        loops.stop()
        return coalesced, passes[-1] - woken

    coalesced, at_once = asyncio.run(scenario())
    assert coalesced >= 0.45 and at_once < 0.1, "a wake-up at once ends the coalescing wait"


def test_a_pod_event_is_news_to_the_gpu_queue_only_when_the_gpus_held_or_freed_change() -> None:
    state = CapacityStore()
    state.reserve([gpu_worker("job-worker-0", "", "0", phase="Pending")])
    assert not state.pod_event(gpu_worker("job-worker-0", "u1", "0", phase="Pending")), "the placed pod arrived"
    assert not state.pod_event(gpu_worker("job-worker-0", "u1", "0")), "Pending -> Running"
    stopping = gpu_worker("job-worker-0", "u1", "0")
    stopping["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert state.pod_event(stopping), "its GPUs are being freed"
    assert state.pod_event(stopping, deleted=True), "its GPUs are free"
    assert state.pod_event(gpu_worker("someone-else", "u2", "0")), "a pod the operator did not place"


def test_a_slim_node_gives_the_same_view_as_the_whole_node() -> None:
    from modelfleet.devcluster.nodes import NodeGroup, fake_nodes
    from modelfleet.scheduling.nodes import build_view

    whole = fake_nodes([NodeGroup("r1", "r1a", "H100", 2)])
    whole[0]["spec"]["unschedulable"] = True
    whole[1]["metadata"]["managedFields"] = [{"manager": "kwok", "fieldsV1": {"f:status": {}}}]
    whole[1]["status"]["conditions"] = [
        {"type": "MemoryPressure", "status": "False"},
        {"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"},
    ]
    slim = [slim_node(n) for n in whole]
    assert build_view(slim, []) == build_view(whole, [])
    assert "managedFields" not in slim[1]["metadata"] and len(slim[1]["status"]["conditions"]) == 1


def test_the_nodes_view_reads_again_only_the_nodes_that_changed_or_that_time_can_change(monkeypatch) -> None:
    from datetime import UTC, datetime, timedelta

    from modelfleet import capacity

    def ready_node(name: str, uid: str, rv: int, status: str = "True", since: datetime | None = None) -> dict:
        since_text = (since or datetime(2026, 1, 1, tzinfo=UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        ready = {"type": "Ready", "status": status, "lastTransitionTime": since_text}
        return node(name, uid, rv) | {"status": {"conditions": [ready], "allocatable": {"nvidia.com/gpu": "8"}}}

    built: list[str] = []
    real_build = capacity.build_view
    monkeypatch.setattr(capacity, "build_view", lambda nodes, *a: built.extend(n["metadata"]["name"] for n in nodes)
                        or real_build(nodes, *a))  # fmt: skip
    state = CapacityStore()
    state.nodes.apply_event(ready_node("steady", "u1", 1))
    state.nodes.apply_event(ready_node("failing", "u2", 1, "False", since=datetime.now(UTC) - timedelta(seconds=1)))
    first = state.nodes_by_name()
    assert first["steady"].ready and first["failing"].ready, "not Ready for a second: still within its grace"
    state.nodes.apply_event(ready_node("steady", "u1", 2) | {"spec": {"unschedulable": True}})
    built.clear()
    second = state.nodes_by_name()
    assert sorted(built) == ["failing", "steady"] and second["steady"].unschedulable
    state.nodes.apply_event(ready_node("other", "u3", 1))
    built.clear()
    state.nodes_by_name()
    assert sorted(built) == ["failing", "other"], "the unchanged Ready node is not read again"


def test_an_event_handler_counts_its_events_by_resource_and_still_runs() -> None:
    seen: list[str] = []

    async def handler(event: dict, **kwargs: object) -> None:
        seen.append(event["type"])

    class Pods:
        plural = "test-counted-pods"

    def count() -> float:
        return REGISTRY.get_sample_value("modelfleet_watch_events_total", {"resource": "test-counted-pods"}) or 0.0

    counted = counts_watch_events(handler)
    before = count()
    asyncio.run(counted(event={"type": "ADDED"}, resource=Pods(), logger=None))
    asyncio.run(counted(event={"type": "MODIFIED"}, resource=Pods(), logger=None))
    assert seen == ["ADDED", "MODIFIED"]
    assert count() == before + 2
    assert counted.__name__ == "handler"  # kopf names the handler by it
