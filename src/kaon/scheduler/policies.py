"""The scheduling policies: Kaon's own and the baselines it is measured against.

A policy only says three things; the pass in `engine.py` does the rest, identically for
all of them, so a comparison measures the policy and not its plumbing:

* `key(w, now)`: the order of the queue (smaller first). It is computed from the
  pool alone (priority, submit time, attained service, the clock), because the
  control plane is crash-only and keeps no scheduler memory between passes.
* `victim(p, v, ...)`: whether waiting job `p` may preempt running job `v`, and why.
* `blocking`: what a job that cannot start does to the jobs behind it: "strict" stops
  the queue (FIFO), "skip" lets everything behind it try (work conserving: LAS, SRTF),
  "easy" reserves for the head with walltime estimates (EASY backfill), "reserve"
  holds the nodes the head will use, so that backfill never lands on them (Kaon).

Kaon (`KaonPolicy`) is priority classes, then least attained service in geometric levels
(short jobs finish first without anyone declaring a duration), lowered by waiting time
(aging, so nothing starves), then submit time; with quotas, borrowing and reclaim from
`quota.py`, a node reservation for the job at the head, and preemption that is bounded by
a minimum run time sized to the restart penalty.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Literal

from kaon.scheduler.model import PoolState, Workload
from kaon.scheduler.quota import QuotaLedger

Key = tuple[float, ...]
Blocking = Literal["strict", "skip", "easy", "reserve"]

# Why a victim may go, cheapest first: the engine tries to make room with reclaimed loans
# alone, then also by moving small jobs aside, and only then by rank (priority or LAS).
RECLAIM, DISPLACE, RANK = 0, 1, 2
Verdict = tuple[int, str]


class Policy:
    """Base: priority, then FIFO; never preempts; strict head-of-line blocking."""

    name: ClassVar[str] = "fifo"
    blocking: ClassVar[Blocking] = "strict"
    uses_quotas: ClassVar[bool] = False
    preempts: ClassVar[bool] = False
    max_reservations: int = 0
    borrow_by_rank: bool = False  # over-quota work may take the place of lower-ranked loans
    # Tiers whose victims are judged as if the candidates before them had gone (the
    # share-based rules of the baselines); Kaon judges each against the pool as it is.
    sequential_tiers: ClassVar[frozenset[int]] = frozenset()
    # Consolidation: a gang that does not fit although enough GPUs are free may move
    # small jobs to the free GPUs elsewhere (each restarts at once, paying one restart).
    consolidates: ClassVar[bool] = False

    def key(self, w: Workload, now: float) -> Key:
        return (-w.priority, w.submitted_at)

    def victim(
        self, p: Workload, pk: Key, v: Workload, vk: Key, now: float, ledger: QuotaLedger | None
    ) -> Verdict | None:
        """Whether waiting job `p` may preempt running job `v`: (tier, reason), or None."""
        return None

    def ready(self, v: Workload, now: float) -> bool:
        """May running job `v` be preempted by rank at all now (e.g. ran long enough)?"""
        return True

    def outranks(self, pk: Key, vk: Key) -> bool:
        """Could a waiting job keyed `pk` preempt a running job keyed `vk` by rank? A cheap
        necessary condition for `victim`, checked against the worst-ranked victim."""
        return False

    def prepare(self, pool: PoolState) -> Policy:
        """The policy bound to one pass's pool. Policies whose order depends on the whole
        pool (usage per workspace, fair shares) compute it here, once per pass, and
        return a new object; the others return themselves. The control plane keeps no
        scheduler memory, so this is derived from the pool alone."""
        return self

    def learn(self, samples: Sequence[float]) -> Policy:
        """The policy fitted to the service (GPU-seconds) of past jobs. Only the Gittins
        baseline uses a distribution; the others ignore it."""
        return self

    def victim_order(self, v: Workload, vk: Key, lent: bool) -> tuple[object, ...]:
        """Sort key of running job `v` as a victim, largest first: work borrowed from
        another workspace's quota, then the worst ranked, then the most recently started
        (least work lost)."""
        return (lent, vk, v.started_at or 0.0, v.id)


class FifoPolicy(Policy):
    """Strict priority FIFO: the head waits and everything waits behind it."""


class EasyPolicy(Policy):
    """Priority FIFO with EASY backfill on the users' walltime estimates."""

    name: ClassVar[str] = "easy"
    blocking: ClassVar[Blocking] = "easy"
    max_reservations = 1


