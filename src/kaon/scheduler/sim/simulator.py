"""A discrete-event replay of a job trace through the real scheduling core.

Events are job arrivals and completions. After all events of one instant are applied the
simulator builds a `PoolState` exactly as the control plane would and calls `run_pass`,
the function behind `kaon.scheduler.schedule`, then applies its preemptions and
placements. Nothing of the policy lives here.

Model, kept simple on purpose:

* A job of `n` GPUs is a gang of `n / g` workers with `g` GPUs each, `g` the largest
  divisor of `n` not above the GPUs per node: a job that fits a node is one worker, a
  bigger one spans nodes. CPUs and memory are ample; only GPUs are scheduled.
* A preempted job keeps its progress (as if it checkpointed as it was stopped) and pays
  `restart_penalty_s` seconds, holding its GPUs without progress, when it restarts.
* Each tenant (`cluster`) gets a nominal GPU quota equal to its share of the trace's
  GPU-hours times the pool's GPUs, all tenants in one cohort that lends idle quota. With
  `SimConfig(quotas=False)` the scheduler sees no quotas (one shared queue); the
  guarantee is still measured against the same shares.
* Service (`attained_gpu_s`) counts useful GPU-seconds; the restart penalty is not
  service. `easy` sees walltime estimates of the true duration times U[1, 3] (seeded);
  the `srtf` oracle sees the true duration; `gittins` learns the distribution of the
  trace's job service, not any job's own; the other policies see no duration.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

from kaon.scheduler.engine import run_pass
from kaon.scheduler.model import NodeCapacity, PoolState, Quota, WorkerPlacement, Workload
from kaon.scheduler.policies import Policy
from kaon.scheduler.sim.trace import TraceJob

_DONE, _ARRIVE = 0, 1  # completions first, so an instant's arrivals see freed GPUs
MAX_PASSES_PER_INSTANT = 16  # passes at one instant while passes keep preempting


@dataclass(frozen=True)
class SimConfig:
    nodes: int
    gpus_per_node: int
    restart_penalty_s: float = 60.0
    seed: int = 0
    # Per-tenant quotas on (the multi-team pool) or off (one shared queue, as a single team
    # or a pool without quotas runs); the guarantee metric is measured either way.
    quotas: bool = True


@dataclass
class SimJob:
    """A trace job's life in the simulator."""

    spec: TraceJob
    workload: Workload
    index: int  # position in Simulator.jobs, for events
    progress: float = 0.0  # seconds of useful work done
    work_start: float = 0.0  # when the current run makes progress (after any penalty)
    first_start: float | None = None
    finish: float | None = None
    preemptions: int = 0
    version: int = 0  # bumps on preemption: an older completion event is stale


@dataclass
class Series:
    """The pool over time, one point per instant with events, for plots."""

    t: list[float] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)
    busy_gpus: list[int] = field(default_factory=list)


@dataclass
class SimResult:
    jobs: list[SimJob]
    rejected: list[TraceJob]
    total_gpus: int
    quotas: dict[str, float]
    busy_gpu_s: float
    guarantee: dict[str, float]  # tenant -> fraction of its demand time it was guaranteed
    preemptions: int
    passes: int
    series: Series


def gang_shape(num_gpus: int, gpus_per_node: int) -> tuple[int, int]:
    """(workers, GPUs per worker): one worker if it fits a node, else whole-node workers."""
    g = min(num_gpus, gpus_per_node)
    while num_gpus % g:
        g -= 1
    return num_gpus // g, g


def tenant_quotas(jobs: list[TraceJob], total_gpus: int) -> dict[str, float]:
    """Each tenant's share of the trace's GPU-hours, times the pool's GPUs."""
    used: dict[str, float] = defaultdict(float)
    for j in jobs:
        used[j.tenant] += j.gpu_time
    whole = sum(used.values()) or 1.0
    return {t: total_gpus * u / whole for t, u in sorted(used.items())}


