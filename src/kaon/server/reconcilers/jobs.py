"""The job reconciler: observe running workers, schedule queued jobs, launch placed ones.

Each pass has three steps, each of which loads what it needs in a short transaction,
talks to the executor with no transaction open, and writes its result back guarded by
the job's `version` (a write that finds the row changed is dropped; the next pass sees
the new state). Any step may be cut short by a crash: the executor's calls are
idempotent and the next pass, in this process or a restarted one, picks up from the
database.

    observe:  STARTING/RUNNING/RETRYING/PREEMPTED -> poll workers -> job_steps.next_step
    schedule: QUEUED -> kaon.scheduler.schedule(snapshot) -> STARTING (+ worker rows)
    launch:   STARTING without handles -> executor.launch -> RUNNING
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import PermanentBackendError, TemporaryBackendError
from kaon.core.jobs import JobSpec, JobStatus
from kaon.executors.base import Executor, GangLaunch, WorkerLaunch, WorkerState
from kaon.scheduler import NodeSnapshot, Snapshot, WorkerPlacement, Workload, schedule
from kaon.scheduler.model import Quota
from kaon.server.db.models import Job, Node, Worker, utcnow
from kaon.server.db.session import Database
from kaon.server.reconcilers.job_steps import JobFacts, Step, StopReason, next_step
from kaon.server.services.ids import hash_token
from kaon.server.services.quotas import scheduler_quotas
from kaon.server.services.snapshots import snapshot_path

logger = logging.getLogger("kaon.reconciler.jobs")

HOLDING = [s.value for s in JobStatus if s.holds_resources()]
RETRY_BACKOFF_S = (1, 5, 15, 30, 60)


@dataclass(frozen=True)
class ReconcilerConfig:
    api_url: str
    blobs_dir: str
    token_key: bytes  # signs the per-attempt job tokens (see job_token)
    stop_grace_s: float = 10.0
    interval_s: float = 1.0


def job_token(key: bytes, job_id: str, attempt: int) -> str:
    """The token a job's workers use to report metrics. Derived, not stored, so a launch
    repeated after a crash hands out the same token; only its hash is in the database."""
    mac = hmac.new(key, f"{job_id}:{attempt}".encode(), hashlib.sha256).hexdigest()
    return f"kjob_{mac}"


class JobReconciler:
    def __init__(
        self,
        db: Database,
        executor: Executor,
        config: ReconcilerConfig,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.executor = executor
        self.config = config
        self.clock = clock
        self.wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def poke(self) -> None:
        """Wake the loop now; safe from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.wakeup.set)

    async def run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.executor.set_listener(self.poke)
        while True:
            self.wakeup.clear()
            try:
                await self.run_once()
            except Exception:
                logger.exception("job reconcile pass failed")  # log it, keep looping
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), self.config.interval_s)

    async def run_once(self) -> None:
        await self.observe()
        await self.schedule()
        await self.launch()

    # -- observe ------------------------------------------------------------------------

    async def observe(self) -> None:
        async with self.db.session() as s:
            jobs = list((await s.execute(select(Job).where(Job.status.in_(HOLDING)))).scalars())
            workers = await _active_workers(s, [j.id for j in jobs])
        for job in jobs:
            mine = workers.get(job.id, [])
            handles = [w.handle for w in mine if w.handle]
            if not handles and job.status == JobStatus.STARTING.value and job.stop_reason is None:
                continue  # not launched yet: the launch step does that
            states = await asyncio.to_thread(self.executor.status, handles) if handles else []
            step = next_step(_facts(job), states, self.clock())
            if step.stop_workers:
                alive = [st.handle for st in states if st.alive]
                await asyncio.to_thread(self.executor.stop, alive, self.config.stop_grace_s)
            await self._apply(job, mine, states, step)

    async def _apply(
        self, job: Job, workers: list[Worker], states: list[WorkerState], step: Step
    ) -> None:
        now = self.clock()
        values: dict[str, object] = {}
        if step.stop_reason is not None and step.stop_reason.value != job.stop_reason:
            values["stop_reason"] = step.stop_reason.value
        if step.message is not None:
            values["message"] = step.message
        final = step.status
        if final is not None and final.value != job.status:
            _check_path(JobStatus(job.status), final, step.stop_reason)
            values["status"] = final.value
            values.update(_on_enter(job, final, step.stop_reason, now, workers))
        if not values and not _worker_changes(workers, states):
            return
        async with self.db.session() as s:
            if values and not await _guarded_update(s, job, values):
                return
            await _record_workers(
                s, workers, states, release=final is not None and not final.holds_resources()
            )

    # -- schedule -----------------------------------------------------------------------

    async def schedule(self) -> None:
        async with self.db.session() as s:
            queued = list(
                (
                    await s.execute(select(Job).where(Job.status == JobStatus.QUEUED.value))
                ).scalars()
            )
            if not queued:
                return
            nodes = list((await s.execute(select(Node).where(Node.state == "ready"))).scalars())
            holding = list((await s.execute(select(Job).where(Job.status.in_(HOLDING)))).scalars())
            active = await _active_workers(s, [j.id for j in holding])
            quota_map = await scheduler_quotas(s)
        snapshot = _snapshot(self.clock(), nodes, queued, holding, active, quota_map)
        decisions = schedule(snapshot)
        by_id = {j.id: j for j in queued} | {j.id: j for j in holding}
        for placement in decisions.placements:
            await self._place(by_id[placement.workload_id], placement.workers)
        for preemption in decisions.preemptions:
            await self._preempt(by_id[preemption.workload_id], preemption.reason)
        await self._note_waiting(queued, decisions.waiting)

    async def _place(self, job: Job, placement: tuple[WorkerPlacement, ...]) -> None:
        spec = JobSpec.model_validate(job.spec)
        attempt = job.attempt + 1
        token = job_token(self.config.token_key, job.id, attempt)
        async with self.db.session() as s:
            ok = await _guarded_update(
                s,
                job,
                {
                    "status": JobStatus.STARTING.value,
                    "attempt": attempt,
                    "waiting_reason": None,
                    "job_token_hash": hash_token(token),
                    "message": "starting workers",
                },
            )
            if not ok:
                return
            for index, wp in enumerate(placement):
                s.add(
                    Worker(
                        job_id=job.id,
                        attempt=attempt,
                        index=index,
                        node_id=wp.node_id,
                        cpu=spec.resources.cpu,
                        memory=spec.resources.memory,
                        gpus=list(wp.gpus),
                    )
                )

    async def _preempt(self, job: Job, reason: str) -> None:
        if job.stop_reason is not None:
            return
        async with self.db.session() as s:
            await _guarded_update(
                s,
                job,
                {
                    "stop_reason": StopReason.PREEMPT.value,
                    "status": JobStatus.PREEMPTED.value,
                    "message": f"preempted: {reason}",
                },
            )
        self.wakeup.set()

    async def _note_waiting(self, queued: list[Job], waiting: dict[str, str]) -> None:
        changed = [
            (j, waiting[j.id])
            for j in queued
            if j.id in waiting and j.waiting_reason != waiting[j.id]
        ]
        if not changed:
            return
        async with self.db.session() as s:
            for job, reason in changed:
                await s.execute(
                    update(Job)
                    .where(Job.id == job.id, Job.version == job.version)
                    .values(waiting_reason=reason)
                )

    # -- launch -------------------------------------------------------------------------

    async def launch(self) -> None:
        async with self.db.session() as s:
            query = select(Job).where(
                Job.status == JobStatus.STARTING.value, Job.stop_reason.is_(None)
            )
            jobs = list((await s.execute(query)).scalars())
            workers = await _active_workers(s, [j.id for j in jobs])
        for job in jobs:
            mine = workers.get(job.id, [])
            if mine and all(w.handle for w in mine):
                continue
            await self._launch_one(job, mine)

    async def _launch_one(self, job: Job, workers: list[Worker]) -> None:
        gang = self._gang(job, workers)
        try:
            states = await asyncio.to_thread(self.executor.launch, gang)
        except TemporaryBackendError as e:
            logger.warning("launch of %s failed, will retry: %s", job.id, e)
            return
        except (PermanentBackendError, OSError) as e:
            async with self.db.session() as s:
                await _guarded_update(
                    s,
                    job,
                    {"stop_reason": StopReason.FAILED.value, "message": f"cannot start: {e}"},
                )
            self.wakeup.set()
            return
        now = self.clock()
        async with self.db.session() as s:
            for w, st in zip(sorted(workers, key=lambda w: w.index), states, strict=True):
                await s.execute(
                    update(Worker)
                    .where(Worker.id == w.id)
                    .values(handle=st.handle, pid=st.pid, port=st.port, started_at=now)
                )
            await _guarded_update(
                s,
                job,
                {"status": JobStatus.RUNNING.value, "started_at": now, "message": "running"},
            )

    def _gang(self, job: Job, workers: list[Worker]) -> GangLaunch:
        spec = JobSpec.model_validate(job.spec)
        env = dict(spec.env)
        env.update(job.system_env or {})
        env.update(
            {
                "KAON_JOB_ID": job.id,
                "KAON_JOB_NAME": job.name or "",
                "KAON_API_URL": self.config.api_url,
                "KAON_JOB_TOKEN": job_token(self.config.token_key, job.id, job.attempt),
                "KAON_RESTART_COUNT": str(job.restart_count),
            }
        )
        snapshot = None
        if spec.snapshot:
            snapshot = str(snapshot_path(Path(self.config.blobs_dir), spec.snapshot))
        return GangLaunch(
            job_id=job.id,
            attempt=job.attempt,
            command=tuple(spec.command),
            env=env,
            workers=tuple(
                WorkerLaunch(
                    index=w.index,
                    node_id=w.node_id,
                    cpu=w.cpu,
                    memory=w.memory,
                    gpus=tuple(w.gpus),
                )
                for w in sorted(workers, key=lambda w: w.index)
            ),
            snapshot=snapshot,
            stop_grace_s=self.config.stop_grace_s,
        )


