"""The pool's allocation over time, for the console's overview and quotas pages.

The API answers what is allocated now; a chart of the last day needs what was allocated
then. A loop of the control plane (`HistoryRecorder`) samples the pool every
`interval_s` (15 s by default) and keeps the last `retention_s` (24 h) in memory: the
pool's capacity and allocation, its queue and running jobs, the GPU utilisation NVML
measured, and per workspace what it holds, its nominal quota, what it borrows and what
it lends. Bounded (one point per interval, one row per busy workspace in each) and
forgotten on a restart, like `services.timeline`; Prometheus is where long histories
belong.

Borrowing and lending are decided by `lend` (pure): a workspace over its quota borrows
the excess, and the borrowed total is lent by the workspaces under their quota, each in
proportion to its unused share. A workspace without a quota of a resource has no share
of it: it neither borrows nor lends it (the scheduler lets it use idle capacity freely).

`sample` reads the database; `PoolHistory.view` answers one caller, with pool-wide totals
and only the workspaces the caller belongs to (every one for an admin).
"""

from __future__ import annotations

import math
import os
import time
from array import array
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import InvalidSpecError
from kaon.core.jobs import JobStatus
from kaon.core.usage import GPU_MEM, GPU_UTIL
from kaon.server.db.models import Job, Metric, Node, Quota, Worker, Workspace
from kaon.server.security.principal import Principal

INTERVAL_S = 15.0  # one point every this many seconds
RETENTION_S = 24 * 3600.0  # how far back the memory reaches
INTERVAL_ENV = "KAON_HISTORY_INTERVAL_S"  # another interval (tests sample faster)
MAX_POINTS = 720  # points one answer holds at most (a chart is about that many pixels wide)
UTIL_FRESH_S = 60.0  # a worker's GPU utilisation sample older than this is not "now"
RESOURCES = ("cpus", "memory", "gpus")


@dataclass(frozen=True, slots=True)
class Share:
    """One resource of one workspace: what it holds, its nominal quota (None: no quota),
    what it borrows above the quota and what of its unused quota others borrow."""

    used: float
    quota: float | None
    borrowed: float = 0.0
    lent: float = 0.0


@dataclass(frozen=True, slots=True)
class SpacePoint:
    """One workspace at one point."""

    name: str
    cpus: Share
    memory: Share
    gpus: Share
    running: int
    queued: int
    gpu_util: float | None  # percent, mean over its measured GPUs


@dataclass(frozen=True, slots=True)
class PoolPoint:
    """The pool at one point; `spaces` by workspace id, busy or with a quota only."""

    time: float
    capacity: tuple[float, float, float]  # cpus, memory, gpus of ready nodes
    allocated: tuple[float, float, float]
    running: int
    queued: int
    gpu_util: float | None
    spaces: Mapping[str, SpacePoint]


def lend(used: Mapping[str, float], quota: Mapping[str, float | None]) -> dict[str, Share]:
    """One resource's shares: each workspace's borrowed (use above its quota) and lent (its
    unused quota, in proportion to the others' unused quotas, as much as is borrowed)."""
    borrowed = {
        w: max(0.0, u - q) if (q := quota.get(w)) is not None else 0.0 for w, u in used.items()
    }
    unused = {w: max(0.0, q - used.get(w, 0.0)) for w, q in quota.items() if q is not None}
    total_borrowed, total_unused = sum(borrowed.values()), sum(unused.values())
    ratio = min(1.0, total_borrowed / total_unused) if total_unused > 0 else 0.0
    return {
        w: Share(
            used=used.get(w, 0.0),
            quota=quota.get(w),
            borrowed=borrowed.get(w, 0.0),
            lent=unused.get(w, 0.0) * ratio,
        )
        for w in used.keys() | quota.keys()
    }


def gpu_utilisation(measured: Iterable[tuple[float, int]]) -> float | None:
    """The mean utilisation of `(percent, gpus)` workers, weighted by their GPUs; None
    when none was measured (never zero: unmeasured is not idle)."""
    pairs = [(u, n) for u, n in measured if n > 0]
    gpus = sum(n for _, n in pairs)
    return sum(u * n for u, n in pairs) / gpus if gpus else None


_HOLDING = (JobStatus.STARTING, JobStatus.RUNNING)


