"""Per-workspace quotas with borrowing inside a cohort, as Kueue's cohorts do.

A workspace's nominal quota is guaranteed: a job that fits inside it is admitted, and if
the pool is full because other workspaces borrowed the idle share, the scheduler reclaims
it by preempting their borrowed work. Beyond its nominal quota a workspace may borrow the
cohort's idle nominal capacity, up to its borrow limit; borrowed capacity is the first to
go when its owner needs it back. A workspace without a quota entry is unlimited and in no
cohort, which is the single-tenant default.

Usage is GPUs, CPUs and memory of whole gangs, counted from the running workloads in the
pool and updated as the pass places and preempts, so no state survives a pass.
"""

from __future__ import annotations

from collections import defaultdict

from kaon.scheduler.model import Quota, Workload

_EPS = 1e-9
_NAMES = ("GPUs", "CPUs", "memory")

Vector = tuple[float, float, float]


def demand(w: Workload) -> Vector:
    """What the whole gang uses: GPUs, CPUs, bytes of memory."""
    return (float(w.total_gpus), w.cpu * w.workers, float(w.memory * w.workers))


class QuotaLedger:
    """Usage against nominal quotas for one pass."""

    def __init__(self, quotas: dict[str, Quota], running: tuple[Workload, ...]) -> None:
        self.quotas = quotas
        self.used: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        self.cohort_used: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        self.cohort_nominal: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        self.version = 0  # bumps on every change, for callers that cache answers
        # GPUs free in the pool right now, kept up to date by the pass: a job moved aside
        # can start again on them at once, so moving it does not cost its owner its quota.
        self.free_gpus = 0
        # Answers that depend only on usage, kept until the next `add` (the victim search
        # asks them once per running job, and usage changes only a few times a pass).
        self._answers_at = -1
        self._borrowing: dict[str, bool] = {}
        self._lenders: list[str] | None = None
        self._loans: float | None = None
        self._nominal_of: Workload | None = None  # `within_nominal`'s last question
        self._nominal_at = -1
        self._nominal = False
        for nominal_quota in quotas.values():
            total = self.cohort_nominal[nominal_quota.cohort]
            for d, value in enumerate(_nominal(nominal_quota)):
                total[d] += value
        used = self.used
        for w in running:
            u = used[w.workspace]
            u[0] += w.gpus * w.workers
            u[1] += w.cpu * w.workers
            u[2] += w.memory * w.workers
        for ws, u in used.items():
            q = quotas.get(ws)
            if q is not None:
                cohort = self.cohort_used[q.cohort]
                for d in range(3):
                    cohort[d] += u[d]

    def limited(self, workspace: str) -> bool:
        return workspace in self.quotas

    def add(self, w: Workload, sign: int) -> None:
        """Count `w` as using (sign=+1) or no longer using (sign=-1) its resources."""
        self.version += 1
        used = self.used[w.workspace]
        q = self.quotas.get(w.workspace)
        cohort = self.cohort_used[q.cohort] if q is not None else None
        for d, value in enumerate(demand(w)):
            used[d] += sign * value
            if cohort is not None:
                cohort[d] += sign * value

    def within_nominal(self, w: Workload) -> bool:
        """Would `w` fit inside its workspace's guaranteed share? True when unlimited.
        The last answer is kept until usage changes: a victim search asks it of one
        waiting job once per candidate victim."""
        if w is self._nominal_of and self._nominal_at == self.version:
            return self._nominal
        q = self.quotas.get(w.workspace)
        if q is None:
            return True
        used = self.used[w.workspace]
        answer = (
            used[0] + w.gpus * w.workers <= q.gpus + _EPS
            and used[1] + w.cpu * w.workers <= q.cpu + _EPS
            and used[2] + w.memory * w.workers <= q.memory + _EPS
        )
        self._nominal_of, self._nominal_at, self._nominal = w, self.version, answer
        return answer

    def _fresh(self) -> None:
        """Forget the cached answers if usage changed since they were given."""
        if self._answers_at != self.version:
            self._answers_at = self.version
            self._borrowing.clear()
            self._lenders = None
            self._loans = None

    def lenders(self) -> list[str]:
        """Workspaces that borrow now (their borrowed work may be reclaimed)."""
        self._fresh()
        if self._lenders is None:
            self._lenders = [ws for ws in self.used if self.borrowing(ws)]
        return list(self._lenders)

    def loans(self) -> float:
        """GPUs lent out in all: what every borrowing workspace uses beyond its quota."""
        self._fresh()
        if self._loans is None:
            self._loans = sum(self.borrowed_gpus(ws) for ws in self.lenders())
        return self._loans

    def borrowing(self, workspace: str) -> bool:
        """Is the workspace using more than its nominal quota in any resource?"""
        self._fresh()
        answer = self._borrowing.get(workspace)
        if answer is None:
            answer = self._borrowing[workspace] = self._is_borrowing(workspace)
        return answer

    def _is_borrowing(self, workspace: str) -> bool:
        q = self.quotas.get(workspace)
        if q is None:
            return False
        used = self.used[workspace]
        return any(used[d] > limit + _EPS for d, limit in enumerate(_nominal(q)))

    def borrowed_gpus(self, workspace: str) -> float:
        """GPUs the workspace uses beyond its nominal quota (0 when it does not borrow)."""
        q = self.quotas.get(workspace)
        if q is None:
            return 0.0
        return max(self.used[workspace][0] - q.gpus, 0.0)

    def cohort_room(self, w: Workload, freed: list[Workload]) -> bool:
        """Would the cohort stay within its nominal GPUs if `w` replaced `freed`?"""
        q = self.quotas.get(w.workspace)
        if q is None:
            return True
        back = sum(
            v.total_gpus
            for v in freed
            if (qv := self.quotas.get(v.workspace)) and qv.cohort == q.cohort
        )
        used = self.cohort_used[q.cohort][0] - back + w.total_gpus
        return used <= self.cohort_nominal[q.cohort][0] + _EPS

    def refusal(self, w: Workload) -> tuple[str, bool] | None:
        """Why quota keeps `w` waiting, or None if it may run (borrowing included).

        The flag says the refusal is soft: the workspace may borrow, only the cohort has
        nothing idle to lend, so `w` may still take the place of borrowed work that
        ranks below it (LAS among borrowers) without growing the cohort's usage."""
        q = self.quotas.get(w.workspace)
        if q is None or self.within_nominal(w):
            return None
        used = self.used[w.workspace]
        cohort_used = self.cohort_used[q.cohort]
        cohort_nominal = self.cohort_nominal[q.cohort]
        limits = zip(demand(w), _nominal(q), _borrow(q), strict=True)
        for d, (value, nominal, borrow) in enumerate(limits):
            if used[d] + value > nominal + borrow + _EPS:
                return (
                    f"quota: workspace {w.workspace} would use {used[d] + value:g} "
                    f"{_NAMES[d]}, over its {nominal:g} plus {borrow:g} it may borrow",
                    False,
                )
            if cohort_used[d] + value > cohort_nominal[d] + _EPS:
                # rounded: sums of fractional quotas leave dust like 5.7e-14 behind
                idle = round(max(cohort_nominal[d] - cohort_used[d], 0.0), 3)
                return (
                    f"quota: over workspace {w.workspace}'s share and cohort "
                    f"{q.cohort} has only {idle:g} idle {_NAMES[d]} to lend",
                    True,
                )
        return None


def _nominal(q: Quota) -> Vector:
    return (q.gpus, q.cpu, q.memory)


def _borrow(q: Quota) -> Vector:
    return (q.borrow_gpus, q.borrow_cpu, q.borrow_memory)
