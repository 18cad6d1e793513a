"""The schedule step: queued jobs in, placements, preemptions and waiting reasons out.

Loads the pool (`services.pool.load_pass`), asks the pure scheduler, and writes each
decision under the job's version: a placed job becomes STARTING with one worker row per
worker (its allocation, from this moment), a preempted one gets its stop reason, and a
waiting one its reason in plain words.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import update

from kaon.core.errors import BackendError
from kaon.core.jobs import JobStatus, StopReason
from kaon.core.tokens import hash_token
from kaon.executors.pools import Pools
from kaon.scheduler import Decisions, PoolState, WorkerPlacement, capacity_demand
from kaon.scheduler import schedule as decide
from kaon.server.db.models import Job, Worker
from kaon.server.db.session import Database
from kaon.server.security.tokens import job_token
from kaon.server.services.job_state import guarded_update
from kaon.server.services.pool import load_pass, stored_spec
from kaon.server.services.quotas import scheduler_quotas

logger = logging.getLogger("kaon.reconciler.jobs")


class CapacityRequests:
    """Asks each elastic pool's autoscaler for what its work needs (`capacity_demand`:
    what runs there and what waits for capacity), again only when that changes. Work that
    was placed but is not started yet counts as running, so the node it was placed on is
    not taken away before the job gets there."""

    def __init__(self, pools: Pools) -> None:
        self.pools = pools
        self.sent: dict[str, list[dict[str, float]]] = {}

    async def update(self, state: PoolState, decisions: Decisions) -> None:
        for name, executor in self.pools.elastic().items():
            bundles = capacity_demand(state, decisions, name)
            if self.sent.get(name) == bundles:
                continue
            logger.info("asking pool %s's autoscaler for %d worker(s)", name, len(bundles))
            try:
                await asyncio.to_thread(executor.request_capacity, bundles)
            except BackendError as e:
                logger.warning("cannot ask pool %s for capacity: %s", name, e)
                continue
            self.sent[name] = bundles


async def schedule(
    db: Database,
    clock: Callable[[], datetime],
    token_key: bytes,
    capacity: CapacityRequests | None = None,
) -> bool:
    """One scheduling pass. True when it preempted a job (observe it at once)."""
    elastic = capacity is not None and bool(capacity.pools.elastic())
    async with db.session() as s:
        inputs = await load_pass(s, clock(), await scheduler_quotas(s), always=elastic)
    if inputs is None:
        return False
    decisions = decide(inputs.state)
    if capacity is not None:
        await capacity.update(inputs.state, decisions)
    if not inputs.state.pending:
        return False
    for placement in decisions.placements:
        await _place(db, inputs.jobs[placement.workload_id], placement.workers, token_key)
    for preemption in decisions.preemptions:
        await _preempt(db, inputs.jobs[preemption.workload_id], preemption.reason)
    queued = [j for j in inputs.jobs.values() if j.status == JobStatus.QUEUED.value]
    waiting = dict(decisions.waiting)
    growing = sorted(capacity.pools.elastic()) if capacity is not None else []
    if growing:
        asked = f"; asked the autoscaler of pool {', '.join(growing)} for nodes"
        for job_id in decisions.short_of_capacity:
            waiting[job_id] = waiting.get(job_id, "waiting for capacity") + asked
    await _note_waiting(db, queued, waiting)
    return bool(decisions.preemptions)


async def _place(
    db: Database, job: Job, placement: tuple[WorkerPlacement, ...], token_key: bytes
) -> None:
    spec = stored_spec(job)
    attempt = job.attempt + 1
    values: dict[str, object] = {
        "status": JobStatus.STARTING.value,
        "attempt": attempt,
        "waiting_reason": None,
        "job_token_hash": hash_token(job_token(token_key, job.id, attempt)),
        "message": "starting workers",
    }
    async with db.session() as s:
        if not await guarded_update(s, job, values):
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


async def _preempt(db: Database, job: Job, reason: str) -> None:
    if job.stop_reason is not None:
        return
    values = {
        "stop_reason": StopReason.PREEMPT.value,
        "status": JobStatus.PREEMPTED.value,
        "message": f"preempted: {reason}",
    }
    async with db.session() as s:
        await guarded_update(s, job, values)


async def _note_waiting(db: Database, queued: list[Job], waiting: dict[str, str]) -> None:
    """Store why each queued job waits, where that changed. Not a version bump: the reason
    is advice for people, and must not make a concurrent write of the job's state stale."""
    changed = [
        (j, waiting[j.id]) for j in queued if j.id in waiting and j.waiting_reason != waiting[j.id]
    ]
    if not changed:
        return
    async with db.session() as s:
        for job, reason in changed:
            await s.execute(
                update(Job)
                .where(Job.id == job.id, Job.version == job.version)
                .values(waiting_reason=reason)
            )