async def sample(
    session: AsyncSession, now: float, util: Mapping[tuple[str, int], float]
) -> PoolPoint:
    """The pool now: ready nodes' capacity, active workers' allocation, job counts by
    workspace and quotas; `util` is each GPU worker's latest utilisation by (job, index)
    (`UtilReadings`)."""
    capacity = [0.0, 0.0, 0.0]
    for cpu, memory, gpus in (
        await session.execute(
            select(Node.cpu, Node.memory, Node.gpus).where(Node.state == "ready")
        )
    ).tuples():
        capacity[0] += cpu
        capacity[1] += memory
        capacity[2] += len(gpus)
    names = dict((await session.execute(select(Workspace.id, Workspace.name))).tuples().all())
    used: dict[str, list[float]] = {}
    worker_gpus: dict[tuple[str, int], tuple[str, int]] = {}  # (job, index) -> (ws, gpus)
    rows = await session.execute(
        select(
            Job.workspace_id, Worker.job_id, Worker.index, Worker.cpu, Worker.memory, Worker.gpus
        )
        .join(Job, Job.id == Worker.job_id)
        .where(Worker.active.is_(True))
    )
    for ws, job_id, index, cpu, memory, gpus in rows.tuples():
        held = used.setdefault(ws, [0.0, 0.0, 0.0])
        held[0] += cpu
        held[1] += memory
        held[2] += len(gpus)
        if gpus:
            worker_gpus[(job_id, index)] = (ws, len(gpus))
    counts: dict[str, dict[str, int]] = {}
    for ws, status, n in (
        await session.execute(
            select(Job.workspace_id, Job.status, func.count())
            .where(Job.status.in_([JobStatus.QUEUED, *_HOLDING]))
            .group_by(Job.workspace_id, Job.status)
        )
    ).tuples():
        counts.setdefault(ws, {})[status] = n
    quotas = {q.workspace_id: q for q in (await session.execute(select(Quota))).scalars()}
    by_space: dict[str, list[tuple[float, int]]] = {}
    for key, (ws, n) in worker_gpus.items():
        if key in util:
            by_space.setdefault(ws, []).append((util[key], n))
    spaces_ids = (used.keys() | counts.keys() | quotas.keys()) & names.keys()
    shares = {
        r: lend(
            {w: used[w][i] for w in spaces_ids if w in used},
            {w: _quota(quotas[w], r) for w in spaces_ids if w in quotas},
        )
        for i, r in enumerate(RESOURCES)
    }
    spaces = {
        w: SpacePoint(
            name=names[w],
            cpus=shares["cpus"].get(w, Share(0.0, None)),
            memory=shares["memory"].get(w, Share(0.0, None)),
            gpus=shares["gpus"].get(w, Share(0.0, None)),
            running=sum(counts.get(w, {}).get(s, 0) for s in _HOLDING),
            queued=counts.get(w, {}).get(JobStatus.QUEUED, 0),
            gpu_util=gpu_utilisation(by_space.get(w, [])),
        )
        for w in spaces_ids
    }
    allocated = tuple(sum(u[i] for u in used.values()) for i in range(3))
    return PoolPoint(
        time=now,
        capacity=(capacity[0], capacity[1], capacity[2]),
        allocated=(allocated[0], allocated[1], allocated[2]),
        running=sum(s.running for s in spaces.values()),
        queued=sum(s.queued for s in spaces.values()),
        gpu_util=gpu_utilisation(p for v in by_space.values() for p in v),
        spaces=spaces,
    )


def _quota(row: Quota, resource: str) -> float | None:
    value = {"cpus": row.cpu, "memory": row.memory, "gpus": row.gpus}[resource]
    return None if value is None else float(value)