def _priority_victim(p: Workload, v: Workload) -> Verdict | None:
    if p.priority > v.priority:
        return RANK, f"preempted by higher-priority job {p.id} ({p.priority} > {v.priority})"
    return None


@dataclass(frozen=True)
class LasPolicy(Policy):
    """Tiresias' discretized two-dimensional LAS: attained GPU-seconds (GPUs x time) put a
    job in one of a few queues; FIFO inside a queue; a job preempts any running job in a
    lower queue. Work conserving: a job that does not fit is skipped."""

    thresholds: tuple[float, ...] = (3250.0, 7200.0, 18000.0)
    name: ClassVar[str] = "las"
    blocking: ClassVar[Blocking] = "skip"
    preempts: ClassVar[bool] = True

    def key(self, w: Workload, now: float) -> Key:
        return (-w.priority, bisect_right(self.thresholds, w.attained(now)), w.submitted_at)

    def outranks(self, pk: Key, vk: Key) -> bool:
        return pk[0] < vk[0] or (pk[0] == vk[0] and pk[1] < vk[1])

    def victim(
        self, p: Workload, pk: Key, v: Workload, vk: Key, now: float, ledger: QuotaLedger | None
    ) -> Verdict | None:
        if p.priority != v.priority:
            return _priority_victim(p, v)
        if pk[1] < vk[1]:
            return RANK, f"preempted by {p.id}, which has had less service (queue {pk[1]:g})"
        return None


@dataclass(frozen=True)
class SrtfPolicy(Policy):
    """Oracle shortest remaining time first: it reads the true duration from `walltime_s`.
    A lower bound for policies that do not know durations, not a policy to deploy."""

    restart_penalty_s: float = 60.0
    name: ClassVar[str] = "srtf"
    blocking: ClassVar[Blocking] = "skip"
    preempts: ClassVar[bool] = True

    def key(self, w: Workload, now: float) -> Key:
        done = w.attained(now) / max(w.total_gpus, 1)
        remaining = (w.walltime_s if w.walltime_s is not None else math.inf) - done
        return (-w.priority, max(remaining, 0.0), w.submitted_at)

    def outranks(self, pk: Key, vk: Key) -> bool:
        return pk[0] < vk[0] or (pk[0] == vk[0] and pk[1] + self.restart_penalty_s < vk[1])

    def victim(
        self, p: Workload, pk: Key, v: Workload, vk: Key, now: float, ledger: QuotaLedger | None
    ) -> Verdict | None:
        if p.priority != v.priority:
            return _priority_victim(p, v)
        if pk[1] + self.restart_penalty_s < vk[1]:
            return RANK, f"preempted by {p.id}, which has less time left"
        return None


