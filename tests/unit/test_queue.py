"""The GPU queue's decisions (pure): order, admission with reservation and backfill, preemption, elastic sizes."""

from __future__ import annotations

from dataclasses import replace

from modelfleet.scheduling.nodes import NodeInfo
from modelfleet.scheduling.planner import GangDemand
from modelfleet.scheduling.queue import Admit, Evict, QueuedGang, RunningGang, Wait, plan_queue, queue_order


def nodes(free: dict[str, int], region: str = "r1") -> list[NodeInfo]:
    return [NodeInfo(name, region, f"{region}a", "H100", 8, gpus) for name, gpus in free.items()]


def queued(name: str, workers: int, gpus: int = 8, **kw) -> QueuedGang:
    demand = GangDemand(workers, gpus, min_workers=kw.pop("min_workers", None), regions=kw.pop("regions", ()))
    return QueuedGang(("ns", name), demand, **kw)


def running(name: str, on: tuple[str, ...], gpus: int = 8, **kw) -> RunningGang:
    demand = GangDemand(kw.pop("workers", len(on)), gpus, min_workers=kw.pop("min_workers", None))
    return RunningGang(("ns", name), demand, on, **kw)


def key(name: str) -> tuple[str, str]:
    return ("ns", name)


def test_order_is_priority_then_submission_then_name() -> None:
    gangs = [queued("late-high", 1, priority=10, submitted=5), queued("early", 1, submitted=1),
             queued("b", 1, submitted=3), queued("a", 1, submitted=3)]  # fmt: skip
    assert [g.key[1] for g in sorted(gangs, key=queue_order)] == ["late-high", "early", "a", "b"]


def test_everything_that_fits_is_admitted_on_distinct_capacity() -> None:
    verdicts = plan_queue(nodes({"n1": 8, "n2": 8}), [queued("a", 1), queued("b", 1), queued("c", 1)])
    admitted = [v.plan.nodes[0].name for v in verdicts.values() if isinstance(v, Admit)]
    assert sorted(admitted) == ["n1", "n2"]
    assert verdicts[key("c")] == Wait(1, "Capacity", verdicts[key("c")].message)


def test_big_head_reserves_the_nodes_freeing_soonest_and_small_gangs_backfill_only_elsewhere() -> None:
    cluster = nodes({"n1": 4, "n2": 0, "n3": 8})
    busy = [running("ends-soon", ("n2",), started=0, length=100), running("ends-late", ("n1",), 4, started=0)]
    verdicts = plan_queue(cluster, [queued("big", 2), queued("small", 1, 4)], busy, now=10)
    head = verdicts[key("big")]
    assert isinstance(head, Wait) and head.position == 1 and head.reserved == ("n2", "n3")
    assert "expected to start in about 90s" in head.message
    small = verdicts[key("small")]
    assert isinstance(small, Admit) and [n.name for n in small.plan.nodes] == ["n1"]


def test_a_small_gang_does_not_take_reserved_capacity_unless_it_ends_before_the_reservation_starts() -> None:
    cluster = nodes({"n1": 8, "n2": 0})
    busy = [running("job", ("n2",), started=0, length=100)]
    stream = [queued("big", 2, submitted=0), queued("long", 1, submitted=1), queued("short", 1, submitted=2, length=50)]
    verdicts = plan_queue(cluster, stream, busy, now=10)
    assert isinstance(verdicts[key("big")], Wait) and verdicts[key("big")].reserved == ("n1", "n2")
    assert verdicts[key("long")].reason == "Reserved"
    assert "reserved for gangs ahead of it (ns/big)" in verdicts[key("long")].message
    assert isinstance(verdicts[key("short")], Admit), "ends at 60, before the reservation starts at 100"


def test_reservations_per_region_are_limited_by_depth() -> None:
    cluster = nodes({"n1": 0, "n2": 0, "n3": 0})
    busy = [running(f"job{i}", (f"n{i}",), started=i) for i in (1, 2, 3)]
    verdicts = plan_queue(cluster, [queued("a", 1), queued("b", 1), queued("c", 1)], busy, depth=2)
    assert [len(verdicts[key(n)].reserved) for n in "abc"] == [1, 1, 0]
    assert [verdicts[key(n)].position for n in "abc"] == [1, 2, 3]