# -- helpers -----------------------------------------------------------------------------


def _facts(job: Job) -> JobFacts:
    spec = job.spec
    return JobFacts(
        status=JobStatus(job.status),
        stop_reason=StopReason(job.stop_reason) if job.stop_reason else None,
        workers=int(spec.get("workers", 1)),
        max_retries=int(spec.get("max_retries", 0)),
        retries_used=job.retries_used,
        started_at=job.started_at,
        timeout_s=spec.get("timeout_s"),
    )


def _path(current: JobStatus, final: JobStatus, reason: StopReason | None) -> list[JobStatus]:
    """The statuses a job passes through to reach `final` in one step (RUNNING -> QUEUED
    goes through RETRYING or PREEMPTED, so the documented machine is respected)."""
    if final is JobStatus.QUEUED and current in (JobStatus.STARTING, JobStatus.RUNNING):
        middle = JobStatus.RETRYING if reason is StopReason.RETRY else JobStatus.PREEMPTED
        return [middle, final]
    return [final]


def _check_path(current: JobStatus, final: JobStatus, reason: StopReason | None) -> None:
    for status in _path(current, final, reason):
        current.check_transition(status)
        current = status


def _on_enter(
    job: Job, status: JobStatus, reason: StopReason | None, now: datetime, workers: list[Worker]
) -> dict[str, object]:
    """Bookkeeping when a job leaves its attempt: service received, restarts, lost time."""
    values: dict[str, object] = {}
    if status.holds_resources():
        return values
    gpus = sum(len(w.gpus) for w in workers)
    ran = (now - job.started_at).total_seconds() if job.started_at else 0.0
    values["attained_gpu_seconds"] = job.attained_gpu_seconds + ran * gpus
    values["stop_reason"] = None
    if status is JobStatus.QUEUED:
        values.update(restart_count=job.restart_count + 1, started_at=None, job_token_hash=None)
        if reason is StopReason.PREEMPT:
            values.update(
                preemptions=job.preemptions + 1, lost_gpu_seconds=job.lost_gpu_seconds + ran * gpus
            )
        if reason is StopReason.RETRY:
            delay = RETRY_BACKOFF_S[min(job.retries_used, len(RETRY_BACKOFF_S) - 1)]
            values.update(
                retries_used=job.retries_used + 1, not_before=now + timedelta(seconds=delay)
            )
    else:
        values.update(finished_at=now, job_token_hash=None)
    return values


