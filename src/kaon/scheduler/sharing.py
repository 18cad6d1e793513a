"""The quota-aware schedulers teams run on GPU clusters today, as baselines for Kaon.

Each is written from its project's documentation and source, rule by rule (docs/
scheduler.md lists the rules with their sources), on the same pass as every other policy
(`engine.py`), so a comparison measures the policy and not its plumbing. A workspace is
a queue with a nominal (deserved) quota; all workspaces share one cohort.

* `KueuePolicy` (`kueue`): Kueue's ClusterQueues in one cohort, BestEffortFIFO,
  borrowing without limit, preemption `reclaimWithinCohort: Any`,
  `withinClusterQueue: LowerPriority`, `borrowWithinCohort: Never` (the default).
* `KueueFairPolicy` (`kueue-fair`): the same with Kueue's fair sharing: admission by the
  ClusterQueues' dominant resource share (DRS) and its preemption strategies
  `LessThanOrEqualToFinalShare` then `LessThanInitialShare`.
* `KaiPolicy` (`kai`): NVIDIA KAI scheduler's hierarchical fair share (one level here),
  the design of Volcano's proportion plugin: a queue's fair share is its deserved quota
  (capped by its demand) plus a weighted part of what is left over; allocation favours
  queues below their fair share; reclaim with the strategies MaintainFairShare and
  GuaranteeDeservedQuota.

What none of them models, because Kueue and KAI do not do it: a job's attained service or
age. Their order inside a queue is priority, then submit time (FIFO). Shares that depend on
the whole pool (usage, fair shares) are computed once per pass in `prepare`; the real
schedulers recompute them after every admission, which a pass a second approximates.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import ClassVar

from kaon.scheduler.model import PoolState, Quota, Workload
from kaon.scheduler.policies import DISPLACE, RANK, RECLAIM, Blocking, Key, Policy, Verdict
from kaon.scheduler.quota import QuotaLedger, Vector, demand

_EPS = 1e-9
# Victim tiers, cheapest first: reclaim within nominal quota (RECLAIM), a share-based rule
# (judged one removal after another), Kueue's second fair-sharing strategy last.
SHARE, LAST_SHARE = DISPLACE, RANK + 1


def _usage(pool: PoolState) -> dict[str, Vector]:
    used: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for w in pool.running:
        u = used[w.workspace]
        for d, value in enumerate(demand(w)):
            u[d] += value
    return {ws: (u[0], u[1], u[2]) for ws, u in used.items()}


def _nominal(q: Quota) -> Vector:
    return (q.gpus, q.cpu, q.memory)


def _same_cohort(ledger: QuotaLedger, a: str, b: str) -> bool:
    qa, qb = ledger.quotas.get(a), ledger.quotas.get(b)
    return qa is not None and qb is not None and qa.cohort == qb.cohort


def _priority_verdict(p: Workload, v: Workload) -> Verdict | None:
    """withinClusterQueue: LowerPriority (Kueue), and KAI's preempt action."""
    if p.priority > v.priority:
        return RANK, f"preempted by higher-priority job {p.id} ({p.priority} > {v.priority})"
    return None


# -- Kueue ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KueuePolicy(Policy):
    """Kueue, classical preemption: see the module docstring and docs/scheduler.md."""

    usage: dict[str, Vector] = field(default_factory=dict)
    quotas: dict[str, Quota] = field(default_factory=dict)
    name: ClassVar[str] = "kueue"
    blocking: ClassVar[Blocking] = "skip"  # BestEffortFIFO: an inadmissible head is skipped
    uses_quotas: ClassVar[bool] = True
    preempts: ClassVar[bool] = True
    # A job the quota refuses may still preempt lower-priority work of its own queue
    # (Kueue's assignment mode Preempt); `victim` never lets it take another queue's
    # loan, which is borrowWithinCohort: Never.
    borrow_by_rank: bool = True

    def prepare(self, pool: PoolState) -> Policy:
        return type(self)(usage=_usage(pool), quotas=dict(pool.quotas))

    def borrows(self, w: Workload) -> bool:
        """Would admitting `w` put its ClusterQueue over its nominal quota?"""
        q = self.quotas.get(w.workspace)
        if q is None:
            return False
        used = self.usage.get(w.workspace, (0.0, 0.0, 0.0))
        need = demand(w)
        return any(used[d] + need[d] > _nominal(q)[d] + _EPS for d in range(3))

    def key(self, w: Workload, now: float) -> Key:
        # classicalIterator: under nominal before borrowing, priority, then FIFO
        return (float(self.borrows(w)), -w.priority, w.submitted_at)

    def victim(
        self, p: Workload, pk: Key, v: Workload, vk: Key, now: float, ledger: QuotaLedger | None
    ) -> Verdict | None:
        if ledger is None or v.workspace == p.workspace:
            return _priority_verdict(p, v)
        if not _same_cohort(ledger, p.workspace, v.workspace):
            return None
        if ledger.borrowing(v.workspace) and ledger.within_nominal(p):
            # reclaimWithinCohort: Any; the preemptor must fit its nominal quota
            return RECLAIM, f"reclaimed within the cohort for {p.id} (workspace {p.workspace})"
        return None

    def victim_order(self, v: Workload, vk: Key, lent: bool) -> tuple[object, ...]:
        # CandidatesOrdering: other ClusterQueues first, lower priority, admitted last
        return (lent, -v.priority, v.started_at or 0.0, v.id)


