"""The pool as the scheduler and the API see it: database rows in, typed views out.

This is the one place that turns stored rows into the scheduler's inputs: a `Node` row and
what live workers hold on it into a `NodeCapacity`, a stored job into a `Workload`, and the
whole pool into a `PoolState` for one pass. The submit-time fit check reads the pool
through the same functions, so "could this ever run?" and "where does it run now?" can
never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import InvalidSpecError
from kaon.core.jobs import JobSpec, JobStatus
from kaon.core.nodes import GpuInfo, NodeView
from kaon.core.resources import Resources, describe_memory
from kaon.executors.base import NodeInventory
from kaon.scheduler import NodeCapacity, PoolState, Quota, WorkerPlacement, Workload, fits_anywhere
from kaon.server.db.models import Job, Node, Pool, Worker, utcnow

HOLDING = [s.value for s in JobStatus if s.holds_resources()]
READY = "ready"  # a node's state when it takes work; anything else says why not
NOT_READY = "not-ready"
_SPEC_CACHE_MAX = 100_000
_specs: dict[str, JobSpec] = {}


def stored_spec(job: Job) -> JobSpec:
    """A job's spec, read back typed. A job's spec never changes after submit, so it is
    parsed once per job and kept (a pass over 10,000 queued jobs would otherwise spend
    about 70 ms validating the same dictionaries again)."""
    spec = _specs.get(job.id)
    if spec is None:
        if len(_specs) >= _SPEC_CACHE_MAX:
            _specs.clear()
        spec = _specs[job.id] = JobSpec.model_validate(job.spec)
    return spec


# --- what live workers hold ----------------------------------------------------------------


@dataclass
class Held:
    """What live workers hold on one node."""

    cpu: float = 0.0
    memory: int = 0
    gpus: set[int] = field(default_factory=set)

    def add(self, w: Worker) -> None:
        self.cpu += w.cpu
        self.memory += w.memory
        self.gpus.update(int(g) for g in w.gpus)


def held_by(workers: Iterable[Worker]) -> dict[str, Held]:
    held: dict[str, Held] = {}
    for w in workers:
        held.setdefault(w.node_id, Held()).add(w)
    return held


async def active_workers(session: AsyncSession, job_ids: Sequence[str]) -> dict[str, list[Worker]]:
    """The live worker rows of each job (its current attempt's allocation)."""
    if not job_ids:
        return {}
    rows = await session.execute(
        select(Worker).where(Worker.job_id.in_(job_ids), Worker.active.is_(True))
    )
    out: dict[str, list[Worker]] = {}
    for w in rows.scalars():
        out.setdefault(w.job_id, []).append(w)
    return out


async def all_active_workers(session: AsyncSession) -> list[Worker]:
    return list((await session.execute(select(Worker).where(Worker.active.is_(True)))).scalars())


# --- rows -> scheduler inputs ------------------------------------------------------------------


def node_capacity(node: Node, held: Held | None = None) -> NodeCapacity:
    """A node as the scheduler sees it; `held` None means empty. A node that is not
    ready takes no new work but still counts what runs on it."""
    held = held or Held()
    gpus = tuple(int(g["index"]) for g in node.gpus)
    models = {g.get("model") for g in node.gpus}
    return NodeCapacity(
        id=node.id,
        cpu=node.cpu,
        memory=node.memory,
        gpus=gpus,
        cpu_free=node.cpu - held.cpu,
        memory_free=node.memory - held.memory,
        gpus_free=tuple(g for g in gpus if g not in held.gpus),
        gpu_type=models.pop() if len(models) == 1 else None,
        labels=tuple(sorted((str(k), str(v)) for k, v in node.labels.items())),
        schedulable=node.state == READY,
        domain=node.executor,
    )


def demand(
    resources: Resources, workers: int = 1, labels: Mapping[str, str] | None = None
) -> Workload:
    """The shape of a workload that is not a job yet (a spec being submitted)."""
    return Workload(
        id="new",
        workspace="",
        workers=workers,
        cpu=resources.cpu,
        memory=resources.memory,
        gpus=resources.gpus,
        submitted_at=0.0,
        gpu_type=resources.gpu_type,
        labels=tuple(sorted((labels or {}).items())),
    )


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """A queued job as a scheduling pass reads it: the columns it needs, not an ORM object.
    A pass reads every queued job on every tick, and with 10,000 of them building and
    tracking ORM objects (and collecting them) cost several times the decision itself."""

    id: str
    workspace_id: str
    priority: int
    submitted_at: datetime
    attained_gpu_seconds: float
    not_before: datetime | None
    started_at: datetime | None
    version: int
    attempt: int
    waiting_reason: str | None
    spec: JobSpec


_QUEUED_COLUMNS = (
    Job.id,
    Job.workspace_id,
    Job.priority,
    Job.submitted_at,
    Job.attained_gpu_seconds,
    Job.not_before,
    Job.started_at,
    Job.version,
    Job.attempt,
    Job.waiting_reason,
)


async def queued_jobs(session: AsyncSession) -> list[QueuedJob]:
    """Every queued job. A spec never changes after submit, so only the specs not parsed
    yet are read and parsed (in chunks, to keep each `IN` list short); a tick over a long
    queue reads them once, not on every pass."""
    query = select(*_QUEUED_COLUMNS).where(Job.status == JobStatus.QUEUED.value)
    rows = (await session.execute(query)).all()
    specs = {row.id: spec for row in rows if (spec := _specs.get(row.id)) is not None}
    missing = [row.id for row in rows if row.id not in specs]
    for start in range(0, len(missing), 5000):
        chunk = select(Job.id, Job.spec).where(Job.id.in_(missing[start : start + 5000]))
        for job_id, raw in await session.execute(chunk):
            if len(_specs) >= _SPEC_CACHE_MAX:
                _specs.clear()
            specs[job_id] = _specs[job_id] = JobSpec.model_validate(raw)
    return [
        QueuedJob(
            id=row.id,
            workspace_id=row.workspace_id,
            priority=row.priority,
            submitted_at=row.submitted_at,
            attained_gpu_seconds=row.attained_gpu_seconds,
            not_before=row.not_before,
            started_at=row.started_at,
            version=row.version,
            attempt=row.attempt,
            waiting_reason=row.waiting_reason,
            spec=specs[row.id],
        )
        for row in rows
        if row.id in specs  # else deleted between the two reads: gone from the queue too
    ]


def workload(job: Job | QueuedJob, workers: Sequence[Worker] = ()) -> Workload:
    """A stored job as the scheduler sees it; `workers` are its live ones, if it runs."""
    spec = job.spec if isinstance(job, QueuedJob) else stored_spec(job)
    resources = spec.resources  # the shape `demand` gives, without its throwaway Workload
    placement = tuple(
        WorkerPlacement(w.node_id, tuple(w.gpus)) for w in sorted(workers, key=lambda w: w.index)
    )
    started = _ts(job.started_at)
    return Workload(
        id=job.id,
        workspace=job.workspace_id,
        workers=spec.workers,
        cpu=resources.cpu,
        memory=resources.memory,
        gpus=resources.gpus,
        submitted_at=job.submitted_at.timestamp(),
        priority=job.priority,
        gpu_type=resources.gpu_type,
        labels=tuple(sorted(spec.labels.items())),
        attained_gpu_s=job.attained_gpu_seconds,
        placement=placement,
        not_before=_ts(job.not_before),
        started_at=started,
        attained_at=started,
    )


def _ts(at: datetime | None) -> float | None:
    return at.timestamp() if at is not None else None


@dataclass(frozen=True)
class PassInputs:
    """One scheduling pass's view of the pool, and the rows it was built from."""

    state: PoolState
    queued: dict[str, QueuedJob]  # by id
    holding: dict[str, Job]  # jobs that hold resources, by id


async def load_pass(
    session: AsyncSession, now: datetime, quotas: dict[str, Quota], always: bool = False
) -> PassInputs | None:
    """Everything one scheduling pass needs, or None when nothing is queued (unless
    `always`: an elastic pool's request must go on counting the work that runs)."""
    queued = await queued_jobs(session)
    if not queued and not always:
        return None
    live = Node.state.not_in(["gone", "removed"])  # left the pool for good
    nodes = list((await session.execute(select(Node).where(live))).scalars())
    holding = list((await session.execute(select(Job).where(Job.status.in_(HOLDING)))).scalars())
    active = await active_workers(session, [j.id for j in holding])
    held = held_by(w for ws in active.values() for w in ws)
    state = PoolState(
        now=now.timestamp(),
        nodes=tuple(node_capacity(n, held.get(n.id)) for n in nodes),
        pending=tuple(workload(j) for j in queued),
        running=tuple(workload(j, active.get(j.id, [])) for j in holding),
        quotas=quotas,
    )
    return PassInputs(state, {j.id: j for j in queued}, {j.id: j for j in holding})


# --- submit-time checks ---------------------------------------------------------------------


async def check_fits(
    session: AsyncSession,
    resources: Resources,
    workers: int = 1,
    labels: Mapping[str, str] | None = None,
) -> None:
    """422 for work that could not run even on an empty pool, naming what no node has (a
    label, a GPU type) or what is too big, so the user knows what to change.
    A pool with an autoscaler may add nodes of shapes not seen yet, so while one is
    attached nothing is refused here: such work waits, saying it asked for nodes."""
    if await session.scalar(select(Pool.name).where(Pool.elastic.is_(True)).limit(1)):
        return
    rows = (await session.execute(select(Node).where(Node.state != "removed"))).scalars()
    nodes = [replace(node_capacity(n), schedulable=True) for n in rows]
    if not nodes:
        raise InvalidSpecError("the pool has no nodes yet", field="resources")
    wanted = tuple(sorted((labels or {}).items()))
    _check_labels(nodes, wanted)
    _check_gpu_type(_carrying(nodes, wanted), resources.gpu_type, wanted)
    _check_sizes(nodes, resources)
    if not fits_anywhere(tuple(nodes), demand(resources, workers, labels)):
        raise InvalidSpecError(
            f"{workers} workers with these resources can never fit the pool "
            f"({len(nodes)} node(s)); ask for fewer workers or smaller ones",
            field="workers",
        )


Pairs = tuple[tuple[str, str], ...]


def _carrying(nodes: Sequence[NodeCapacity], wanted: Pairs) -> list[NodeCapacity]:
    return [n for n in nodes if all(item in n.labels for item in wanted)]


def _pairs(items: Iterable[tuple[str, str]]) -> list[str]:
    return [f"{k}={v}" for k, v in items]


def _listing(items: Sequence[str], most: int = 10) -> str:
    """A short list for a message: a pool of many nodes must not make it a page long."""
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def _check_labels(nodes: Sequence[NodeCapacity], wanted: Pairs) -> None:
    """Name a required label no node carries (a typo, or a zone not in this pool), with
    the labels nodes do carry; without this the user only hears the job "never fits"."""
    have = sorted({item for n in nodes for item in n.labels})
    for key, value in wanted:
        if (key, value) not in have:
            raise InvalidSpecError(
                f"no node has the label {key}={value}; "
                f"nodes have: {_listing(_pairs(have)) or 'no labels'}",
                field="labels",
            )
    if not _carrying(nodes, wanted):
        raise InvalidSpecError(
            f"no one node has all the labels {', '.join(_pairs(wanted))}", field="labels"
        )


def _check_gpu_type(nodes: Sequence[NodeCapacity], gpu_type: str | None, wanted: Pairs) -> None:
    """Name a GPU type none of `nodes` (those that carry the required labels) has. A node
    with mixed models has no single type, as the scheduler sees it."""
    if gpu_type is None:
        return
    types = sorted({n.gpu_type or "mixed models" for n in nodes if n.gpus})
    if gpu_type in types:
        return
    which = f"no node with the labels {', '.join(_pairs(wanted))}" if wanted else "no node"
    have = f"they have: {_listing(types)}" if types else "they have no GPUs"
    raise InvalidSpecError(
        f"{which} has GPUs of type {gpu_type}; {have}", field="resources.gpu_type"
    )


def _check_sizes(nodes: Sequence[NodeCapacity], resources: Resources) -> None:
    """Name the one size (GPUs, CPUs, memory) no single node has, in units people read."""
    biggest = max(len(n.gpus) for n in nodes)
    if resources.gpus > biggest:
        raise InvalidSpecError(
            f"no node has {resources.gpus} GPUs (the largest has {biggest})"
            if biggest
            else "the pool has no GPUs (kaon nodes lists its nodes); ask for none to run on CPUs",
            field="resources.gpus",
        )
    cpus = max(n.cpu for n in nodes)
    if resources.cpu > cpus:
        raise InvalidSpecError(
            f"no node has {resources.cpu:g} CPUs (the largest has {cpus:g})",
            field="resources.cpu",
        )
    memory = max(n.memory for n in nodes)
    if resources.memory > memory:
        want, most = _two_sizes(resources.memory, memory)
        raise InvalidSpecError(
            f"no node has {want} of memory (the largest has {most})",
            field="resources.memory",
        )


def _two_sizes(want: int, most: int) -> tuple[str, str]:
    """Both sizes readable, with as many decimals as it takes for them to differ (a
    message saying "no node has 23.5 GiB (the largest has 23.5 GiB)" says nothing)."""
    for digits in (1, 3):
        pair = describe_memory(want, digits), describe_memory(most, digits)
        if pair[0] != pair[1]:
            return pair
    return f"{want} bytes", f"{most} bytes"


async def check_job_fits(session: AsyncSession, spec: JobSpec) -> None:
    await check_fits(session, spec.resources, spec.workers, spec.labels)


# --- nodes: inventory and the API's view ---------------------------------------------------


HEARTBEAT_EVERY = timedelta(seconds=15)


async def register_node(session: AsyncSession, inv: NodeInventory, pool: str) -> None:
    """Insert or refresh a node's inventory. Unchanged nodes are written only for a
    heartbeat every `HEARTBEAT_EVERY`, so a pool of many nodes polled every few seconds
    does not rewrite every row each time."""
    node = await session.get(Node, inv.id)
    if node is None:
        node = Node(id=inv.id, executor=pool)
        session.add(node)
    values: dict[str, object] = {
        "name": inv.name,
        "address": inv.address,
        "executor": pool,
        "cpu": inv.cpu,
        "memory": inv.memory,
        "gpus": [g.model_dump() for g in inv.gpus],
        "labels": dict(inv.labels),
        "state": READY if inv.ready else NOT_READY,
        "message": inv.message,
    }
    now = utcnow()
    changed = any(getattr(node, k, None) != v for k, v in values.items())
    stale = node.heartbeat_at is None or now - node.heartbeat_at > HEARTBEAT_EVERY
    if changed or stale:
        for key, value in values.items():
            setattr(node, key, value)
        node.heartbeat_at = now
        await session.flush()


async def mark_nodes(
    session: AsyncSession, pool: str, state: str, message: str, keep: Iterable[str] = ()
) -> None:
    """Every node of `pool` but those in `keep` to `state` (a pool that cannot be reached,
    nodes that left it)."""
    kept = set(keep)
    rows = await session.execute(select(Node).where(Node.executor == pool))
    for node in rows.scalars():
        if node.id not in kept and (node.state, node.message) != (state, message):
            node.state, node.message = state, message
    await session.flush()


async def list_nodes(session: AsyncSession) -> list[NodeView]:
    nodes = (await session.execute(select(Node).order_by(Node.name))).scalars().all()
    held = held_by(await all_active_workers(session))
    return [_node_view(n, held.get(n.id, Held())) for n in nodes]


def _node_view(n: Node, held: Held) -> NodeView:
    return NodeView(
        id=n.id,
        name=n.name,
        executor=n.executor,
        address=n.address,
        state=n.state,
        message=n.message,
        labels=n.labels,
        cpu=n.cpu,
        memory=n.memory,
        gpus=[GpuInfo.model_validate(g) for g in n.gpus],
        cpu_allocated=held.cpu,
        memory_allocated=held.memory,
        gpus_allocated=sorted(held.gpus),
        heartbeat_at=n.heartbeat_at,
    )