async def _guarded_update(s: AsyncSession, job: Job, values: dict[str, object]) -> bool:
    """UPDATE ... WHERE version = :seen. False (and nothing written) if the row moved on."""
    result = await s.execute(
        update(Job)
        .where(Job.id == job.id, Job.version == job.version)
        .values(version=job.version + 1, **values)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        logger.info("job %s changed meanwhile; dropping a stale step", job.id)
        return False
    return True


async def _active_workers(s: AsyncSession, job_ids: list[str]) -> dict[str, list[Worker]]:
    if not job_ids:
        return {}
    rows = await s.execute(
        select(Worker).where(Worker.job_id.in_(job_ids), Worker.active.is_(True))
    )
    out: dict[str, list[Worker]] = {}
    for w in rows.scalars():
        out.setdefault(w.job_id, []).append(w)
    return out


def _worker_changes(workers: list[Worker], states: list[WorkerState]) -> bool:
    by_handle = {w.handle: w for w in workers}
    return any(
        not st.alive
        and (
            by_handle[st.handle].exit_code != st.exit_code or by_handle[st.handle].ended_at is None
        )
        for st in states
        if st.handle in by_handle
    )


async def _record_workers(
    s: AsyncSession, workers: list[Worker], states: list[WorkerState], release: bool
) -> None:
    now = utcnow()
    by_handle = {st.handle: st for st in states}
    for w in workers:
        st = by_handle.get(w.handle or "")
        values: dict[str, object] = {}
        if st is not None and not st.alive and w.ended_at is None:
            values.update(exit_code=st.exit_code, reason=st.reason, ended_at=now)
        if release:
            values["active"] = False
        if values:
            await s.execute(update(Worker).where(Worker.id == w.id).values(**values))


def _snapshot(
    now: datetime,
    nodes: list[Node],
    queued: list[Job],
    holding: list[Job],
    active: dict[str, list[Worker]],
    quotas: dict[str, Quota],
) -> Snapshot:
    used_cpu: dict[str, float] = {}
    used_mem: dict[str, int] = {}
    used_gpus: dict[str, set[int]] = {}
    for workers in active.values():
        for w in workers:
            used_cpu[w.node_id] = used_cpu.get(w.node_id, 0.0) + w.cpu
            used_mem[w.node_id] = used_mem.get(w.node_id, 0) + w.memory
            used_gpus.setdefault(w.node_id, set()).update(int(g) for g in w.gpus)
    snaps = []
    for n in nodes:
        gpus = tuple(int(g["index"]) for g in n.gpus)
        models = {g.get("model") for g in n.gpus}
        snaps.append(
            NodeSnapshot(
                id=n.id,
                cpu=n.cpu,
                memory=n.memory,
                gpus=gpus,
                cpu_free=n.cpu - used_cpu.get(n.id, 0.0),
                memory_free=n.memory - used_mem.get(n.id, 0),
                gpus_free=tuple(g for g in gpus if g not in used_gpus.get(n.id, set())),
                gpu_type=models.pop() if len(models) == 1 else None,
                labels=tuple(sorted((str(k), str(v)) for k, v in n.labels.items())),
            )
        )
    ts = now.timestamp()
    pending = tuple(_workload(j, ()) for j in queued)
    running = tuple(
        _workload(
            j,
            tuple(
                WorkerPlacement(w.node_id, tuple(w.gpus))
                for w in sorted(active.get(j.id, []), key=lambda w: w.index)
            ),
        )
        for j in holding
    )
    return Snapshot(now=ts, nodes=tuple(snaps), pending=pending, running=running, quotas=quotas)


def _workload(job: Job, placement: tuple[WorkerPlacement, ...]) -> Workload:
    spec = job.spec
    res = spec.get("resources", {})
    return Workload(
        id=job.id,
        workspace=job.workspace_id,
        workers=int(spec.get("workers", 1)),
        cpu=float(res.get("cpu", 1.0)),
        memory=int(res.get("memory", 2**30)),
        gpus=int(res.get("gpus", 0)),
        submitted_at=job.submitted_at.timestamp(),
        priority=job.priority,
        gpu_type=res.get("gpu_type"),
        labels=tuple(sorted(spec.get("labels", {}).items())),
        attained_gpu_s=job.attained_gpu_seconds,
        placement=placement,
        not_before=job.not_before.timestamp() if job.not_before else None,
        started_at=job.started_at.timestamp() if job.started_at else None,
        attained_at=job.started_at.timestamp() if job.started_at else None,
    )