def test_positions_count_only_gangs_competing_for_the_same_regions() -> None:
    cluster = nodes({"a1": 0}, "ra") + nodes({"b1": 0}, "rb")
    stream = [queued("in-a", 1, regions=("ra",), submitted=0), queued("in-b", 1, regions=("rb",), submitted=1),
              queued("anywhere", 1, submitted=2), queued("in-b-2", 1, regions=("rb",), submitted=3)]  # fmt: skip
    verdicts = plan_queue(cluster, stream)
    assert {n: verdicts[key(n)].position for n in ("in-a", "in-b", "anywhere", "in-b-2")} == {
        "in-a": 1, "in-b": 1, "anywhere": 3, "in-b-2": 3}  # fmt: skip


def test_high_priority_preempts_the_fewest_gpu_hours_lost_newest_first_and_only_what_it_needs() -> None:
    cluster = nodes({"n1": 0, "n2": 0, "n3": 0})
    busy = [running("old", ("n1",), started=0), running("new", ("n2",), started=90),
            running("mid", ("n3",), started=50), running("vip", ("n3",), 0, priority=100, started=95)]  # fmt: skip
    verdicts = plan_queue(cluster, [queued("urgent", 1, priority=100)], busy, now=100)
    assert verdicts[key("urgent")] == Wait(1, "Preempting", "waiting for ns/new to stop", ("n2",))
    assert verdicts[key("new")] == Evict("Preempted", "preempted for ns/urgent (priority 100 > 0)", 0)
    assert key("old") not in verdicts and key("mid") not in verdicts


def test_preemption_policy_never_waits_with_a_reservation_instead() -> None:
    cluster = nodes({"n1": 0})
    verdicts = plan_queue(cluster, [queued("polite", 1, priority=100, may_preempt=False)], [running("low", ("n1",))])
    assert verdicts[key("polite")].reason == "Capacity" and verdicts[key("polite")].reserved == ("n1",)
    assert key("low") not in verdicts


def test_no_preemption_when_stopping_pods_already_make_room() -> None:
    cluster = nodes({"n1": 0, "n2": 0})
    verdicts = plan_queue(cluster, [queued("urgent", 1, priority=9)], [running("low", ("n2",))], freeing={"n1": 8})
    assert verdicts[key("urgent")].reserved == ("n1",) and key("low") not in verdicts


def test_equal_priority_never_preempts() -> None:
    verdicts = plan_queue(nodes({"n1": 0}), [queued("b", 1)], [running("a", ("n1",))])
    assert key("a") not in verdicts and isinstance(verdicts[key("b")], Wait)


def test_elastic_gangs_shrink_before_anyone_is_preempted() -> None:
    cluster = nodes({"n1": 0, "n2": 0, "n3": 0})
    busy = [running("fixed", ("n1",), started=99), running("elastic", ("n2", "n3"), workers=2, min_workers=1)]
    verdicts = plan_queue(cluster, [queued("urgent", 1, priority=5)], busy, now=100)
    assert verdicts[key("elastic")] == Evict("ElasticShrink", "shrunk from 2 to 1 workers for ns/urgent "
                                             "(priority 5 > 0)", 1)  # fmt: skip
    assert key("fixed") not in verdicts and verdicts[key("urgent")].reserved == ("n3",)


def test_a_draining_gang_is_not_admitted_but_keeps_its_capacity() -> None:
    verdicts = plan_queue(nodes({"n1": 0}), [queued("back", 1, draining=True), queued("other", 1)], freeing={"n1": 8})
    assert verdicts[key("back")].reason == "Draining" and verdicts[key("back")].reserved == ("n1",)
    assert verdicts[key("other")].position == 2


def test_waiting_elastic_gang_starts_at_what_fits() -> None:
    verdicts = plan_queue(nodes({"n1": 8, "n2": 0}), [queued("elastic", 3, min_workers=1)])
    assert len(verdicts[key("elastic")].plan.nodes) == 1


def test_elastic_gang_grows_when_capacity_frees_and_nothing_waiting_could_use_it() -> None:
    cluster = nodes({"n1": 0, "n2": 8, "n3": 8})
    gang = running("elastic", ("n1",), workers=3, min_workers=1, started=0)
    assert plan_queue(cluster, [], [gang], now=100, grow_after=30)[key("elastic")] == Evict(
        "ElasticGrow", "growing from 1 to 3 workers", 3
    )
    assert plan_queue(cluster, [], [gang], now=10, grow_after=30) == {}, "too soon after it started"
    blocked = queued("big", 4, submitted=5)
    assert key("elastic") not in plan_queue(cluster, [blocked], [gang], now=100)


