"""The launch step: jobs the scheduler placed (STARTING, no worker handles yet) are handed
to the executor as a `GangLaunch`, and become RUNNING with each worker's handle, pid and
port recorded.

A launch may be repeated (a crash between the executor's answer and the database write):
the executor adopts workers it already started, and the job token is derived, not stored,
so the repeat hands out the same one. A temporary executor error leaves the job STARTING
for the next pass; a permanent one stops it with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import PermanentBackendError, TemporaryBackendError
from kaon.core.jobs import JobStatus, StopReason
from kaon.core.replicas import ENV_REPLICA_KEY
from kaon.core.secrets import (
    SECRET_ENV_MARKER,
    SECRET_FILES_MARKER,
    EnvValue,
    plain_env,
    secret_files,
    secret_refs,
)
from kaon.core.tls import ENV_CA_PEM
from kaon.executors.base import Executor, GangLaunch, WorkerLaunch, WorkerState
from kaon.executors.local import RUN_AS_ENV, LaunchAborts
from kaon.server.db.models import Job, Worker, Workspace
from kaon.server.db.session import Database
from kaon.server.security.tokens import job_token, replica_key
from kaon.server.security.uids import workspace_uids
from kaon.server.services.artifacts import inputs_for
from kaon.server.services.job_state import guarded_update
from kaon.server.services.pool import active_workers, stored_spec
from kaon.server.services.snapshots import snapshot_path

logger = logging.getLogger("kaon.reconciler.jobs")


ABORT_POLL_S = 0.25  # how often a running launch checks whether its job was stopped


@dataclass(frozen=True)
class LaunchConfig:
    api_url: str  # how workers reach the control plane (metrics, code)
    blobs_dir: str
    token_key: bytes  # derives the per-attempt job tokens (`security.tokens.job_token`)
    stop_grace_s: float = 10.0
    aborts: LaunchAborts | None = None  # where a launch in progress is told to stop
    worker_uids: tuple[int, int] | None = None  # each workspace's workers as its own uid
    usage_interval_s: float = 5.0  # how often supervisors sample usage (KAON_USAGE_INTERVAL_S)
    ca_pem: str | None = None  # the API's certificate, when it serves TLS (KAON_CA_PEM)


async def launch(
    db: Database, executor: Executor, config: LaunchConfig, clock: Callable[[], datetime]
) -> bool:
    """Launch every placed job. True when one could not start (observe it at once)."""
    async with db.session() as s:
        query = select(Job).where(
            Job.status == JobStatus.STARTING.value, Job.stop_reason.is_(None)
        )
        jobs = list((await s.execute(query)).scalars())
        workers = await active_workers(s, [j.id for j in jobs])
        uids = await _uids(s, config) if jobs else {}
    failed = False
    for job in jobs:
        mine = sorted(workers.get(job.id, []), key=lambda w: w.index)
        if mine and all(w.handle for w in mine):
            continue
        uid = uids.get(job.workspace_id)
        failed |= not await _launch_one(db, executor, config, job, mine, clock, uid)
    return failed


async def _uids(session: AsyncSession, config: LaunchConfig) -> dict[str, int]:
    """Each workspace's workers' uid, when workers run as other users."""
    if config.worker_uids is None:
        return {}
    order = select(Workspace.id).order_by(Workspace.created_at, Workspace.id)
    return workspace_uids(list((await session.execute(order)).scalars()), config.worker_uids)


async def _launch_one(
    db: Database,
    executor: Executor,
    config: LaunchConfig,
    job: Job,
    workers: list[Worker],
    clock: Callable[[], datetime],
    uid: int | None = None,
) -> bool:
    """False when the job could not start and was stopped with the reason."""
    try:
        launching = gang(job, workers, config, uid)
        inputs = await inputs_for(db, job, [w.node_id for w in workers])
        launching = replace(launching, inputs=inputs) if inputs else launching
        states = await _launch_watched(db, executor, config, job, launching)
    except TemporaryBackendError as e:
        message = f"waiting to start: {e}"
        if job.message != message:  # say it once, not every pass
            logger.warning("launch of %s failed, will retry: %s", job.id, e)
            async with db.session() as s:
                await guarded_update(s, job, {"message": message})
        return True
    except (PermanentBackendError, OSError) as e:
        values = {"stop_reason": StopReason.FAILED.value, "message": f"cannot start: {e}"}
        async with db.session() as s:
            await guarded_update(s, job, values)
        return False
    now = clock()
    async with db.session() as s:
        for w, st in zip(workers, states, strict=True):
            await s.execute(
                update(Worker)
                .where(Worker.id == w.id)
                .values(handle=st.handle, pid=st.pid, port=st.port, started_at=now)
            )
        running = {"status": JobStatus.RUNNING.value, "started_at": now, "message": "running"}
        await guarded_update(s, job, running)
    return True


def _secret_marker(env: dict[str, EnvValue]) -> dict[str, str]:
    """The variables that hold secrets, by name only: each worker's supervisor fetches
    their values with the job's token just before it starts the worker, so no value is
    written into a launch file or passed through an executor."""
    refs = secret_refs(env)
    marker = {SECRET_ENV_MARKER: ",".join(sorted(refs))} if refs else {}
    if files := secret_files(env):
        marker[SECRET_FILES_MARKER] = ",".join(files)
    return marker


async def _launch_watched(
    db: Database, executor: Executor, config: LaunchConfig, job: Job, launch: GangLaunch
) -> list[WorkerState]:
    """Run the executor's launch (a large gang takes seconds) while watching the job:
    once it is cancelled or preempted, the executor is told to start no further worker.
    The workers already started get handles like the rest, so the stop that follows
    finds them all."""
    task = asyncio.ensure_future(asyncio.to_thread(executor.launch, launch))
    aborts = config.aborts
    try:
        while aborts is not None:
            done, _ = await asyncio.wait({task}, timeout=ABORT_POLL_S)
            if done:
                break
            if await _stop_requested(db, job.id):
                aborts.ask(job.id, job.attempt)
                break
        return await task
    finally:
        if aborts is not None:
            aborts.forget(job.id, job.attempt)


async def _stop_requested(db: Database, job_id: str) -> bool:
    async with db.session() as s:
        reason = await s.scalar(select(Job.stop_reason).where(Job.id == job_id))
    return reason is not None


def _replica_key_env(job: Job, key: bytes) -> dict[str, str]:
    """A replica's own credential (`security.tokens.replica_key`); other jobs get none."""
    if job.kind != "replica":
        return {}
    return {ENV_REPLICA_KEY: replica_key(key, job.id, job.attempt)}


