"""One scheduling pass: the same loop for every policy.

The queue is sorted once by the policy's key. Each job in turn is checked against its
workspace's quota, placed on free capacity (best fit, fewest nodes), or, if the policy
allows, placed by preempting running jobs the policy names as victims (or, for a policy
that consolidates, by moving small jobs off the nodes a gang needs onto GPUs free
elsewhere). A job that still
cannot start gets a human-readable reason and applies the policy's blocking rule to the
jobs behind it (strict FIFO, skip, an EASY reservation, or a Kaon drain reservation).

Cost is kept near O(jobs log jobs + placements): placement uses the bucketed free index,
a job bigger than the free GPUs is rejected by one comparison, and preemption, the only
step that looks at running jobs, is skipped for a job shape that has already failed to
find victims in this pass and stops after a few fruitless attempts.
"""

from __future__ import annotations

from dataclasses import replace

from kaon.scheduler.backfill import drain_reservation, easy_reservation
from kaon.scheduler.capacity import FreeIndex, place_gang
from kaon.scheduler.catalog import get_policy
from kaon.scheduler.model import (
    Decisions,
    Placement,
    PoolState,
    Preemption,
    WorkerPlacement,
    Workload,
)
from kaon.scheduler.policies import DISPLACE, RANK, RECLAIM, KaonPolicy, Key, Policy
from kaon.scheduler.preempt import plan
from kaon.scheduler.quota import QuotaLedger

GIVE_UP_AFTER = 4  # fruitless preemptions by rank before a pass stops trying them
MAX_PREEMPTING = 16  # jobs started by preemption per pass; the rest wait for the next
# A preemption by rank looks at victims (best candidates first) until it has seen this many
# GPUs of them per GPU it needs, and at least MIN_VICTIM_GPUS: enough to find a fitting
# node. A job owed quota looks much further, as loans may be spread thin over the pool.
VICTIM_GPUS_PER_GPU, MIN_VICTIM_GPUS = 8, 64
OWED_VICTIM_GPUS_PER_GPU, MIN_OWED_VICTIM_GPUS = 64, 512

# Jobs of one shape later in the queue rank no better, so they cannot find victims an
# earlier one missed; whether the job is owed quota or must swap decides the rules.
_Shape = tuple[int, int, float, int, bool, bool]
# The quota's refusal (why, and whether it is soft) or None, and whether the job is owed.
_QuotaAnswer = tuple[tuple[str, bool] | None, bool]
_NO_QUOTA: _QuotaAnswer = (None, False)