def test_a_gang_that_takes_any_gpu_type_leaves_the_named_types_to_gangs_that_need_them() -> None:
    cluster = [NodeInfo("a-h100", "r1", "r1a", "H100", 8, 8), NodeInfo("b-t4", "r1", "r1a", "T4", 8, 8)]
    anything = QueuedGang(("ns", "any"), GangDemand(1, 8), submitted=0)
    h100 = QueuedGang(("ns", "h100"), GangDemand(1, 8, "H100"), submitted=1)
    verdicts = plan_queue(cluster, [anything, h100])
    assert [n.name for n in verdicts[key("any")].plan.nodes] == ["b-t4"]
    assert [n.name for n in verdicts[key("h100")].plan.nodes] == ["a-h100"]
    alone = plan_queue(cluster, [anything])[key("any")]
    assert [n.name for n in alone.plan.nodes] == ["a-h100"], "no gang asks for H100 by name: no steering"


def test_a_gang_that_takes_any_type_waits_for_unnamed_types_and_takes_named_ones_only_as_leftovers() -> None:
    cluster = [NodeInfo("a-h100", "r1", "r1a", "H100", 8, 8), NodeInfo("b-h100", "r1", "r1a", "H100", 8, 8),
               NodeInfo("c-t4", "r1", "r1a", "T4", 8, 0)]  # fmt: skip
    busy = [running("on-t4", ("c-t4",), started=0, length=50)]
    anything = QueuedGang(("ns", "any"), GangDemand(1, 8), submitted=0)
    big_h100 = QueuedGang(("ns", "h100"), GangDemand(2, 8, "H100"), submitted=1)
    verdicts = plan_queue(cluster, [anything, big_h100], busy, now=10)
    assert verdicts[key("any")].reserved == ("c-t4",), "it waits for the T4 node though it is first in line"
    assert isinstance(verdicts[key("h100")], Admit), "the H100 gang gets both H100 nodes"
    small_h100 = QueuedGang(("ns", "h100"), GangDemand(1, 8, "H100"), submitted=1)
    verdicts = plan_queue(cluster, [anything, small_h100], busy, now=10)
    assert isinstance(verdicts[key("h100")], Admit)
    assert isinstance(verdicts[key("any")], Admit), "the H100 left over after the H100 gang's turn is its"


def test_an_untyped_gang_preempts_where_it_will_look_first_so_it_does_not_preempt_again() -> None:
    cluster = [NodeInfo("a-h100", "r1", "r1a", "H100", 8, 0), NodeInfo("b-t4", "r1", "r1a", "T4", 8, 0)]
    busy = [running("on-h100", ("a-h100",), started=90), running("on-t4", ("b-t4",), started=0)]
    urgent = QueuedGang(("ns", "urgent"), GangDemand(1, 8), priority=10, submitted=0)
    waiting_h100 = QueuedGang(("ns", "h100"), GangDemand(1, 8, "H100"), submitted=1)
    verdicts = plan_queue(cluster, [urgent, waiting_h100], busy, now=100)
    assert verdicts[key("on-t4")].reason == "Preempted" and key("on-h100") not in verdicts, "T4, though it costs more"
    after = plan_queue([cluster[0], replace(cluster[1], free_gpus=8)], [urgent, waiting_h100], busy[:1], now=101)
    assert [n.name for n in after[key("urgent")].plan.nodes] == ["b-t4"]


def test_a_resumable_gang_of_any_type_on_a_named_type_moves_over_when_a_gang_needs_that_type() -> None:
    """`any` took the H100 as a leftover; the T4 is free now and an H100 gang waits: `any` is preempted (it comes
    back on the T4), unless it does not checkpoint, the T4 is busy, the waiting gang names no type or ranks below."""
    cluster = [NodeInfo("a-h100", "r1", "r1a", "H100", 8, 0), NodeInfo("b-t4", "r1", "r1a", "T4", 8, 8)]
    anything = RunningGang(("ns", "any"), GangDemand(1, 8), ("a-h100",), started=0, submitted=5, resumable=True)
    h100 = QueuedGang(("ns", "h100"), GangDemand(1, 8, "H100"), submitted=9)
    verdicts = plan_queue(cluster, [h100], [anything], now=10)
    message = "preempted for ns/h100 (it takes any GPU type and fits on others now; H100 is what the gang needs)"
    assert verdicts[key("any")] == Evict("Preempted", message, 0)
    assert verdicts[key("h100")] == Wait(1, "Preempting", "waiting for ns/any to stop", ("a-h100",))
    for gang, waiting, t4_free in [
        (replace(anything, resumable=False), h100, 8),
        (anything, h100, 0),
        (anything, replace(h100, demand=GangDemand(1, 8)), 8),
        (replace(anything, priority=1), h100, 8),
    ]:
        verdicts = plan_queue([cluster[0], replace(cluster[1], free_gpus=t4_free)], [waiting], [gang], now=10)
        assert key("any") not in verdicts


