"""The GPU queue: which waiting gangs start now, which wait and why, who is preempted, how elastic gangs resize.

Pure: the operator's planning pass and `benchmarks/placement.py` call `plan_queue` on a snapshot.

- Order: priority (higher first), then submission time, then name.
- Admission walks that order. A gang starts when it fits on capacity that no gang ahead of it has reserved.
- A gang that does not fit, and whose PriorityClass allows preemption, first shrinks elastic gangs of lower
  priority to their minimum, then preempts whole lower-priority gangs (fewest GPU-hours lost first, newest first),
  only as many as it needs.
- Otherwise it gets a reservation (up to `depth` per region): the nodes it would use once the running gangs that
  end soonest (by their length bound, else the oldest) have ended. Gangs behind it backfill only onto capacity the
  reservation does not hold, or onto held capacity when their own length bound ends before the reservation starts
  (conservative backfill). A reservation is recomputed every pass, so it follows the cluster as it changes.
  Small high-priority gangs get a bounded slack on young reservations (see `_Pass.blocks`).
- Preemptible backfill: a resumable gang (it checkpoints) may also run on the GPUs reserved for a default-priority
  gang ahead of it; when the holder can start with such gangs gone, it preempts them (see `yields_to`). The
  default priority is the globalDefault PriorityClass's value (0 without one): `plan_queue(default_priority=...)`.
- A gang that takes any GPU type, and could run on the types no waiting gang names, is placed, reserved and
  preempts only on those in its turn; it takes a named type's GPUs only as a leftover, after every other gang of
  the pass had its turn. Otherwise untyped gangs fill the H100s that typed gangs wait for, and later leave the
  other types idle. Such a gang running on a named type moves over when it resumes from a checkpoint and fits on
  the other types' free GPUs now: it is preempted and comes back there. It does so when a gang that names the type
  needs the GPUs (`_Pass.moves_over`), and after every waiting gang's turn when one waits for that type there and
  the other types' GPUs are still free (`_Pass.move_over`).
- Quotas (scheduling/quota.py): a gang over its namespace's GPUQuota waits (QuotaExceeded) and holds nothing; one
  admitted only by borrowing idle quota never reserves or preempts; a gang within its own quota that does not fit
  takes borrowed GPUs back (whole gangs of namespaces above their quota, newest first) before preempting by priority.
- A running elastic gang grows (a gang restart at the new size) when capacity is free and no waiting gang could use
  the nodes it would grow onto.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from modelfleet.scheduling.gpus import gpu_type_matches
from modelfleet.scheduling.nodes import NodeInfo
from modelfleet.scheduling.planner import (
    GangDemand,
    Plan,
    Unschedulable,
    eligible_nodes,
    explain,
    plan_on_eligible,
)
from modelfleet.scheduling.quota import Ledger, Quota

Key = tuple[str, str]
"""(namespace, name) of a job."""
Capacity = dict[str, int]
"""GPUs per node name."""
RESERVATION_DEPTH = 3
"""Waiting gangs per region that hold a reservation at once."""
SLACK_SHARE = 4
"""... when they ask for at most 1/SLACK_SHARE of the reservation's GPUs."""
SLACK_WINDOW_UNBOUNDED = 3600.0
"""Seconds after its submission that a holder without a length bound lends its reservation with slack."""


@dataclass(frozen=True)
class QueuedGang:
    key: Key
    demand: GangDemand
    priority: int = 0
    submitted: float = 0.0
    may_preempt: bool = True
    """False for `preemptionPolicy: Never`: it waits like the others and never stops anyone."""
    length: float | None = None
    """Upper bound of its run time in seconds (activeDeadlineSeconds), if it has one."""
    draining: bool = False
    """Its previous gang's pods are still stopping: it cannot start yet, but keeps its place and a reservation."""
    resumable: bool = False
    """It resumes from a checkpoint when stopped: it may backfill onto reserved GPUs, preemptible (`yields_to`)."""