@dataclass(frozen=True)
class KaonPolicy(Policy):
    """Kaon's policy. Every knob has a default meant for any pool, not for one trace.

    * LAS levels: attained GPU-seconds below `las_base_gpu_s` is level 0; each further
      factor of `las_ratio` is one level more (geometric, as in multi-level feedback
      queues: a job's expected remaining time grows with what it has already received
      under heavy-tailed run times, so this approximates shortest-remaining-first).
    * Aging: a job gains one level for every `age_s` seconds it has waited in total
      (`now - submitted_at - run time`), down to level 0 and then below it, so a job that
      waits long enough outranks everything of its priority: no starvation. The credit
      stays with a running job, so a job that waited long is not preempted by one that
      waited less, and two jobs cannot trade places back and forth. A day per level: at
      an hour per level, under a backlog of hours, waiting time outweighs service and the
      queue turns FIFO again (measured on the Philly week: average JCT nearly doubles);
      a day still bounds the wait of the longest job.
    * Preemption: a waiting job preempts a running job of its priority only when it is at
      least `hysteresis` levels better and the victim has run `min_run_s` (at least
      `min_run_factor` restart penalties) since it last started, so a restart's cost is a
      bounded fraction of the time bought and two jobs cannot swap back and forth.
      A higher priority class preempts at once.
    * Quotas (see `quota.py`): work inside a workspace's nominal quota is never taken by
      rank from another workspace; an owner reclaims its lent quota at once. With
      `borrow_by_rank`, a job over its quota in a full cohort may still take the place
      of another workspace's borrowed, lower-ranked work (LAS among borrowers), as long
      as that workspace stays at or above its nominal quota.
    """

    las_base_gpu_s: float = 3600.0
    las_ratio: float = 4.0
    las_levels: int = 6
    age_s: float = 86_400.0
    min_run_s: float = 600.0
    min_run_factor: float = 10.0
    restart_penalty_s: float = 60.0
    hysteresis: int = 1
    max_reservations: int = 1
    borrow_by_rank: bool = True
    name: ClassVar[str] = "kaon"
    blocking: ClassVar[Blocking] = "reserve"
    consolidates: ClassVar[bool] = True
    uses_quotas: ClassVar[bool] = True
    preempts: ClassVar[bool] = True

    @cached_property
    def min_run(self) -> float:
        """Asked of every running job in every pass (`ready`): computed once per policy."""
        return max(self.min_run_s, self.min_run_factor * self.restart_penalty_s)

    def level(self, w: Workload, now: float) -> int:
        """The LAS level of `w`'s service so far (0 for the least served)."""
        return self._level(w.attained(now))

    def _level(self, attained: float) -> int:
        if attained < self.las_base_gpu_s:
            return 0
        steps = int(math.log(attained / self.las_base_gpu_s, self.las_ratio)) + 1
        return min(steps, self.las_levels - 1)

    def key(self, w: Workload, now: float) -> Key:
        # Called for every job in every pass: the common cases are inlined (a waiting job's
        # service is its stamp; level 0 needs no logarithm).
        attained = w.attained_gpu_s if not w.placement else w.attained(now)
        base = self.las_base_gpu_s
        if attained < base:
            level = 0
        else:  # `_level`, inlined: a third of a pass's keys need the logarithm
            level = min(int(math.log(attained / base, self.las_ratio)) + 1, self.las_levels - 1)
        submitted = w.submitted_at
        waited = now - submitted - attained / (w.gpus * w.workers or 1)  # frozen while it runs
        return (-w.priority, level - (waited / self.age_s if waited > 0.0 else 0.0), submitted)

    def ready(self, v: Workload, now: float) -> bool:
        return v.started_at is None or now - v.started_at >= self.min_run

    def outranks(self, pk: Key, vk: Key) -> bool:
        return pk[0] < vk[0] or (pk[0] == vk[0] and pk[1] + self.hysteresis <= vk[1])

    def victim(
        self, p: Workload, pk: Key, v: Workload, vk: Key, now: float, ledger: QuotaLedger | None
    ) -> Verdict | None:
        other = p.workspace != v.workspace
        if ledger is not None and other and ledger.limited(v.workspace):
            if not ledger.borrowing(v.workspace):  # inside its quota: only moved aside
                return self._displace(p, v, ledger)
            if ledger.limited(p.workspace) and ledger.within_nominal(p):
                return RECLAIM, f"reclaimed: workspace {p.workspace} needs its quota for {p.id}"
        if p.priority != v.priority:
            return _priority_victim(p, v)
        if pk[1] + self.hysteresis <= vk[1] and self.ready(v, now):
            return RANK, f"preempted by {p.id}, which has had less service"
        return None

    def _displace(self, p: Workload, v: Workload, ledger: QuotaLedger) -> Verdict | None:
        """A gang inside its quota may move a job smaller than one of its workers off a
        node, when the moved job can start again at once elsewhere: on GPUs free outside
        the gang's node, or by reclaiming loans in turn. Whole free nodes are what a gang
        needs, and free GPUs and loans are often spread thin over many nodes."""
        if p.priority < v.priority or v.total_gpus >= p.gpus:
            return None
        if not (ledger.limited(p.workspace) and ledger.within_nominal(p)):
            return None
        room = v.total_gpus + p.total_gpus  # enough for both, wherever `p` lands
        loans = ledger.loans()
        if loans < room and ledger.free_gpus < room:
            return None
        return DISPLACE, f"moved aside for {p.id}, whose workspace needs its quota"