class Simulator:
    """Replays `jobs` on `config.nodes` x `config.gpus_per_node` GPUs under `policy`."""

    def __init__(self, jobs: list[TraceJob], config: SimConfig, policy: Policy) -> None:
        # Gittins learns the distribution of the trace's job service (GPU-seconds); never
        # any one job's own, and the others ignore it.
        self.config = config
        self.policy = policy.learn([j.duration * j.num_gpus for j in jobs])
        total = config.nodes * config.gpus_per_node
        self.quota_gpus = tenant_quotas(jobs, total)
        shares = self.quota_gpus if config.quotas else {}
        self.quotas = {t: Quota(gpus=q) for t, q in shares.items()}
        self.free = [set(range(config.gpus_per_node)) for _ in range(config.nodes)]
        self.node_cache: list[NodeCapacity | None] = [None] * config.nodes
        self.pending: dict[str, SimJob] = {}
        self.running: dict[str, SimJob] = {}
        self.pending_w: dict[str, Workload] = {}  # the same, as the scheduler sees them
        self.running_w: dict[str, Workload] = {}
        self.jobs: list[SimJob] = []
        self.rejected: list[TraceJob] = []
        self.events: list[tuple[float, int, int, int]] = []
        self.held: Counter[str] = Counter()
        self.waiting_sizes: dict[str, Counter[int]] = defaultdict(Counter)
        self.series = Series()
        self.busy, self.busy_gpu_s, self.preemptions, self.passes = 0, 0.0, 0, 0
        self.demand_s: defaultdict[str, float] = defaultdict(float)
        self.guaranteed_s: defaultdict[str, float] = defaultdict(float)
        self._load(jobs, total)

    def _load(self, jobs: list[TraceJob], total: int) -> None:
        rng = random.Random(self.config.seed)
        for spec in jobs:
            estimate = spec.duration * rng.uniform(1.0, 3.0)
            if spec.num_gpus > total:
                self.rejected.append(spec)
                continue
            workers, g = gang_shape(spec.num_gpus, self.config.gpus_per_node)
            walltime = spec.duration if self.policy.name == "srtf" else estimate
            w = Workload(
                id=spec.id, workspace=spec.tenant, workers=workers, cpu=0.0, memory=0,
                gpus=g, submitted_at=spec.submit, walltime_s=walltime,
            )  # fmt: skip
            self.jobs.append(SimJob(spec, w, len(self.jobs)))
            heapq.heappush(self.events, (spec.submit, _ARRIVE, len(self.jobs) - 1, 0))

    def run(self) -> SimResult:
        last = self.events[0][0] if self.events else 0.0
        while self.events:
            now = self.events[0][0]
            self._account(now - last)
            last = now
            while self.events and self.events[0][0] == now:
                _, kind, index, version = heapq.heappop(self.events)
                self._apply(kind, self.jobs[index], version, now)
            self._schedule(now)
            self._sample(now)
        return SimResult(
            jobs=self.jobs, rejected=self.rejected,
            total_gpus=self.config.nodes * self.config.gpus_per_node,
            quotas=self.quota_gpus, busy_gpu_s=self.busy_gpu_s,
            guarantee={t: self.guaranteed_s[t] / s for t, s in self.demand_s.items() if s},
            preemptions=self.preemptions, passes=self.passes, series=self.series,
        )  # fmt: skip

    def _apply(self, kind: int, job: SimJob, version: int, now: float) -> None:
        if kind == _ARRIVE:
            self._enqueue(job)
        elif version == job.version:
            job.finish = now
            self._release(job)
            del self.running[job.spec.id]
            del self.running_w[job.spec.id]

    # -- the scheduling pass ------------------------------------------------------------

    def _schedule(self, now: float) -> None:
        """Pass, and pass again at once while a pass preempts: the control plane's job
        reconciler does the same (`run_once` asks for an immediate next pass after a
        preemption, once the preempted workers are seen gone), so a job moved aside or a
        reclaim that needs a second step completes within seconds, not at the next arrival
        or completion, which may be minutes away. Stopping after two follow-up passes, as
        this replay once did, left the last jobs of a chain of moves waiting; on a large
        pool, where a tenant waits only seconds a week, those seconds were most of its
        waiting time and its quota guarantee fell (0.000 for three tenants on the
        2017-10-16 week at 640 GPUs). The bound only stops a policy that never settles."""
        for _ in range(MAX_PASSES_PER_INSTANT):
            if not self.pending or not self._pass(now):
                return

    def _pass(self, now: float) -> bool:
        """One pass at `now`, applied; True if it preempted anything."""
        pool = PoolState(
            now=now,
            nodes=tuple(self._node(i) for i in range(self.config.nodes)),
            pending=tuple(self.pending_w.values()),
            running=tuple(self.running_w.values()),
            quotas=self.quotas,
        )
        decisions = run_pass(pool, self.policy)
        self.passes += 1
        for p in decisions.preemptions:
            self._preempt(self.running[p.workload_id], now)
        for placement in decisions.placements:
            self._start(self.pending[placement.workload_id], placement.workers, now)
        return bool(decisions.preemptions)

    def _node(self, i: int) -> NodeCapacity:
        node = self.node_cache[i]
        if node is None:
            g = self.config.gpus_per_node
            node = NodeCapacity(
                id=f"node-{i}", cpu=1e9, memory=1 << 60, gpus=tuple(range(g)),
                cpu_free=1e9, memory_free=1 << 60, gpus_free=tuple(sorted(self.free[i])),
            )  # fmt: skip
            self.node_cache[i] = node
        return node

    def _start(self, job: SimJob, workers: tuple[WorkerPlacement, ...], now: float) -> None:
        for wp in workers:
            i = int(wp.node_id.removeprefix("node-"))
            if not set(wp.gpus) <= self.free[i]:
                raise RuntimeError(f"{job.spec.id} placed on busy GPUs {wp} at {now}")
            self.free[i] -= set(wp.gpus)
            self.node_cache[i] = None
        penalty = self.config.restart_penalty_s if job.preemptions else 0.0
        job.work_start = now + penalty
        job.first_start = now if job.first_start is None else job.first_start
        job.workload = replace(
            job.workload, placement=workers, started_at=now, attained_at=job.work_start,
            attained_gpu_s=job.progress * job.workload.total_gpus,
        )  # fmt: skip
        del self.pending[job.spec.id]
        del self.pending_w[job.spec.id]
        self.running_w[job.spec.id] = job.workload
        self.waiting_sizes[job.spec.tenant][job.workload.total_gpus] -= 1
        self.running[job.spec.id] = job
        self.held[job.spec.tenant] += job.workload.total_gpus
        self.busy += job.workload.total_gpus
        end = job.work_start + job.spec.duration - job.progress
        heapq.heappush(self.events, (end, _DONE, job.index, job.version))

    def _preempt(self, job: SimJob, now: float) -> None:
        job.progress = min(job.progress + max(now - job.work_start, 0.0), job.spec.duration)
        job.version += 1
        job.preemptions += 1
        self.preemptions += 1
        self._release(job)
        del self.running[job.spec.id]
        del self.running_w[job.spec.id]
        job.workload = replace(
            job.workload, placement=(), started_at=None, attained_at=None,
            attained_gpu_s=job.progress * job.workload.total_gpus,
        )  # fmt: skip
        self._enqueue(job)

    def _enqueue(self, job: SimJob) -> None:
        self.pending[job.spec.id] = job
        self.pending_w[job.spec.id] = job.workload
        self.waiting_sizes[job.spec.tenant][job.workload.total_gpus] += 1

    def _release(self, job: SimJob) -> None:
        for wp in job.workload.placement:
            i = int(wp.node_id.removeprefix("node-"))
            self.free[i] |= set(wp.gpus)
            self.node_cache[i] = None
        self.held[job.spec.tenant] -= job.workload.total_gpus
        self.busy -= job.workload.total_gpus

    # -- metrics over time ------------------------------------------------------------

    def _account(self, dt: float) -> None:
        """Integrate the state that held since the last instant over `dt` seconds."""
        if dt <= 0:
            return
        self.busy_gpu_s += self.busy * dt
        for tenant, sizes in self.waiting_sizes.items():
            waiting = [size for size, n in sizes.items() if n > 0]
            if not waiting:
                continue
            self.demand_s[tenant] += dt
            if self.held[tenant] + min(waiting) > self.quota_gpus[tenant] + 1e-9:
                self.guaranteed_s[tenant] += dt

    def _sample(self, now: float) -> None:
        self.series.t.append(now)
        self.series.queued.append(len(self.pending))
        self.series.busy_gpus.append(self.busy)