@dataclass(frozen=True)
class KueueFairPolicy(KueuePolicy):
    """Kueue with fair sharing (weight 1 for every ClusterQueue)."""

    name: ClassVar[str] = "kueue-fair"
    sequential_tiers: ClassVar[frozenset[int]] = frozenset({SHARE, LAST_SHARE})

    def key(self, w: Workload, now: float) -> Key:
        # fairSharingIterator: not borrowing first, lowest DRS with the workload, priority,
        # then FIFO
        return (float(self.borrows(w)), self.share(w), -w.priority, w.submitted_at)

    def share(self, w: Workload) -> float:
        """The DRS of `w`'s ClusterQueue at the start of the pass, with `w` admitted."""
        q = self.quotas.get(w.workspace)
        if q is None:
            return 0.0
        lendable = [0.0, 0.0, 0.0]
        for other in self.quotas.values():
            if other.cohort == q.cohort:
                for d, value in enumerate(_nominal(other)):
                    lendable[d] += value
        used = self.usage.get(w.workspace, (0.0, 0.0, 0.0))
        need = demand(w)
        return _drs([used[d] + need[d] for d in range(3)], _nominal(q), lendable)

    def outranks(self, pk: Key, vk: Key) -> bool:
        return pk[1] < vk[1]

    def victim(
        self, p: Workload, pk: Key, v: Workload, vk: Key, now: float, ledger: QuotaLedger | None
    ) -> Verdict | None:
        if ledger is None or v.workspace == p.workspace:
            return _priority_verdict(p, v)
        if not _same_cohort(ledger, p.workspace, v.workspace):
            return None
        if not ledger.borrowing(v.workspace):
            return None  # only ClusterQueues that borrow are candidates
        if ledger.within_nominal(p):  # FairSharingPreemptWithinNominal (on by default)
            return RECLAIM, f"reclaimed within the cohort for {p.id} (workspace {p.workspace})"
        mine = _ledger_drs(ledger, p.workspace, demand(p), +1)
        if mine <= _ledger_drs(ledger, v.workspace, demand(v), -1) + _EPS:
            return SHARE, f"fair sharing: {p.workspace}'s share stays at most {v.workspace}'s"
        if mine < _ledger_drs(ledger, v.workspace, (0.0, 0.0, 0.0), +1) - _EPS:
            return LAST_SHARE, f"fair sharing: {p.workspace}'s share below {v.workspace}'s"
        return None


def _drs(used: list[float], nominal: Vector, lendable: list[float]) -> float:
    """Dominant resource share: the largest borrowed fraction of the cohort's lendable
    capacity, times 1000 (Kueue's scale), over the resources the cohort has."""
    share = 0.0
    for d in range(3):
        if math.isinf(lendable[d]) or lendable[d] <= 0:
            continue
        share = max(share, max(used[d] - nominal[d], 0.0) * 1000.0 / lendable[d])
    return share


def _ledger_drs(ledger: QuotaLedger, ws: str, delta: Vector, sign: int) -> float:
    q = ledger.quotas[ws]
    used = ledger.used[ws]
    return _drs(
        [used[d] + sign * delta[d] for d in range(3)],
        _nominal(q),
        ledger.cohort_nominal[q.cohort],
    )


# -- KAI scheduler ----------------------------------------------------------------------