class Pass:
    """The mutable state of one pass; `run()` returns the decisions."""

    def __init__(self, pool: PoolState, policy: Policy) -> None:
        self.pool = pool
        self.policy = policy.prepare(pool)
        self.now = pool.now
        self.index = FreeIndex(pool.nodes)
        self.ledger: QuotaLedger | None = None
        if self.policy.uses_quotas and pool.quotas:
            self.ledger = QuotaLedger(pool.quotas, pool.running)
        self.placements: list[Placement] = []
        self.preemptions: list[Preemption] = []
        self.waiting: dict[str, str] = {}
        self.reserved: dict[str, tuple[str, ...]] = {}
        self.started: list[Workload] = []
        self.evicted: set[str] = set()
        self.victims: list[tuple[Key, Workload]] | None = None
        self.failed_shapes: set[_Shape] = set()
        self.failures = 0
        self.preempting = 0  # jobs placed by preemption in this pass
        self.reservation_tries = 0
        self.quota_answers: dict[tuple[int, str, int, int, float, int], _QuotaAnswer] = {}
        self.no_room: dict[tuple[int, int, int, int], str] = {}
        self.worst: Key | None = None  # the worst-ranked victim that may go now
        self.lowest_priority: int | None = None  # of any running preemptible job
        self.sorted_victims = False
        self.held: list[int] = []
        self.shadow: float | None = None
        self.blocker: Workload | None = None
        self.short: list[str] = []

    def run(self) -> Decisions:
        key = self.policy.key
        now = self.now
        queue = sorted((key(w, now), w.id, w) for w in self.pool.pending)
        for k, _, w in queue:
            reason = self._consider(k, w)
            if reason is not None:
                self.waiting[w.id] = reason
        return Decisions(
            placements=tuple(self.placements),
            preemptions=tuple(self.preemptions),
            waiting=self.waiting,
            reserved=self.reserved,
            short_of_capacity=tuple(self.short),
        )

    def _consider(self, k: Key, w: Workload) -> str | None:
        """Start `w` (returns None) or say why it waits."""
        if w.not_before is not None and w.not_before > self.now:
            return "backing off before a retry"
        if self.blocker is not None:
            self.short.append(w.id)
            return _behind(self.blocker, w)
        ledger = self.ledger
        if ledger is None:
            refusal, owed = _NO_QUOTA
        else:  # the cache looked up here: every waiting job asks, nearly always a hit
            shape = (ledger.version, w.workspace, w.workers, w.gpus, w.cpu, w.memory)
            refusal, owed = self.quota_answers.get(shape) or self._quota(w)
        swappable = self.policy.preempts and self.policy.borrow_by_rank
        if refusal is not None and not (refusal[1] and swappable):
            return refusal[0]
        swap = refusal is not None  # may only take the place of borrowed work
        placed = None if swap else self._place(w)
        if placed is None and self.policy.preempts and self.preempting < MAX_PREEMPTING:
            # (the cap checked here too: once it is reached, most of the queue stops here)
            placed = self._preempt(k, w, swap, owed)
        if placed is None:
            if refusal is not None:
                return refusal[0]
            self.short.append(w.id)
            return self._block(w)
        self.placements.append(Placement(w.id, placed))
        if self.ledger is not None:
            self.ledger.add(w, +1)
        if self.policy.blocking == "easy":
            self.started.append(replace(w, placement=placed, started_at=self.now))
        return None

    def _quota(self, w: Workload) -> _QuotaAnswer:
        """The quota's answer (a refusal, or None) and whether `w` is owed quota (inside
        its workspace's nominal share), cached until the ledger changes: a full pool leaves
        long runs of jobs of one workspace and shape that all get the same answers."""
        ledger = self.ledger
        assert ledger is not None
        key = (ledger.version, w.workspace, w.workers, w.gpus, w.cpu, w.memory)
        answer = self.quota_answers.get(key)
        if answer is None:
            owed = ledger.limited(w.workspace) and ledger.within_nominal(w)
            answer = self.quota_answers[key] = (ledger.refusal(w), owed)
        return answer

    def _place(self, w: Workload) -> tuple[WorkerPlacement, ...] | None:
        placed = place_gang(self.index, w)
        if placed is None and self.shadow is not None and self.held:
            if w.walltime_s is not None and self.now + w.walltime_s <= self.shadow:
                for i in self.held:  # ends before the head's shadow time: may use its nodes
                    self.index.unhold(i)
                placed = place_gang(self.index, w)
                for i in self.held:
                    self.index.hold(i)
        return placed

    # -- preemption ---------------------------------------------------------------------

    def _preempt(
        self, k: Key, w: Workload, swap: bool, owed: bool
    ) -> tuple[WorkerPlacement, ...] | None:
        """Place `w` by preempting victims the policy names, the cheapest tier first. With
        `swap` the cohort is full, so the victims must give back at least what `w` takes;
        `owed`: `w` is inside its workspace's quota, so its owner may reclaim loans."""
        if self.preempting >= MAX_PREEMPTING:
            return None
        ledger = self.ledger
        shape = (w.workers, w.gpus, w.cpu, w.memory, owed, swap)
        if shape in self.failed_shapes or (self.failures >= GIVE_UP_AFTER and not owed):
            return None
        self._victims()
        if not self._may_preempt(k, w):
            return None
        if ledger is not None:
            ledger.free_gpus = self.index.free_gpus
        victims = self._sort_victims()
        reasons: dict[str, str] = {}
        tiers: dict[int, list[Workload]] = {}
        lent: dict[str, float] = {}  # what other workspaces borrow, left to take back
        enough = max(VICTIM_GPUS_PER_GPU * w.total_gpus, MIN_VICTIM_GPUS)
        if owed:  # quota owed is a promise: look much further (once per shape)
            enough = max(OWED_VICTIM_GPUS_PER_GPU * w.total_gpus, MIN_OWED_VICTIM_GPUS)
        found = 0
        moves = self._move_budget(w)
        moved: set[str] = set()  # candidates that would only be moved (they do not count
        # toward `enough`: a node frees up only when all its small jobs are candidates)
        # Share-based rules judge each victim as if the ones before it were gone (Kueue's
        # fair sharing and KAI simulate the removals one by one).
        sequential = self.policy.sequential_tiers if ledger is not None else frozenset()
        taken: list[Workload] = []
        evicted, judge, now = self.evicted, self.policy.victim, self.now  # the loop is hot
        for vk, v in victims:
            if found >= enough:
                break  # plenty to choose nodes from; the rest rank better anyway
            if v.id in evicted:
                continue
            verdict = judge(w, k, v, vk, now, ledger)
            if verdict is None and moves > 0 and self._movable(w, v, moves):
                verdict = DISPLACE, f"moved to another node to make room for gang {w.id}"
                moved.add(v.id)
            if verdict is None:
                continue
            tier, reasons[v.id] = verdict
            # Another quota-bound workspace's work: only its loan may be taken.
            if ledger is not None and v.workspace != w.workspace and ledger.limited(v.workspace):
                loan = self._within_loan(v, lent, strict=tier != RECLAIM)
                if not loan and tier == RANK:
                    continue  # rank never takes from another workspace's own share
                if not loan:
                    tier = DISPLACE
            tiers.setdefault(tier, []).append(v)
            found += 0 if v.id in moved else v.total_gpus
            if tier in sequential:
                assert ledger is not None
                ledger.add(v, -1)
                taken.append(v)
        for v in taken:
            assert ledger is not None
            ledger.add(v, +1)
        result = None
        eligible: list[Workload] = []
        for tier in sorted(tiers):  # the cheapest kind of victim that makes room
            eligible = [*eligible, *tiers[tier]]
            result = plan(self.index, w, eligible)
            if result is not None and swap and not self._swap_ok(w, *result):
                result = None
            if result is not None and not self._moves_ok(w, *result, moved, moves):
                result = None
            if result is not None:
                break
        if result is None:
            self.failed_shapes.add(shape)
            self.failures += not owed  # a quota owed is always tried (once per shape)
            return None
        placed, released = result
        self.preempting += 1
        for v in released:
            self.evicted.add(v.id)
            self.preemptions.append(Preemption(v.id, reasons[v.id]))
            if self.ledger is not None:
                self.ledger.add(v, -1)
        return placed

    def _swap_ok(
        self, w: Workload, placed: tuple[WorkerPlacement, ...], released: list[Workload]
    ) -> bool:
        """Keep a swap only if the cohort stays within its nominal; else undo it."""
        assert self.ledger is not None
        if self.ledger.cohort_room(w, released):
            return True
        self.index.release(replace(w, placement=placed))
        for v in reversed(released):
            self.index.claim(v)
        return False

    def _move_budget(self, w: Workload) -> int:
        """GPUs of small jobs that may be moved to make room for gang `w` (consolidation):
        what stays free once `w` is placed, so every moved job can start again at once
        elsewhere. 0 when the policy does not consolidate or `w` has one-GPU workers."""
        if not self.policy.consolidates or w.gpus < 2:
            return 0
        return max(self.index.free_gpus - w.total_gpus, 0)

    def _movable(self, w: Workload, v: Workload, budget: int) -> bool:
        """May running job `v` be moved aside for gang `w`? Only a one-worker job smaller
        than one of `w`'s workers (so the move frees more than it costs), not of a higher
        priority, that has run its minimum run time, that fits the budget and that fits on
        a node with free GPUs now."""
        return (
            v.workers == 1
            and v.total_gpus < w.gpus
            and v.total_gpus <= budget
            and v.priority <= w.priority
            and v.gpus <= self.index.largest_free()
            and self.policy.ready(v, self.now)
        )

    def _moves_ok(
        self,
        w: Workload,
        placed: tuple[WorkerPlacement, ...],
        released: list[Workload],
        moved: set[str],
        budget: int,
    ) -> bool:
        """Keep a plan only if the jobs it moves fit in what stays free; else undo it."""
        if sum(v.total_gpus for v in released if v.id in moved) <= budget:
            return True
        self.index.release(replace(w, placement=placed))
        for v in reversed(released):
            self.index.claim(v)
        return False

    def _may_preempt(self, k: Key, w: Workload) -> bool:
        """A cheap necessary condition: does `w` outrank the worst victim, reclaim, or
        fit once small jobs are moved aside?"""
        if self._move_budget(w) > 0:
            return True
        if self.worst is not None and self.policy.outranks(k, self.worst):
            return True
        if self.lowest_priority is not None and w.priority > self.lowest_priority:
            return True  # a higher priority class need not wait for a minimum run time
        ledger = self.ledger
        if ledger is None or not ledger.limited(w.workspace) or not ledger.within_nominal(w):
            return False
        # Owed quota: reclaim loans, or move small jobs aside onto free GPUs elsewhere.
        return self.index.free_gpus > 0 or any(ws != w.workspace for ws in ledger.lenders())

    def _within_loan(self, v: Workload, lent: dict[str, float], strict: bool) -> bool:
        """Take from another workspace only what it borrows: by rank, never below its
        nominal quota (else it would reclaim at once and the two would thrash); by
        reclaim, while it still borrows (at most one job below its nominal)."""
        assert self.ledger is not None
        left = lent.get(v.workspace)
        if left is None:  # asked once per workspace and search, not once per victim
            left = lent[v.workspace] = self.ledger.borrowed_gpus(v.workspace)
        if left <= 1e-9 or (strict and left + 1e-9 < v.total_gpus):
            return False
        lent[v.workspace] = left - v.total_gpus
        return True

    def _victims(self) -> list[tuple[Key, Workload]]:
        """Running preemptible jobs, first to go first: work borrowed from another
        workspace's quota, then the worst ranked, then the most recently started (least
        work lost). Built once per pass, on first need, and sorted only when a waiting
        job passes the cheap test against the worst-ranked victim."""
        if self.victims is None:
            policy, now = self.policy, self.now
            keyed = [(policy.key(v, now), v) for v in self.pool.running if v.preemptible]
            ready = [vk for vk, v in keyed if policy.ready(v, now)]
            self.worst = max(ready, default=None)
            self.lowest_priority = min((v.priority for _, v in keyed), default=None)
            self.victims = keyed
            self.sorted_victims = False
        return self.victims

    def _sort_victims(self) -> list[tuple[Key, Workload]]:
        victims = self._victims()
        if not self.sorted_victims:
            ledger, victim_order = self.ledger, self.policy.victim_order
            lent: dict[str, bool] = {}  # per workspace: asked once, not once per victim
            for _, v in victims:
                if v.workspace not in lent:
                    lent[v.workspace] = ledger is not None and ledger.borrowing(v.workspace)

            def order(entry: tuple[Key, Workload]) -> tuple[object, ...]:
                vk, v = entry
                return victim_order(v, vk, lent[v.workspace])

            victims.sort(key=order, reverse=True)
            self.sorted_victims = True
        return victims

    # -- blocking -------------------------------------------------------------------------

    def _block(self, w: Workload) -> str:
        why = self._no_room(w)
        blocking = self.policy.blocking
        if blocking == "strict":
            self.blocker = w
        elif blocking != "skip" and self.reservation_tries < self.policy.max_reservations:
            self.reservation_tries += 1  # tried once, even if no node can ever host it
            if blocking == "easy":
                running = [*self.pool.running, *self.started]
                self.shadow, nodes = easy_reservation(self.index, w, running, self.now)
            else:
                nodes = drain_reservation(self.index, w)
            if nodes:
                for i in nodes:
                    self.index.hold(i)
                self.held.extend(nodes)
                self.reserved[w.id] = tuple(self.index.nodes[i].id for i in nodes)
                why += f"; holding node(s) {', '.join(self.reserved[w.id])} for it"
        return why

    def _no_room(self, w: Workload) -> str:
        if not w.gpus or w.labels or w.gpu_type:  # uncached: rare, and per shape
            return self._describe_no_room(w)
        key = (w.workers, w.gpus, self.index.free_gpus, len(self.reserved))
        if key not in self.no_room:
            self.no_room[key] = self._describe_no_room(w)
        return self.no_room[key]

    def _describe_no_room(self, w: Workload) -> str:
        each = f"{w.gpus} GPU" if w.gpus else _cpu_memory(w.cpu, w.memory)
        shape = f"{w.workers} x {each}" if w.workers > 1 else each
        if w.labels or w.gpu_type:  # only the nodes it may use tell why it waits
            return f"no fitting node for {shape}: {self._among_matching(w)}"
        if w.gpus:
            most = self.index.largest_free()
            free = f"{self.index.free_gpus} GPUs free, at most {most} on one node"
        else:
            listed = [i for i, on in enumerate(self.index.listed) if on]
            cpu = max((self.index.cpu[i] for i in listed), default=0.0)
            memory = max((self.index.memory[i] for i in listed), default=0)
            free = f"at most {_cpu_memory(cpu, memory)} free on one node"
        room = f"no fitting node for {shape}: {free}"
        if self.reserved:
            room += f" outside the nodes held for {', '.join(self.reserved)}"
        return room

    def _among_matching(self, w: Workload) -> str:
        wanted = [f"{k}={v}" for k, v in w.labels] + ([w.gpu_type] if w.gpu_type else [])
        idx = self.index
        mine = [
            i
            for i, n in enumerate(idx.nodes)
            if idx.listed[i]
            and all(item in n.labels for item in w.labels)
            and (w.gpu_type is None or n.gpu_type == w.gpu_type)
        ]
        if not mine:
            return f"no node with {', '.join(wanted)} (none in the pool now)"
        if w.gpus:
            most = max(len(idx.gpus[i]) for i in mine)
            return f"at most {most} GPUs free on a node with {', '.join(wanted)}"
        cpu = max(idx.cpu[i] for i in mine)
        memory = max(idx.memory[i] for i in mine)
        return f"at most {_cpu_memory(cpu, memory)} free on a node with {', '.join(wanted)}"


def _cpu_memory(cpu: float, memory: int) -> str:
    return f"{cpu:g} CPU, {memory / 2**30:.3g} GiB"


def _behind(blocker: Workload, w: Workload) -> str:
    if blocker.priority > w.priority:
        return f"behind higher-priority job {blocker.id}"
    return f"behind earlier job {blocker.id}, which does not fit yet (strict FIFO)"


def run_pass(pool: PoolState, policy: Policy) -> Decisions:
    """Decide one pass under `policy`. Pure: same pool, same decisions."""
    return Pass(pool, policy).run()


DEFAULT_POLICY = KaonPolicy()


def schedule(pool: PoolState, policy: Policy | str = DEFAULT_POLICY) -> Decisions:
    """The entry point the control plane calls: which pending workloads start where, whom
    to preempt, and why the others wait. Kaon's policy unless another is asked for, by
    name or as an object (``schedule(pool, policy="easy")``); the baselines exist so the
    simulator compares them with Kaon through this very function."""
    if isinstance(policy, str):
        policy = get_policy(policy)
    return run_pass(pool, policy)
