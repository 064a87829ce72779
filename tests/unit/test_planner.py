from __future__ import annotations

import pytest

from modelfleet.api.training import PlacementPolicy
from modelfleet.scheduling.gpus import gpu_type_matches, shard_weights
from modelfleet.scheduling.nodes import NodeInfo, build_view
from modelfleet.scheduling.planner import GangDemand, Plan, Unschedulable, plan_gang

TAINT = (("nvidia.com/gpu", "NoSchedule"),)


def node(
    name: str, region: str = "r1", zone: str = "z1", gpu: str | None = "H100", gpus: int = 8, free: int | None = None
):
    return NodeInfo(name, region, zone, gpu, gpus, gpus if free is None else free, taints=TAINT if gpu else ())


def test_pack_uses_fewest_nodes() -> None:
    nodes = [node("a"), node("b"), node("c")]
    plan = plan_gang(nodes, GangDemand(workers=4, gpus_per_worker=4))
    assert isinstance(plan, Plan)
    assert len({n.name for n in plan.nodes}) == 2


def test_pack_best_fits_to_keep_big_holes() -> None:
    nodes = [node("big", free=8), node("small", free=2)]
    plan = plan_gang(nodes, GangDemand(workers=1, gpus_per_worker=2))
    assert isinstance(plan, Plan) and plan.nodes[0].name == "small"


def test_pack_prefers_one_zone() -> None:
    nodes = [node("a1", zone="za", free=4), node("b1", zone="zb", free=8), node("b2", zone="zb", free=8)]
    plan = plan_gang(nodes, GangDemand(workers=4, gpus_per_worker=4))
    assert isinstance(plan, Plan)
    assert {n.zone for n in plan.nodes} == {"zb"}


def test_never_splits_a_worker_across_nodes() -> None:
    nodes = [node("a", free=4), node("b", free=4)]
    result = plan_gang(nodes, GangDemand(workers=1, gpus_per_worker=8, gpu_type="H100"))
    assert isinstance(result, Unschedulable)
    assert "at most 0 fit" in result.reason


def test_gang_stays_in_one_region() -> None:
    nodes = [node("a", region="r1"), node("b", region="r2")]
    assert isinstance(plan_gang(nodes, GangDemand(workers=2, gpus_per_worker=8)), Unschedulable)
    plan = plan_gang([*nodes, node("c", region="r2")], GangDemand(workers=2, gpus_per_worker=8))
    assert isinstance(plan, Plan) and plan.region == "r2"


def test_regions_and_gpu_type_are_required() -> None:
    nodes = [node("h", region="r1", gpu="H100"), node("a", region="r2", gpu="A100")]
    assert isinstance(plan_gang(nodes, GangDemand(1, 8, gpu_type="A100", regions=("r1",))), Unschedulable)
    plan = plan_gang(nodes, GangDemand(1, 8, gpu_type="A100"))
    assert isinstance(plan, Plan) and plan.nodes[0].name == "a"


def test_reason_names_what_is_missing() -> None:
    nodes = [node("a", region="cn-hangzhou", free=8), node("b", region="cn-hangzhou", free=0)]
    result = plan_gang(nodes, GangDemand(workers=2, gpus_per_worker=8, gpu_type="H100", regions=("cn-hangzhou",)))
    assert isinstance(result, Unschedulable)
    assert result.reason == (
        "needs 2 workers x 8 H100 GPUs (16 in all) in cn-hangzhou: at most 1 fit in cn-hangzhou (8 H100 GPUs free there)"
    )


def test_spread_uses_distinct_nodes_across_zones() -> None:
    nodes = [node("a1", zone="za"), node("a2", zone="za"), node("b1", zone="zb"), node("b2", zone="zb")]
    plan = plan_gang(nodes, GangDemand(workers=4, gpus_per_worker=1, policy=PlacementPolicy.SPREAD))
    assert isinstance(plan, Plan)
    assert len({n.name for n in plan.nodes}) == 4
    assert plan.nodes[0].zone != plan.nodes[1].zone


def test_elastic_takes_the_most_workers_that_fit() -> None:
    nodes = [node("a", free=8), node("b", free=4)]
    plan = plan_gang(nodes, GangDemand(workers=4, gpus_per_worker=4, min_workers=2))
    assert isinstance(plan, Plan) and len(plan.nodes) == 3


def test_not_ready_tainted_and_cordoned_nodes_are_skipped() -> None:
    nodes = [
        NodeInfo("down", "r1", "z1", "H100", 8, 8, ready=False, taints=TAINT),
        NodeInfo("cordoned", "r1", "z1", "H100", 8, 8, unschedulable=True, taints=TAINT),
        NodeInfo("other-taint", "r1", "z1", "H100", 8, 8, taints=(("dedicated", "NoSchedule"),)),
    ]
    assert isinstance(plan_gang(nodes, GangDemand(1, 1)), Unschedulable)


def test_cpu_workers_go_to_cpu_nodes() -> None:
    plan = plan_gang([node("g"), node("c", gpu=None, gpus=0)], GangDemand(workers=2, gpus_per_worker=0))
    assert isinstance(plan, Plan) and {n.name for n in plan.nodes} == {"c"}


def test_view_subtracts_bound_and_pinned_pods_but_not_finished_ones() -> None:
    nodes = [
        {
            "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/region": "r1"}},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]},
        }
    ]
    gpu = {"resources": {"limits": {"nvidia.com/gpu": "2"}}}
    pinned = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}
                ]
            }
        }
    }
    pods = [
        {"spec": {"nodeName": "n1", "containers": [gpu]}, "status": {"phase": "Running"}},
        {"spec": {"affinity": pinned, "containers": [gpu]}, "status": {"phase": "Pending"}},
        {"spec": {"nodeName": "n1", "containers": [gpu]}, "status": {"phase": "Succeeded"}},
    ]
    (info,) = build_view(nodes, pods)
    assert info.free_gpus == 4 and info.ready


def test_gpu_type_matching_and_shard_weights() -> None:
    assert gpu_type_matches("NVIDIA-A100-SXM4-80GB", "a100")
    assert not gpu_type_matches("NVIDIA-A100-SXM4-80GB", "A10")
    assert shard_weights(["H100", "H100"], 1) == [0.5, 0.5]
    h, a = shard_weights(["H100", "A100"], 1)
    assert h / a == pytest.approx(2.5) and h + a == pytest.approx(1)
    assert shard_weights(["H100", "A100"], 1, {"H100": 1.0}) == [0.5, 0.5]