def test_a_resumable_gang_of_any_type_moves_over_ahead_of_need_while_the_other_types_idle() -> None:
    """`any` shares the H100 node with `other`: the H100 gang cannot start before `other` ends, whether `any` stays
    or not, but the T4 node idles. `any` moves over now, so the node is whole when `other` ends. Not when no waiting
    gang names H100 where it runs, or only one of lower priority."""
    cluster = [NodeInfo("a-h100", "r1", "r1a", "H100", 8, 0), NodeInfo("b-t4", "r1", "r1a", "T4", 8, 8)]
    anything = RunningGang(("ns", "any"), GangDemand(1, 4), ("a-h100",), started=0, submitted=5, resumable=True)
    other = RunningGang(("ns", "other"), GangDemand(1, 4, "H100"), ("a-h100",), started=0, submitted=1, length=100)
    h100 = QueuedGang(("ns", "h100"), GangDemand(1, 8, "H100"), submitted=9)
    verdicts = plan_queue(cluster, [h100], [anything, other], now=10)
    why = "it takes any GPU type and fits on others now; gangs wait for H100"
    assert verdicts[key("any")] == Evict("Preempted", f"preempted to move over to other GPU types ({why})", 0)
    assert verdicts[key("h100")].reserved == ("a-h100",) and key("other") not in verdicts
    for gang, waiting in [
        (anything, []),
        (anything, [replace(h100, demand=GangDemand(1, 8, "A100"))]),
        (anything, [replace(h100, demand=GangDemand(1, 8, "H100", ("r2",)))]),
        (replace(anything, priority=1), [h100]),
        (replace(anything, resumable=False), [h100]),
    ]:
        assert key("any") not in plan_queue(cluster, waiting, [gang, other], now=10)


def test_a_gang_that_does_not_fit_is_told_about_every_node_it_may_use_even_full_ones() -> None:
    cluster = nodes({"n1": 0, "n2": 4}) + nodes({"m1": 0}, region="r2")
    verdict = plan_queue(cluster, [queued("big", 1, 8, regions=("r1",))])[key("big")]
    assert isinstance(verdict, Wait) and verdict.reason == "Capacity"
    assert verdict.message.endswith("in r1: at most 0 fit in r1 (4 GPUs free there)")
    verdict = plan_queue(nodes({"n1": 0}), [queued("any", 1, 8)])[key("any")]
    assert verdict.message.endswith("at most 0 fit in r1 (0 GPUs free there)")


def slack_case(
    holder_submitted: float = 0, holder_length: float | None = 500, default_priority: int = 0, **small
) -> Wait | Admit:
    """A 2-node gang reserves n1 (free) and n2 (busy until 100) at now=10; the verdict for a small gang behind it."""
    cluster = nodes({"n1": 8, "n2": 0})
    busy = [running("job", ("n2",), started=0, length=100, priority=1)]
    holder = queued("big", 2, priority=1, submitted=holder_submitted, length=holder_length)
    shape = {"workers": 1, "gpus": 2, "priority": 1, "submitted": 5, "length": 150} | small
    verdicts = plan_queue(cluster, [holder, queued("small", **shape)], busy, now=10, default_priority=default_priority)
    assert verdicts[key("big")].reserved == ("n1", "n2")
    return verdicts[key("small")]


def test_small_high_priority_gangs_backfill_with_slack_while_the_holder_is_young() -> None:
    assert isinstance(slack_case(), Admit), "ends at 160: after the start (100), before 100 + (100 - 10)"
    assert isinstance(slack_case(holder_length=None), Admit), "no bound: the fixed window applies"
    assert slack_case(length=200).reason == "Reserved", "ends at 210, past start + (start - now) = 190"
    assert slack_case(priority=0).reason == "Reserved", "default priority: conservative backfill only"
    assert slack_case(gpus=8).reason == "Reserved", "8 of the 16 reserved GPUs: more than a quarter"
    assert slack_case(holder_length=10).reason == "Reserved", "the holder has waited its own bound: no slack"
    assert slack_case(holder_length=None, holder_submitted=-3600).reason == "Reserved", "past the fixed window"