@dataclass(frozen=True)
class KaiPolicy(Policy):
    """KAI scheduler's proportion plugin: deserved quota, over-quota share by weight,
    reclaim to keep fair shares and to guarantee deserved quotas."""

    weight: float = 1.0  # over-quota weight of every queue (KAI's default)
    deserved: dict[str, float] = field(default_factory=dict)
    fair: dict[str, float] = field(default_factory=dict)
    allocated: dict[str, float] = field(default_factory=dict)
    name: ClassVar[str] = "kai"
    sequential_tiers: ClassVar[frozenset[int]] = frozenset({SHARE})
    blocking: ClassVar[Blocking] = "skip"
    uses_quotas: ClassVar[bool] = True
    preempts: ClassVar[bool] = True
    borrow_by_rank: bool = True  # a queue over its deserved quota may reclaim up to its fair share

    def prepare(self, pool: PoolState) -> Policy:
        deserved = {ws: q.gpus for ws, q in pool.quotas.items()}
        requested: dict[str, float] = defaultdict(float)
        allocated: dict[str, float] = defaultdict(float)
        for w in pool.running:
            requested[w.workspace] += w.total_gpus
            allocated[w.workspace] += w.total_gpus
        for w in pool.pending:
            requested[w.workspace] += w.total_gpus
        total = float(sum(len(n.gpus) for n in pool.nodes if n.schedulable))
        fair = fair_shares(deserved, dict(requested), total, self.weight)
        return KaiPolicy(self.weight, deserved, fair, dict(allocated))

    def key(self, w: Workload, now: float) -> Key:
        ws = w.workspace
        if ws not in self.deserved:
            return (0.0, 0.0, 0.0, -w.priority, w.submitted_at)
        used, fair = self.allocated.get(ws, 0.0), self.fair.get(ws, 0.0)
        over_fair = used > fair + _EPS
        starved = used + w.total_gpus <= self.deserved[ws] + _EPS
        saturation = used / fair if fair > 0 else (math.inf if used > 0 else 0.0)
        # queue order: under fair share, then starved (under deserved with the job), then
        # the lower allocated/fair-share ratio; inside a queue priority, then FIFO
        return (float(over_fair), float(not starved), saturation, -w.priority, w.submitted_at)

    def outranks(self, pk: Key, vk: Key) -> bool:
        return pk[0] < vk[0]

    def victim(
        self, p: Workload, pk: Key, v: Workload, vk: Key, now: float, ledger: QuotaLedger | None
    ) -> Verdict | None:
        if ledger is None or v.workspace == p.workspace:
            return _priority_verdict(p, v)
        if not (p.workspace in self.deserved and v.workspace in self.deserved):
            return None
        mine = ledger.used[p.workspace][0] + p.total_gpus
        if mine > self.fair.get(p.workspace, 0.0) + _EPS:
            return None  # CanReclaimResources: the reclaimer stays within its fair share
        theirs = ledger.used[v.workspace][0]
        if theirs > self.fair.get(v.workspace, 0.0) + _EPS:
            return SHARE, f"reclaimed for {p.id}: {v.workspace} is over its fair share"
        if mine <= self.deserved[p.workspace] + _EPS and theirs > self.deserved[v.workspace]:
            return RECLAIM, f"reclaimed for {p.id}: {p.workspace} is owed its deserved quota"
        return None

    def victim_order(self, v: Workload, vk: Key, lent: bool) -> tuple[object, ...]:
        # the most saturated queue first, then lower priority, then the latest started
        return (lent, vk[0], vk[2], -v.priority, v.started_at or 0.0, v.id)


def fair_shares(
    deserved: dict[str, float], requested: dict[str, float], total: float, weight: float = 1.0
) -> dict[str, float]:
    """KAI's fair share: each queue first gets min(deserved, requested); what is left is
    divided by over-quota weight (equal weights here) among the queues that want more,
    each capped at its request, until nothing is left or nobody wants more."""
    fair = {ws: min(d, requested.get(ws, 0.0)) for ws, d in deserved.items()}
    left = total - sum(fair.values())
    while left > _EPS:
        wanting = [ws for ws in fair if requested.get(ws, 0.0) - fair[ws] > _EPS]
        if not wanting:
            break
        each = left * weight / (weight * len(wanting))
        given = 0.0
        for ws in wanting:
            more = min(each, requested[ws] - fair[ws])
            fair[ws] += more
            given += more
        left -= given
        if given <= _EPS:
            break
    return fair