class UtilReadings:
    """Each GPU worker's latest utilisation (and GPU memory in use, for the nodes page),
    read incrementally: only the metric rows added since the last read (by id, the primary
    key), so a read costs what arrived since, never the samples a week-long job has piled
    up. After a restart, readings start with the rows that arrive next (within one
    supervisor interval)."""

    def __init__(self) -> None:
        self.last_id: int | None = None
        self.latest: dict[tuple[str, int], tuple[float, float]] = {}  # -> (time, percent)
        self.memory: dict[tuple[str, int], tuple[float, float]] = {}  # -> (time, bytes)

    async def read(self, session: AsyncSession, now: float) -> None:
        top = await session.scalar(select(func.max(Metric.id))) or 0
        if self.last_id is not None and top > self.last_id:
            rows = await session.execute(
                select(Metric.job_id, Metric.worker, Metric.time, Metric.name, Metric.value).where(
                    Metric.id > self.last_id,
                    Metric.id <= top,
                    Metric.name.in_((GPU_UTIL, GPU_MEM)),
                )
            )
            for job_id, worker, at, name, value in rows.tuples():
                kept = self.latest if name == GPU_UTIL else self.memory
                seen = kept.get((job_id, worker))
                if seen is None or at >= seen[0]:
                    kept[(job_id, worker)] = (at, value)
        self.last_id = top
        self.latest = {k: v for k, v in self.latest.items() if v[0] >= now - UTIL_FRESH_S}
        self.memory = {k: v for k, v in self.memory.items() if v[0] >= now - UTIL_FRESH_S}

    def values(self, now: float) -> dict[tuple[str, int], float]:
        return {k: v for k, (at, v) in self.latest.items() if at >= now - UTIL_FRESH_S}

    def memory_values(self, now: float) -> dict[tuple[str, int], float]:
        """Each GPU worker's latest GPU memory in use (bytes, summed over its GPUs)."""
        return {k: v for k, (at, v) in self.memory.items() if at >= now - UTIL_FRESH_S}


# --- what the API answers ----------------------------------------------------------------


class ShareSeries(BaseModel):
    """One resource of one workspace over time, aligned with `HistoryView.time` (None
    where the workspace held nothing and had no quota at that point)."""

    used: list[float | None]
    quota: list[float | None]
    borrowed: list[float | None]
    lent: list[float | None]


class WorkspaceSeries(BaseModel):
    workspace: str
    cpus: ShareSeries
    memory: ShareSeries
    gpus: ShareSeries
    running: list[int | None]
    queued: list[int | None]
    gpu_util: list[float | None]


class PoolSeries(BaseModel):
    """Pool-wide totals (every workspace's, named or not)."""

    cpus: list[float]
    memory: list[float]
    gpus: list[float]
    cpus_allocated: list[float]
    memory_allocated: list[float]
    gpus_allocated: list[float]
    running: list[int]
    queued: list[int]
    gpu_util: list[float | None]


class HistoryView(BaseModel):
    """Points oldest first; the last one is taken when the request is answered. Kept in
    the control plane's memory since `since` (its start): a restart forgets them."""

    interval_s: float
    retention_s: float
    since: float
    time: list[float]
    pool: PoolSeries
    workspaces: list[WorkspaceSeries]


# A point as kept: numbers in arrays (8 bytes each), about 130 bytes per workspace.
_SPACE = tuple(f"{r}.{k}" for r in RESOURCES for k in ("used", "quota", "borrowed", "lent"))
_SPACE_FIELDS = len(_SPACE) + 3  # and running, queued, gpu_util
NAN = float("nan")


def _num(value: float | None) -> float:
    return NAN if value is None else float(value)


@dataclass(frozen=True, slots=True)
class _Packed:
    time: float
    pool: array[float]  # capacity (3), allocated (3), running, queued, gpu_util
    ids: tuple[str, ...]  # the workspaces in it (shared with the point before if alike)
    spaces: array[float]  # `_SPACE_FIELDS` per workspace, in `ids`' order