@dataclass(frozen=True)
class RunningGang:
    key: Key
    demand: GangDemand
    nodes: tuple[str, ...]
    """nodes[i] is worker i's node."""
    priority: int = 0
    started: float = 0.0
    length: float | None = None
    submitted: float = 0.0
    """Its place in the queue (with priority and key), kept across preemptions."""
    resumable: bool = False

    @property
    def ends_by(self) -> float | None:
        return None if self.length is None else self.started + self.length

    @property
    def elastic_surplus(self) -> int:
        """Workers above its minimum (0 for a fixed-size gang)."""
        return len(self.nodes) - (self.demand.min_workers or len(self.nodes))

    def holds(self, workers: Sequence[str] | None = None) -> Capacity:
        return gpus_on(self.nodes if workers is None else workers, self.demand.gpus_per_worker)

    def gpu_hours_lost(self, now: float) -> float:
        """What stopping it now costs: every GPU since it started (no credit for checkpoints we cannot see)."""
        return len(self.nodes) * self.demand.gpus_per_worker * max(now - self.started, 0.0) / 3600


@dataclass(frozen=True)
class Admit:
    plan: Plan


@dataclass(frozen=True)
class Wait:
    position: int
    """1 + the waiting gangs ahead of it that compete for the same regions."""
    reason: str
    """Capacity (does not fit now), Reserved (fits, but the capacity is held for gangs ahead), Preempting (waits for
    the gangs it preempted to stop), Draining (its own previous pods are still stopping), QuotaExceeded (its
    namespace's GPUQuota is used up)."""
    message: str
    reserved: tuple[str, ...] = ()
    """Nodes whose GPUs are held for it."""


@dataclass(frozen=True)
class Evict:
    """Stop the running gang (all its workers) and queue it again."""

    reason: str
    """Preempted, ElasticShrink or ElasticGrow."""
    message: str
    workers: int
    """The size it is expected back at (0: preempted)."""


Verdict = Admit | Wait | Evict


def gpus_on(nodes: Iterable[str], per_worker: int) -> Capacity:
    held: Capacity = Counter()
    for node in nodes:
        held[node] += per_worker
    return dict(held)


def queue_order(gang: QueuedGang | RunningGang) -> tuple[int, float, Key]:
    return (-gang.priority, gang.submitted, gang.key)


def yields_to(holder: QueuedGang, gang: QueuedGang | RunningGang, default_priority: int) -> bool:
    """Whether `gang` may run on GPUs that `holder` waits for, and is preempted (whole gang, requeued in its place)
    when the holder can start with it gone: it resumes from a checkpoint, so it loses at most one checkpoint
    interval; it is behind the holder in the queue, so the holder would have had the GPUs first anyway; and the
    holder's PriorityClass allows preemption. A running gang behind the holder started after the holder was
    submitted: it backfilled while the holder waited. Holders above the cluster's default priority lend only with
    slack (`_Pass.blocks`): lending them preemptibly too lengthened the high-priority tail in the placement
    benchmark."""
    return (
        holder.may_preempt
        and holder.priority <= default_priority
        and gang.resumable
        and queue_order(gang) > queue_order(holder)
    )


def _add(a: Mapping[str, int], *others: Mapping[str, int], sign: int = 1) -> Capacity:
    total = dict(a)
    for other in others:
        for node, gpus in other.items():
            total[node] = total.get(node, 0) + sign * gpus
    return total