def gang(
    job: Job, workers: list[Worker], config: LaunchConfig, uid: int | None = None
) -> GangLaunch:
    """Everything the executor needs to start (or adopt) one attempt of a job; with
    `uid`, its workers run as that user (the executor takes the marker out of their
    environment)."""
    spec = stored_spec(job)
    env = {
        **plain_env(spec.env),
        **_secret_marker(spec.env),
        **(job.system_env or {}),
        "KAON_JOB_ID": job.id,
        "KAON_JOB_NAME": job.name or "",
        "KAON_API_URL": config.api_url,
        "KAON_JOB_TOKEN": job_token(config.token_key, job.id, job.attempt),
        "KAON_RESTART_COUNT": str(job.restart_count),
        "KAON_USAGE_INTERVAL_S": str(config.usage_interval_s),
        **_replica_key_env(job, config.token_key),
        **({ENV_CA_PEM: config.ca_pem} if config.ca_pem else {}),
        **({RUN_AS_ENV: str(uid)} if uid is not None else {}),
    }
    snapshot = None
    if spec.snapshot:
        snapshot = str(snapshot_path(Path(config.blobs_dir), spec.snapshot))
    return GangLaunch(
        job_id=job.id,
        attempt=job.attempt,
        command=tuple(spec.command),
        env=env,
        workers=tuple(
            WorkerLaunch(
                index=w.index, node_id=w.node_id, cpu=w.cpu, memory=w.memory, gpus=tuple(w.gpus)
            )
            for w in workers
        ),
        snapshot=snapshot,
        stop_grace_s=config.stop_grace_s,
    )