class PoolHistory:
    """The last `retention_s` of points, one every `interval_s`, and the GPU workers'
    latest utilisation readings."""

    def __init__(self, interval_s: float = INTERVAL_S, retention_s: float = RETENTION_S) -> None:
        if not interval_s > 0:
            raise InvalidSpecError(f"{INTERVAL_ENV} must be a positive number of seconds")
        self.interval_s = interval_s
        self.retention_s = retention_s
        self.since = time.time()
        self.points: deque[_Packed] = deque(maxlen=max(1, int(retention_s / interval_s)))
        self.names: dict[str, str] = {}  # workspace id -> its latest name
        self.readings = UtilReadings()

    @classmethod
    def from_env(cls) -> PoolHistory:
        raw = os.environ.get(INTERVAL_ENV) or str(INTERVAL_S)
        try:
            interval = float(raw)
        except ValueError:
            raise InvalidSpecError(f"{INTERVAL_ENV}={raw!r} is not a number") from None
        return cls(interval_s=interval)

    def _pack(self, p: PoolPoint) -> _Packed:
        ids = tuple(sorted(p.spaces))
        if self.points and self.points[-1].ids == ids:
            ids = self.points[-1].ids  # one tuple for a run of alike points
        values = array("d")
        for w in ids:
            space = p.spaces[w]
            self.names[w] = space.name
            for field in _SPACE:
                resource, key = field.split(".")
                values.append(_num(getattr(getattr(space, resource), key)))
            values.extend((space.running, space.queued, _num(space.gpu_util)))
        pool = array("d", (*p.capacity, *p.allocated, p.running, p.queued, _num(p.gpu_util)))
        return _Packed(time=p.time, pool=pool, ids=ids, spaces=values)

    def record(self, point: PoolPoint) -> None:
        self.points.append(self._pack(point))

    def view(self, caller: Principal, window_s: float, now: PoolPoint) -> HistoryView:
        """The points of the last `window_s` (at most `MAX_POINTS`: over a longer span,
        every k-th) and `now`; only the workspaces the caller sees are named."""
        kept = []
        for p in reversed(self.points):  # newest first: stop at the window's start
            if p.time < now.time - window_s:
                break
            if p.time < now.time:
                kept.append(p)
        kept.reverse()
        if len(kept) >= MAX_POINTS:
            stride = math.ceil(len(kept) / (MAX_POINTS - 1))
            kept = kept[::-1][::stride][::-1]  # the newest recorded point stays
        points = [*kept, self._pack(now)]
        seen = set(caller.workspaces.values())
        visible = sorted(
            {w for p in points for w in p.ids if caller.is_admin or w in seen},
            key=lambda w: self.names.get(w, w),
        )
        rows: dict[str, list[Sequence[float]]] = {w: [] for w in visible}
        absent = [NAN] * _SPACE_FIELDS
        ids: tuple[str, ...] | None = None
        at: dict[str, int] = {}
        for p in points:
            if p.ids is not ids:
                ids, at = p.ids, {w: i * _SPACE_FIELDS for i, w in enumerate(p.ids)}
            for w in visible:
                k = at.get(w)
                rows[w].append(absent if k is None else p.spaces[k : k + _SPACE_FIELDS])
        # Built unvalidated: every number comes from this module, and validating a day's
        # series again costs more than building it.
        pool = list(zip(*(p.pool for p in points), strict=True))
        return HistoryView.model_construct(
            interval_s=self.interval_s,
            retention_s=self.retention_s,
            since=self.since,
            time=[p.time for p in points],
            pool=PoolSeries.model_construct(
                cpus=_column(pool[0]),
                memory=_column(pool[1]),
                gpus=_column(pool[2]),
                cpus_allocated=_column(pool[3]),
                memory_allocated=_column(pool[4]),
                gpus_allocated=_column(pool[5]),
                running=_column(pool[6], integral=True),
                queued=_column(pool[7], integral=True),
                gpu_util=_column(pool[8]),
            ),
            workspaces=[_workspace(self.names.get(w, w), rows[w]) for w in visible],
        )


def _column(values: Iterable[float], integral: bool = False) -> list[Any]:
    """NaN (not measured, or absent) as None; counts as ints."""
    if integral:
        return [None if v != v else int(v) for v in values]
    return [None if v != v else v for v in values]


def _share(columns: Sequence[Sequence[float]], resource: str) -> ShareSeries:
    b = RESOURCES.index(resource) * 4
    return ShareSeries.model_construct(
        used=_column(columns[b]),
        quota=_column(columns[b + 1]),
        borrowed=_column(columns[b + 2]),
        lent=_column(columns[b + 3]),
    )


def _workspace(name: str, rows: list[Sequence[float]]) -> WorkspaceSeries:
    columns = list(zip(*rows, strict=True))
    n = len(_SPACE)
    return WorkspaceSeries.model_construct(
        workspace=name,
        cpus=_share(columns, "cpus"),
        memory=_share(columns, "memory"),
        gpus=_share(columns, "gpus"),
        running=_column(columns[n], integral=True),
        queued=_column(columns[n + 1], integral=True),
        gpu_util=_column(columns[n + 2]),
    )
