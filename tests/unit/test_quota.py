"""Per-namespace GPU quotas in the GPU queue (pure): limits, per-type limits, borrowing idle quota, reclaim."""

from __future__ import annotations

import yaml

from modelfleet.crdgen import render_all
from modelfleet.scheduling.nodes import NodeInfo
from modelfleet.scheduling.planner import GangDemand
from modelfleet.scheduling.queue import Admit, Evict, QueuedGang, RunningGang, Wait, plan_queue
from modelfleet.scheduling.quota import ANY, Quota, quotas_by_namespace, slim_gpu_quota


def cluster(free: dict[str, int], gpu_type: str = "H100") -> list[NodeInfo]:
    return [NodeInfo(name, "r1", "r1a", gpu_type, 8, gpus) for name, gpus in free.items()]


def queued(ns: str, name: str, workers: int, gpus: int = 4, gpu_type: str | None = None, **kw) -> QueuedGang:
    return QueuedGang((ns, name), GangDemand(workers, gpus, gpu_type=gpu_type), **kw)


def running(ns: str, name: str, on: tuple[str, ...], gpus: int = 4, **kw) -> RunningGang:
    return RunningGang((ns, name), GangDemand(len(on), gpus), on, **kw)


def test_a_gang_waits_with_quota_exceeded_while_its_namespace_holds_its_quota() -> None:
    quotas = {"a": Quota({ANY: 4})}
    verdicts = plan_queue(cluster({"n1": 8, "n2": 8}), [queued("a", "one", 1), queued("a", "two", 1)], quotas=quotas)
    assert isinstance(verdicts[("a", "one")], Admit)
    second = verdicts[("a", "two")]
    assert isinstance(second, Wait) and second.reason == "QuotaExceeded" and second.reserved == ()
    assert second.message == "namespace a holds 4 of its 4 GPU quota and this job needs 4"


def test_namespaces_without_a_quota_are_unlimited() -> None:
    verdicts = plan_queue(cluster({"n1": 8}), [queued("b", "x", 1), queued("b", "y", 1)], quotas={"a": Quota({ANY: 0})})
    assert all(isinstance(v, Admit) for v in verdicts.values())


def test_running_gangs_count_against_the_quota() -> None:
    quotas = {"a": Quota({ANY: 8})}
    busy = [running("a", "old", ("n1",))]
    verdicts = plan_queue(cluster({"n1": 4, "n2": 8}), [queued("a", "big", 2)], busy, quotas=quotas)
    assert verdicts[("a", "big")].reason == "QuotaExceeded"
    assert isinstance(
        plan_queue(cluster({"n1": 4, "n2": 8}), [queued("a", "ok", 1)], busy, quotas=quotas)[("a", "ok")], Admit
    )


def test_a_per_type_limit_counts_only_gpus_on_nodes_of_that_type() -> None:
    nodes = cluster({"h1": 8}) + cluster({"a1": 8}, "NVIDIA-A100-SXM4-80GB")
    quotas = {"a": Quota({"A100": 4})}
    stream = [queued("a", "a100-1", 1, gpu_type="A100"), queued("a", "a100-2", 1, gpu_type="A100", submitted=1),
              queued("a", "h100", 2, gpu_type="H100", submitted=2)]  # fmt: skip
    verdicts = plan_queue(nodes, stream, quotas=quotas)
    assert isinstance(verdicts[("a", "a100-1")], Admit) and isinstance(verdicts[("a", "h100")], Admit)
    assert "4 of its 4 A100 GPU quota" in verdicts[("a", "a100-2")].message


def test_an_untyped_gang_is_checked_against_type_limits_on_its_plan() -> None:
    quotas = {"a": Quota({"H100": 0})}
    verdicts = plan_queue(cluster({"h1": 8}), [queued("a", "any", 1)], quotas=quotas)
    assert verdicts[("a", "any")].reason == "QuotaExceeded"


def test_borrowing_uses_what_other_quotas_leave_idle_and_no_more() -> None:
    quotas = {"a": Quota({ANY: 4}, borrowing=True), "b": Quota({ANY: 8})}
    stream = [queued("a", f"j{i}", 1, submitted=i) for i in range(4)]
    verdicts = plan_queue(cluster({"n1": 8, "n2": 8}), stream, quotas=quotas)
    assert [isinstance(verdicts[("a", f"j{i}")], Admit) for i in range(4)] == [True, True, True, False]
    assert verdicts[("a", "j3")].message.endswith("other namespaces' quotas leave 0 idle to borrow")


def test_without_borrowing_idle_quota_is_not_used() -> None:
    quotas = {"a": Quota({ANY: 4}), "b": Quota({ANY: 8})}
    verdicts = plan_queue(cluster({"n1": 8, "n2": 8}), [queued("a", "x", 1), queued("a", "y", 1)], quotas=quotas)
    assert verdicts[("a", "y")].reason == "QuotaExceeded"