def test_a_big_gang_behind_an_endless_stream_of_small_high_priority_gangs_starts_after_finite_slack() -> None:
    """A small gang arrives every 10 s and each one admitted with slack pushes the big gang's expected start
    later; slack stops at the big gang's submission + bound (300), so it starts once the last of them ends."""
    cluster = {"n1": 8, "n2": 8}
    big = queued("big", 2, priority=1, submitted=0, length=300)
    gangs = [running("first", ("n1",), started=0, length=100, priority=1)]
    waiting, slack_used, now = [big], 0, 0
    while not any(g.key == big.key for g in gangs):
        gangs = [g for g in gangs if g.ends_by is None or g.ends_by > now]
        waiting.append(queued(f"small-{now}", 1, 2, priority=1, submitted=now, length=60))
        free = dict(cluster)
        for g in gangs:
            for name, gpus in g.holds().items():
                free[name] -= gpus
        verdicts = plan_queue(nodes(free), waiting, gangs, now=now)
        starts = {g.key: v for g in waiting if isinstance(v := verdicts[g.key], Admit)}
        expected_start = max((g.ends_by or 0 for g in gangs), default=now)
        slack_used += sum(1 for k in starts if k != big.key and now + 60 > expected_start)
        gangs += [running(k[1], tuple(n.name for n in v.plan.nodes), 8 if k == big.key else 2, started=now,
                          length=300 if k == big.key else 60, priority=1) for k, v in starts.items()]  # fmt: skip
        waiting = [g for g in waiting if g.key not in starts]
        now += 10
        assert now < 1000, "the big gang starved"
    assert slack_used > 0, "slack while the big gang is young"
    assert now - 10 <= 300 + 60, "started by its submission + its bound + the small gangs' bound"


def test_a_resumable_gang_backfills_onto_reserved_gpus_and_yields_them_when_the_holder_can_start() -> None:
    """n2 is reserved for `big` (it waits for `job` to end at 100); `resumable` (it checkpoints) runs on n1 anyway,
    a gang that does not checkpoint waits; once `job` has ended, `big` preempts the backfill to start."""
    cluster = nodes({"n1": 8, "n2": 0})
    busy = [running("job", ("n2",), started=0, length=100)]
    big = queued("big", 2, submitted=0)
    verdicts = plan_queue(cluster, [big, queued("plain", 1, submitted=1), queued("resumable", 1, submitted=2,
                                                                         resumable=True)], busy, now=10)  # fmt: skip
    assert verdicts[key("big")].reserved == ("n1", "n2") and verdicts[key("plain")].reason == "Reserved"
    assert isinstance(admitted := verdicts[key("resumable")], Admit) and admitted.plan.nodes[0].name == "n1"

    backfill = running("resumable", ("n1",), started=10, submitted=2, resumable=True)
    verdicts = plan_queue(nodes({"n1": 0, "n2": 8}), [big], [backfill], now=120)
    assert verdicts[key("resumable")] == Evict("Preempted", "preempted for ns/big (backfill, queued after it)", 0)
    assert verdicts[key("big")] == Wait(1, "Preempting", "waiting for ns/resumable to stop", ("n1", "n2"))


def test_only_gangs_behind_the_holder_that_resume_yield_and_only_to_a_default_priority_holder_that_may_preempt() -> (
    None
):
    cluster = nodes({"n1": 0, "n2": 8})
    for gang, holder in [
        (running("ahead", ("n1",), submitted=-1, resumable=True), queued("big", 2)),
        (running("no-checkpoint", ("n1",), submitted=1), queued("big", 2)),
        (running("resumable", ("n1",), submitted=1, resumable=True), queued("big", 2, may_preempt=False)),
        (running("resumable", ("n1",), submitted=1, resumable=True, priority=1), queued("big", 2, priority=1)),
    ]:
        verdicts = plan_queue(cluster, [holder], [gang], now=10)
        assert gang.key not in verdicts and verdicts[key("big")].reason == "Capacity", gang.key
    backfill = running("resumable", ("n1",), submitted=1, resumable=True)
    verdicts = plan_queue(cluster, [queued("big", 2)], [backfill], now=10, depth=0)
    assert backfill.key not in verdicts, "a gang without a reservation lent nothing and preempts no backfill"


def test_the_default_priority_is_the_global_default_classs_not_zero() -> None:
    """With a globalDefault PriorityClass of 1, priority 1 is the default: no slack, and its holders lend."""
    assert slack_case(default_priority=1).reason == "Reserved", "priority 1 is the default: conservative only"
    cluster = nodes({"n1": 0, "n2": 8})
    backfill = running("resumable", ("n1",), submitted=1, resumable=True, priority=1)
    holder = queued("big", 2, priority=1)
    verdicts = plan_queue(cluster, [holder], [backfill], now=10, default_priority=1)
    assert verdicts[backfill.key] == Evict("Preempted", "preempted for ns/big (backfill, queued after it)", 0)
    assert backfill.key not in plan_queue(cluster, [holder], [backfill], now=10), "above a default of 0: lends none"