def _key_text(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


@dataclass
class _Reservation:
    key: Key
    held: Capacity
    start: float | None
    """When it is expected to start (None: some gang it waits for has no length bound)."""
    lends_until: float = float("-inf")
    """Until when it takes gangs with slack: its holder's submission + length bound (see `_Pass.blocks`)."""
    holder: QueuedGang | None = None
    """The gang it waits for, when it lends its GPUs to preemptible backfill (None: a hold that starts now)."""


class _Pass:
    """The state of one planning pass: what is free, freeing, reserved and still running."""

    def __init__(
        self,
        nodes: Sequence[NodeInfo],
        running: Sequence[RunningGang],
        freeing: Mapping[str, int],
        now: float,
        depth: int = RESERVATION_DEPTH,
        default_priority: int = 0,
    ) -> None:
        self.nodes = list(nodes)
        self.free: Capacity = {n.name: n.free_gpus for n in nodes}
        self.freeing: Capacity = dict(freeing)
        self.now = now
        self.depth = depth
        self.default_priority = default_priority
        """The value of the globalDefault PriorityClass: gangs above it get slack, holders at or below it lend."""
        self.running = {g.key: g for g in running}
        self.reservations: list[_Reservation] = []
        self.held: Capacity = {}
        self.per_region: Counter[str] = Counter()
        self.verdicts: dict[Key, Verdict] = {}
        self.all_regions = frozenset(n.region for n in nodes)
        self.copies: dict[tuple[str, int], NodeInfo] = {}
        self.eligible_by_kind: dict[tuple[tuple[str, ...], str | None, bool], list[NodeInfo]] = {}
        self.memo: dict[tuple[GangDemand, tuple[int, ...], bool], Plan | Unschedulable] = {}
        """Plans on the free capacity less some reservations (by index), until free or reserved capacity changes:
        gangs of one shape waiting together cost one planner call."""
        self.contended: set[str] = set()
        """Nodes of the GPU types that waiting gangs ask for by name."""
        self.off_contended: dict[GangDemand, bool] = {}
        """Whether a gang shape fits on the uncontended nodes when they are empty."""

    def eligible(self, demand: GangDemand) -> list[NodeInfo]:
        """The nodes a demand may use (region, GPU type, readiness, taints), worked out once per kind and pass."""
        kind = (demand.regions, demand.gpu_type, demand.gpus_per_worker > 0)
        if (nodes := self.eligible_by_kind.get(kind)) is None:
            nodes = self.eligible_by_kind[kind] = eligible_nodes(self.nodes, demand)
        return nodes

    def plan(self, capacity: Mapping[str, int], demand: GangDemand) -> Plan | Unschedulable:
        """plan_gang on the demand's eligible nodes with this much free. Only nodes that take a whole worker are
        planned on (the others change no placement); the reason it does not fit is told over all of them."""
        eligible = self.eligible(demand)
        per_worker = demand.gpus_per_worker
        usable = [n for n in eligible if not per_worker or capacity.get(n.name, 0) >= per_worker]
        outcome = plan_on_eligible(self.view(usable, capacity), demand)
        if isinstance(outcome, Unschedulable) and len(usable) < len(eligible):
            return explain(self.view(eligible, capacity), demand)
        return outcome

    def view(self, nodes: Iterable[NodeInfo], capacity: Mapping[str, int]) -> list[NodeInfo]:
        """The nodes with this much free; a node with a given free count is made once per pass."""
        view = []
        for node in nodes:
            free = max(capacity.get(node.name, 0), 0)
            if (copy := self.copies.get((node.name, free))) is None:
                copy = self.copies[(node.name, free)] = replace(node, free_gpus=free)
            view.append(copy)
        return view

    def fit(self, demand: GangDemand, respecting: tuple[int, ...] = (), steer: bool = False) -> Plan | Unschedulable:
        """A plan on the free capacity that the reservations `respecting` (indices) do not hold; `steer` leaves
        out the GPU types that waiting gangs ask for by name (for a gang that takes any type)."""
        key = (demand, respecting, steer)
        if key not in self.memo:
            capacity = _add(self.free, *(self.reservations[i].held for i in respecting), sign=-1)
            if steer:
                capacity = self.keep_off(capacity)
            self.memo[key] = self.plan(capacity, demand)
        return self.memo[key]

    def steered(self, demand: GangDemand, plan: Plan, respecting: tuple[int, ...]) -> Plan:
        """A gang that takes any GPU type goes, where it fits, onto nodes of types no waiting gang asks for by
        name, so that the gangs that can use only one type find it free (less fragmentation by type)."""
        if demand.gpu_type or not demand.gpus_per_worker or not self.contended:
            return plan
        steered = self.fit(demand, respecting, steer=True)
        return steered if isinstance(steered, Plan) else plan

    def hold(
        self,
        key: Key,
        capacity: Mapping[str, int],
        start: float | None,
        region: str,
        lends_until: float = float("-inf"),
        holder: QueuedGang | None = None,
    ) -> None:
        self.reservations.append(_Reservation(key, dict(capacity), start, lends_until, holder))
        self.held = _add(self.held, capacity)
        self.per_region[region] += 1
        self.memo.clear()

    def coming_free(self) -> Capacity:
        """Free now, or freed by pods already stopping, minus what is held for gangs ahead."""
        return _add(_add(self.free, self.freeing), self.held, sign=-1)

    # -- the three things a waiting gang can get -------------------------------------------------------------

    def admit(self, gang: QueuedGang, keep_off: bool = False) -> Plan | Wait:
        """A plan on capacity nobody ahead has reserved (or will use before this gang ends); else why not.
        `keep_off`: only on the GPU types no waiting gang names (a gang that takes any type, in its first turn)."""
        if gang.draining:
            return Wait(0, "Draining", "its previous workers are still stopping")

        def place(respecting: tuple[int, ...]) -> Plan | Unschedulable:
            if keep_off:
                return self.fit(gang.demand, respecting, steer=True)
            plan = self.fit(gang.demand, respecting)
            return self.steered(gang.demand, plan, respecting) if isinstance(plan, Plan) else plan

        fits_free = place(())
        if isinstance(fits_free, Unschedulable) or not any(self.held.values()):
            return Wait(0, "Capacity", fits_free.reason) if isinstance(fits_free, Unschedulable) else fits_free
        respecting = tuple(range(len(self.reservations)))
        if isinstance(plan := place(respecting), Plan):
            return plan
        if gang.length is not None:
            respecting = tuple(i for i in respecting if self.blocks(self.reservations[i], gang))
            if len(respecting) < len(self.reservations) and isinstance(plan := place(respecting), Plan):
                return plan
        if gang.resumable:  # preemptible backfill
            firm = tuple(i for i in respecting if not ((h := self.reservations[i].holder) and self.lends(h, gang)))
            if len(firm) < len(respecting) and isinstance(plan := place(firm), Plan):
                return plan
        holders = ", ".join(_key_text(r.key) for r in self.reservations[:3])
        return Wait(0, "Reserved", f"the free GPUs it fits on are reserved for gangs ahead of it ({holders})")

    def blocks(self, reservation: _Reservation, gang: QueuedGang) -> bool:
        """Whether a gang with a length bound must keep off the reservation's GPUs.

        Conservative backfill: it may use them when it ends by the time the reservation is expected to start.
        Slack: while the holder is young (has waited less than its own length bound, or SLACK_WINDOW_UNBOUNDED
        when it has none: `lends_until`), a gang above the default priority that asks for at most
        1/SLACK_SHARE of the reservation's GPUs may also when it ends by start + (start - now): it delays the
        holder by at most as long as the holder still waits anyway.

        Why every holder's wait stays finite although no pass remembers the last: `lends_until` is fixed (the
        holder's submission and bound do not change from pass to pass), and after it the reservation is
        conservative again. A gang that slack let in before then ends by `lends_until` + its own length bound;
        every other gang on the reserved nodes ends by the start estimated when it was admitted. So a stream of
        small high-priority gangs delays a big gang at most until its submission + its own bound + the longest
        bound among them, then it starts as under conservative backfill.
        """
        if reservation.start is None or gang.length is None:
            return True
        ends = self.now + gang.length
        if ends <= reservation.start:
            return False
        asks = gang.demand.workers * gang.demand.gpus_per_worker
        small = asks * SLACK_SHARE <= sum(reservation.held.values())
        young = self.now < reservation.lends_until
        return not (
            gang.priority > self.default_priority and small and young and ends <= 2 * reservation.start - self.now
        )

    def keeps_off_contended(self, demand: GangDemand) -> bool:
        """Whether a gang that takes any GPU type could run on the types no waiting gang names, were they empty:
        then it waits for those first and takes a named type only as a leftover (see plan_queue)."""
        if demand.gpu_type or not demand.gpus_per_worker or not self.contended:
            return False
        if (fits := self.off_contended.get(demand)) is None:
            whole = {n.name: (0 if n.name in self.contended else n.gpus) for n in self.nodes}
            fits = self.off_contended[demand] = isinstance(self.plan(whole, demand), Plan)
        return fits

    def keep_off(self, capacity: Mapping[str, int]) -> Capacity:
        return {n: (0 if n in self.contended else gpus) for n, gpus in capacity.items()}

    def stop(self, running: RunningGang, verdict: Evict) -> None:
        """`running` stops (or shrinks) by `verdict`: what it holds counts as freeing for the rest of the pass."""
        self.verdicts[running.key] = verdict
        self.freeing = _add(self.freeing, running.holds())
        del self.running[running.key]

    def take(self, plan: Plan, per_worker: int) -> None:
        self.free = _add(self.free, gpus_on((n.name for n in plan.nodes), per_worker), sign=-1)
        self.memo.clear()

    def lends(self, holder: QueuedGang, gang: QueuedGang | RunningGang) -> bool:
        """Whether `gang` may run preemptibly on what `holder` waits for (`yields_to` at the default priority)."""
        return yields_to(holder, gang, self.default_priority)

    def may_hold(self, gang: QueuedGang) -> bool:
        """Whether it gets a reservation when it does not fit: its regions have one to spare, or it is draining."""
        regions = set(gang.demand.regions) or self.all_regions
        return gang.draining or any(self.per_region[r] < self.depth for r in regions)

    def moves_over(self, gang: QueuedGang, running: RunningGang) -> bool:
        """Whether `running` gives way to `gang` (which names a type, may preempt and is of at least its priority)
        because it can move over (`can_move_over`)."""
        return (
            gang.may_preempt
            and bool(gang.demand.gpu_type)
            and running.priority <= gang.priority
            and self.can_move_over(running)
        )

    def can_move_over(self, running: RunningGang) -> bool:
        """Whether `running` takes any GPU type, sits on a type that waiting gangs name, resumes from a checkpoint
        and fits on the other types' free, unreserved GPUs now: stopped, it loses at most a checkpoint interval, and
        its next turn places it on the other types (see plan_queue: a named type's GPUs are only its leftovers)."""
        return (
            running.resumable
            and not running.demand.gpu_type
            and running.demand.gpus_per_worker > 0
            and not self.contended.isdisjoint(running.nodes)
            and isinstance(self.fit(running.demand, tuple(range(len(self.reservations))), steer=True), Plan)
        )

    def move_over(self, waiting: Iterable[QueuedGang]) -> None:
        """After every waiting gang's turn: gangs that can move over (`can_move_over`) off nodes that a waiting gang
        of at least their priority names the type of are preempted, newest first, each onto GPUs no earlier one
        counts on. The named type's GPUs are freed ahead of the typed gangs' turn rather than only when one of them
        could start at once (`moves_over`), and the other types' GPUs, which no waiting gang took, do not idle."""
        wanted: dict[tuple[tuple[str, ...], str], int] = {}
        """Regions and GPU type of the waiting gangs that name one: the highest priority among them."""
        for w in waiting:
            if w.may_preempt and w.demand.gpu_type and w.demand.gpus_per_worker and not w.draining:
                kind = (w.demand.regions, w.demand.gpu_type)
                wanted[kind] = max(wanted.get(kind, w.priority), w.priority)
        named: dict[str, int] = {}
        """Node -> the highest priority of a waiting gang that names its type and may run on it."""
        for (regions, gpu_type), priority in wanted.items():
            for node in self.eligible(GangDemand(1, 1, gpu_type, regions)):
                named[node.name] = max(named.get(node.name, priority), priority)
        for g in sorted(self.running.values(), key=lambda g: (g.priority, -g.started, g.key)):
            wanted_here = [node for node in g.nodes if node in named and named[node] >= g.priority]
            if not wanted_here or not self.can_move_over(g):
                continue
            plan = self.fit(g.demand, tuple(range(len(self.reservations))), steer=True)
            assert isinstance(plan, Plan)
            self.take(plan, g.demand.gpus_per_worker)
            types = ", ".join(sorted({n.gpu_type or "" for n in self.nodes if n.name in wanted_here}))
            why = f"it takes any GPU type and fits on others now; gangs wait for {types}"
            self.stop(g, Evict("Preempted", f"preempted to move over to other GPU types ({why})", 0))

    def yielding(self, gang: QueuedGang) -> list[RunningGang]:
        """The running gangs that stop for it when that lets it start: lower priority; gangs that move over to
        other GPU types (`moves_over`); for a gang that holds a reservation, backfill (`yields_to`). A gang that
        waits without one lent nothing and preempts no backfill: when every waiting gang did, the heavier stream
        lost more work to preemptions than backfill gained."""
        if not gang.may_preempt:
            return []
        holder = self.may_hold(gang)
        return [
            g
            for g in self.running.values()
            if g.priority < gang.priority or (holder and self.lends(gang, g)) or self.moves_over(gang, g)
        ]

    def preempt(self, gang: QueuedGang, keep_off: bool = False) -> Wait | None:
        """Shrinks, then preempts, the fewest lower-priority or backfilled gangs that make room (`keep_off`: on the
        GPU types no waiting gang names, where its next pass will look first); None when it cannot or need not."""
        if not (yielding := self.yielding(gang)):
            return None
        eligible = {n.name for n in self.eligible(gang.demand)} - (self.contended if keep_off else set())
        lower = [g for g in yielding if not eligible.isdisjoint(g.nodes)]
        base = self.keep_off(self.coming_free()) if keep_off else self.coming_free()
        if not lower or isinstance(self.plan(base, gang.demand), Plan):
            return None  # nobody to preempt, or room is coming without stopping anyone: a reservation will do
        everyone = _add(base, *(g.holds() for g in lower))
        if not isinstance(self.plan(self.keep_off(everyone) if keep_off else everyone, gang.demand), Plan):
            return None  # stopping them all would not make room: one planner call instead of one per victim
        by_cost = sorted(lower, key=lambda g: (g.gpu_hours_lost(self.now), -g.started, g.key))
        shrinks = [(g, True) for g in by_cost if g.elastic_surplus > 0]
        options = shrinks + [(g, False) for g in by_cost]
        chosen: dict[Key, tuple[RunningGang, bool]] = {}

        def freed() -> Capacity:
            parts = [
                g.holds(g.nodes[len(g.nodes) - g.elastic_surplus :] if shrink else None)
                for g, shrink in chosen.values()
            ]
            return self.keep_off(_add(base, *parts)) if keep_off else _add(base, *parts)

        plan: Plan | Unschedulable = Unschedulable("")
        for g, shrink in options:
            chosen[g.key] = (g, shrink)  # a preemption replaces a shrink of the same gang
            plan = self.plan(freed(), gang.demand)
            if isinstance(plan, Plan):
                break
        if not isinstance(plan, Plan):
            return None
        for key in list(chosen)[:-1][::-1]:  # drop any victim the others make unnecessary
            kept = chosen.pop(key)
            trial = self.plan(freed(), gang.demand)
            if isinstance(trial, Plan):
                plan = trial
            else:
                chosen[key] = kept
        for g, shrink in chosen.values():
            size = len(g.nodes) - g.elastic_surplus if shrink else 0
            verb = f"shrunk from {len(g.nodes)} to {size} workers" if shrink else "preempted"
            if g.priority < gang.priority:
                why = f"priority {gang.priority} > {g.priority}"
            elif self.lends(gang, g):
                why = "backfill, queued after it"
            else:
                why = f"it takes any GPU type and fits on others now; {gang.demand.gpu_type} is what the gang needs"
            reason = "ElasticShrink" if shrink else "Preempted"
            self.stop(g, Evict(reason, f"{verb} for {_key_text(gang.key)} ({why})", size))
        victims = ", ".join(_key_text(k) for k in chosen)
        held = gpus_on((n.name for n in plan.nodes), gang.demand.gpus_per_worker)
        self.hold(gang.key, held, self.now, plan.region)
        return Wait(0, "Preempting", f"waiting for {victims} to stop", tuple(sorted(held)))

    def reclaim(self, gang: QueuedGang, ledger: Ledger) -> Wait | None:
        """For a gang within its namespace's own quota that does not fit: preempts whole gangs of namespaces that
        borrow (hold more than their quota), newest first, until it fits; None when that cannot or need not help."""
        lender = gang.key[0]
        if lender not in ledger.quotas or isinstance(self.plan(self.coming_free(), gang.demand), Plan):
            return None
        eligible = {n.name for n in self.eligible(gang.demand)}
        borrowers = sorted(
            (g for g in self.running.values() if g.key[0] != lender and not eligible.isdisjoint(g.nodes)),
            key=lambda g: (-g.started, g.key),
        )
        room, chosen = self.coming_free(), []
        plan: Plan | Unschedulable = Unschedulable("")
        for g in borrowers:
            if not ledger.borrowing(g.key[0]):
                continue
            chosen.append(g)
            ledger.take(g.key[0], ledger.count(g.key[0], g.holds()), sign=-1)
            room = _add(room, g.holds())
            if isinstance(plan := self.plan(room, gang.demand), Plan):
                break
        if not isinstance(plan, Plan):
            for g in chosen:
                ledger.take(g.key[0], ledger.count(g.key[0], g.holds()))
            return None
        for g in chosen:
            message = f"preempted: namespace {g.key[0]} borrowed GPUs beyond its GPUQuota, taken back for {_key_text(gang.key)}"
            self.stop(g, Evict("Preempted", message, 0))
        held = gpus_on((n.name for n in plan.nodes), gang.demand.gpus_per_worker)
        self.hold(gang.key, held, self.now, plan.region)
        victims = ", ".join(_key_text(g.key) for g in chosen)
        return Wait(0, "Preempting", f"waiting for {victims} to stop (borrowed quota taken back)", tuple(sorted(held)))

    def reserve(self, gang: QueuedGang, why: Wait, keep_off: bool = False) -> Wait:
        """Holds the nodes it would get soonest, if its regions have a reservation to spare (`keep_off`: among the
        GPU types no waiting gang names)."""
        if not self.may_hold(gang):
            return why
        # only the nodes it may use count: the other gangs' endings change nothing it could get
        usable = {n.name for n in self.eligible(gang.demand)} - (self.contended if keep_off else set())

        def on_usable(capacity: Mapping[str, int]) -> Capacity:
            return {node: gpus for node, gpus in capacity.items() if node in usable}

        near = [g for g in self.running.values() if not usable.isdisjoint(g.nodes)]
        backfill = {g.key: g for g in near if self.lends(gang, g) or self.moves_over(gang, g)}  # preempted then
        ending = sorted(
            (g for g in near if g.key not in backfill),
            key=lambda g: (g.ends_by is None, g.ends_by or g.started, g.started, g.key),
        )
        prefix = [on_usable(_add(self.coming_free(), *(g.holds() for g in backfill.values())))]
        for g in ending:
            prefix.append(_add(prefix[-1], on_usable(g.holds())))

        def fits_after(k: int) -> bool:
            return isinstance(self.plan(prefix[k], gang.demand), Plan)

        k = bisect.bisect_left(range(len(prefix)), True, key=fits_after)  # more endings never fit worse
        if k == len(prefix):
            return why
        plan = self.plan(prefix[k], gang.demand)
        assert isinstance(plan, Plan)
        waited = ending[:k]
        nodes = {n.name for n in plan.nodes}
        touching = [g for g in waited if not nodes.isdisjoint(g.nodes)]
        ends = [g.ends_by for g in touching]
        start = self.now if not touching else (None if None in ends else max(e for e in ends if e is not None))
        held = gpus_on((n.name for n in plan.nodes), gang.demand.gpus_per_worker)
        window = SLACK_WINDOW_UNBOUNDED if gang.length is None else gang.length
        self.hold(gang.key, held, start, plan.region, gang.submitted + window, gang)
        when = "as soon as capacity frees" if start is None else f"in about {max(start - self.now, 0):.0f}s"
        message = f"{why.message}; {', '.join(sorted(nodes))} reserved for it, expected to start {when}"
        return replace(why, message=message, reserved=tuple(sorted(nodes)))

    # -- elastic growth -------------------------------------------------------------------------------------

    def grow(self, waiting: Sequence[QueuedGang], grow_after: float, ledger: Ledger) -> None:
        for g in sorted(self.running.values(), key=lambda g: (-g.priority, g.started, g.key)):
            if len(g.nodes) >= g.demand.workers or self.now - g.started < grow_after:
                continue
            room = _add(_add(self.free, self.held, sign=-1), g.holds())
            plan = self.plan(room, replace(g.demand, min_workers=len(g.nodes) + 1))
            if not isinstance(plan, Plan):
                continue
            onto = {n.name for n in plan.nodes}
            if any(not onto.isdisjoint(n.name for n in self.eligible(w.demand)) for w in waiting):
                continue  # a waiting gang could use these nodes: it comes first
            own = g.holds()
            grown = gpus_on((n.name for n in plan.nodes), g.demand.gpus_per_worker)
            added = {n: max(gpus - own.get(n, 0), 0) for n, gpus in grown.items()}
            counted = ledger.count(g.key[0], _add(grown, own, sign=-1))
            if ledger.refusal(g.key[0], counted):
                continue  # its namespace's quota does not allow the growth
            ledger.take(g.key[0], counted)
            size = len(plan.nodes)
            self.verdicts[g.key] = Evict("ElasticGrow", f"growing from {len(g.nodes)} to {size} workers", size)
            self.hold(g.key, added, self.now, plan.region)


def plan_queue(
    nodes: Sequence[NodeInfo],
    queued: Sequence[QueuedGang],
    running: Sequence[RunningGang] = (),
    freeing: Mapping[str, int] | None = None,
    now: float = 0.0,
    depth: int = RESERVATION_DEPTH,
    grow_after: float = 0.0,
    quotas: Mapping[str, Quota] | None = None,
    default_priority: int = 0,
) -> dict[Key, Verdict]:
    """A verdict for every queued gang (Admit or Wait) and for running gangs that must stop (Evict).

    `nodes` carry the GPUs free now (every live pod subtracted, stopping ones included); `freeing` is what pods
    already stopping hold per node; `grow_after` is how long an elastic gang runs before it may grow; `quotas`: the
    GPUQuota of each namespace that has one; `default_priority`: the globalDefault PriorityClass's value (what a job
    without priorityClassName gets, `priority.default_priority`)."""
    state = _Pass(nodes, running, freeing or {}, now, depth, default_priority)
    ledger = Ledger(quotas or {}, {n.name: n.gpu_type for n in nodes})
    for g in running:
        ledger.take(g.key[0], ledger.count(g.key[0], g.holds()))
    named = {g.demand.gpu_type for g in queued if g.demand.gpu_type and g.demand.gpus_per_worker}
    state.contended = {n.name for n in nodes if any(gpu_type_matches(n.gpu_type, t) for t in named)}
    waiting: dict[Key, tuple[QueuedGang, Wait]] = {}
    borrowing: list[QueuedGang] = []
    leftovers: list[QueuedGang] = []

    def sure_demand(gang: QueuedGang) -> dict[str, int]:
        demand = gang.demand
        gpus = (demand.min_workers or demand.workers) * demand.gpus_per_worker
        return ledger.count_demand(gang.key[0], gpus, demand.gpu_type)

    def admit(gang: QueuedGang, keep_off: bool = False) -> Plan | Wait:
        outcome = state.admit(gang, keep_off)
        if isinstance(outcome, Plan):
            counted = ledger.count(gang.key[0], gpus_on((n.name for n in outcome.nodes), gang.demand.gpus_per_worker))
            if refused := ledger.refusal(gang.key[0], counted):
                return Wait(0, "QuotaExceeded", refused)
            ledger.take(gang.key[0], counted)
            state.take(outcome, gang.demand.gpus_per_worker)
            state.verdicts[gang.key] = Admit(outcome)
        return outcome

    for gang in sorted(queued, key=queue_order):
        namespace, surely = gang.key[0], sure_demand(gang)
        keep_off = state.keeps_off_contended(gang.demand)
        if refused := ledger.refusal(namespace, surely):
            waiting[gang.key] = (gang, Wait(0, "QuotaExceeded", refused))
        elif ledger.excess(namespace, surely):
            borrowing.append(gang)
        elif isinstance(outcome := admit(gang, keep_off), Wait):
            if outcome.reason != "QuotaExceeded":
                ledger.claim(namespace, surely)
                outcome = (
                    state.reclaim(gang, ledger)
                    or state.preempt(gang, keep_off)
                    or state.reserve(gang, outcome, keep_off)
                )
                if keep_off and outcome.reason in ("Capacity", "Reserved"):
                    leftovers.append(gang)
            waiting[gang.key] = (gang, outcome)
    for gang in leftovers:  # named types' GPUs that the gangs naming them could not use this pass
        if isinstance(admit(gang), Plan):
            ledger.claim(gang.key[0], sure_demand(gang), sign=-1)
            del waiting[gang.key]
    for gang in borrowing:  # after the gangs within their quotas (and what they claim): free GPUs only, no holds
        refused = ledger.refusal(gang.key[0], sure_demand(gang))
        if isinstance(outcome := Wait(0, "QuotaExceeded", refused) if refused else admit(gang), Wait):
            waiting[gang.key] = (gang, outcome)
    in_order = sorted(waiting.values(), key=lambda item: queue_order(item[0]))
    state.move_over(g for g, _ in in_order)
    state.grow([g for g, _ in in_order], grow_after, ledger)
    ahead: Counter[frozenset[str]] = Counter()
    for gang, wait in in_order:
        pool = frozenset(gang.demand.regions) or state.all_regions
        position = 1 + sum(count for other, count in ahead.items() if not other.isdisjoint(pool))
        ahead[pool] += 1
        state.verdicts[gang.key] = replace(wait, position=position)
    return state.verdicts