def test_a_lender_within_its_quota_takes_borrowed_gpus_back_newest_borrowers_first() -> None:
    quotas = {"a": Quota({ANY: 4}, borrowing=True), "b": Quota({ANY: 8})}
    busy = [running("a", "own", ("n1",), started=1), running("a", "borrow-old", ("n1",), started=2),
            running("a", "borrow-new", ("n2",), started=3), running("b", "b-own", ("n2",), started=0)]  # fmt: skip
    verdicts = plan_queue(cluster({"n1": 0, "n2": 0}), [queued("b", "needs", 1)], busy, now=10, quotas=quotas)
    assert verdicts[("a", "borrow-new")] == Evict(
        "Preempted", "preempted: namespace a borrowed GPUs beyond its GPUQuota, taken back for b/needs", 0
    )
    assert ("a", "borrow-old") not in verdicts and ("a", "own") not in verdicts
    wait = verdicts[("b", "needs")]
    assert wait.reason == "Preempting" and wait.reserved == ("n2",) and "a/borrow-new" in wait.message


def test_nothing_is_taken_back_for_a_gang_over_its_own_quota_or_from_a_namespace_within_its_quota() -> None:
    quotas = {"a": Quota({ANY: 4}, borrowing=True), "b": Quota({ANY: 4})}
    busy = [running("a", "own", ("n1",)), running("b", "b-own", ("n2",))]
    verdicts = plan_queue(cluster({"n1": 4, "n2": 4}, "H100"), [queued("b", "more", 2)], busy, quotas=quotas)
    assert verdicts[("b", "more")].reason == "QuotaExceeded" and not any(
        isinstance(v, Evict) for v in verdicts.values()
    )
    busy = [running("a", "own", ("n1",), gpus=8), running("c", "free-rider", ("n2",), gpus=8)]
    verdicts = plan_queue(
        cluster({"n1": 0, "n2": 0}), [queued("b", "x", 1)], busy, quotas={"a": Quota({ANY: 8}), "b": Quota({ANY: 4})}
    )
    assert not any(isinstance(v, Evict) for v in verdicts.values()), "a holds only its own quota; c has none"


def test_a_borrowing_gang_that_does_not_fit_holds_no_reservation() -> None:
    quotas = {"a": Quota({ANY: 0}, borrowing=True), "b": Quota({ANY: 16})}
    verdicts = plan_queue(
        cluster({"n1": 0}), [queued("a", "x", 1)], [running("c", "c", ("n1",), gpus=8)], quotas=quotas
    )
    assert verdicts[("a", "x")].reason == "Capacity" and verdicts[("a", "x")].reserved == ()


def test_gpu_quota_objects_become_quotas_by_namespace() -> None:
    objs = [{"metadata": {"name": "team-a"}, "spec": {"gpus": 8, "gpusPerType": {"A100": 4}, "borrowing": True}},
            {"metadata": {"name": "bad"}, "spec": {"gpus": -1}}]  # fmt: skip
    slims = [s for o in objs if (s := slim_gpu_quota(o))]
    assert quotas_by_namespace(slims) == {"team-a": Quota({"A100": 4, ANY: 8}, borrowing=True)}


def test_an_elastic_gang_grows_only_within_its_namespace_quota() -> None:
    elastic = RunningGang(("a", "el"), GangDemand(4, 4, min_workers=1), ("n1",), started=0)
    grown = plan_queue(cluster({"n1": 4, "n2": 8}), [], [elastic], now=100, quotas={"a": Quota({ANY: 16})})
    assert grown[("a", "el")] == Evict("ElasticGrow", "growing from 1 to 4 workers", 4)
    held = plan_queue(cluster({"n1": 4, "n2": 8}), [], [elastic], now=100, quotas={"a": Quota({ANY: 12})})
    assert held == {}, "it grows to what fits, and 4 workers would hold 16 GPUs"


def test_the_gpu_quota_crd_is_cluster_scoped_without_status_and_checks_its_name() -> None:
    crd = yaml.safe_load(render_all()["gpuquotas.yaml"])
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    assert crd["spec"]["scope"] == "Cluster" and version["subresources"] == {} and "status" not in root["properties"]
    assert all("self.metadata.name" in r["rule"] for r in root["x-kubernetes-validations"])
    assert all(p.get("description") for p in root["properties"]["spec"]["properties"].values())


def test_quota_a_waiting_lender_needs_is_not_lent_so_a_reclaimed_borrower_does_not_come_straight_back() -> None:
    quotas = {"a": Quota({ANY: 4}, borrowing=True), "b": Quota({ANY: 12})}
    busy = [running("a", "own", ("n1",), started=1)]
    stream = [queued("a", "reclaimed", 2, submitted=1), queued("b", "owner", 3, submitted=2)]
    nodes = cluster({"n1": 4, "n2": 0, "n3": 0})  # the reclaimed gang's pods still stop on n2 and n3
    verdicts = plan_queue(nodes, stream, busy, freeing={"n2": 4, "n3": 4}, now=10, quotas=quotas)
    assert verdicts[("a", "reclaimed")].reason == "QuotaExceeded", verdicts
    assert verdicts[("a", "reclaimed")].message.endswith("other namespaces' quotas leave 0 idle to borrow")
    assert isinstance(verdicts[("b", "owner")], Wait) and verdicts[("b", "owner")].reserved
    assert [verdicts[k].position for k in (("a", "reclaimed"), ("b", "owner"))] == [1, 2]
