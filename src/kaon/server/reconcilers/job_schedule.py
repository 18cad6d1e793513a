"""The schedule step: queued jobs in, placements, preemptions and waiting reasons out.

Loads the pool (`services.pool.load_pass`), asks the pure scheduler, and writes each
decision under the job's version: a placed job becomes STARTING with one worker row per
worker (its allocation, from this moment), a preempted one gets its stop reason, and a
waiting one its reason in plain words.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from datetime import datetime

from sqlalchemy import bindparam, select, update

from kaon.core.errors import BackendError
from kaon.core.jobs import JobStatus, StopReason
from kaon.core.tokens import hash_token
from kaon.executors.pools import Pools
from kaon.scheduler import Decisions, PoolState, WorkerPlacement, capacity_demand
from kaon.scheduler import schedule as decide
from kaon.server.db.models import Job, Worker, Workspace
from kaon.server.db.session import Database
from kaon.server.security.tokens import job_token
from kaon.server.services.job_state import guarded_update
from kaon.server.services.pool import QueuedJob, load_pass
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
        await _place(db, inputs.queued[placement.workload_id], placement.workers, token_key)
    names = await _workspace_names(db, decisions)
    for preemption in decisions.preemptions:
        reason = with_names(preemption.reason, names)
        await _preempt(db, inputs.holding[preemption.workload_id], reason)
    queued = list(inputs.queued.values())
    waiting = {job_id: with_names(why, names) for job_id, why in decisions.waiting.items()}
    growing = sorted(capacity.pools.elastic()) if capacity is not None else []
    if growing:
        asked = f"; asked the autoscaler of pool {', '.join(growing)} for nodes"
        for job_id in decisions.short_of_capacity:
            waiting[job_id] = waiting.get(job_id, "waiting for capacity") + asked
    await _note_waiting(db, queued, waiting)
    return bool(decisions.preemptions)


_WORKSPACE_ID = re.compile(r"\bws-[0-9a-f]{6,}\b")


def with_names(reason: str, names: Mapping[str, str]) -> str:
    """The scheduler knows workspaces by id (its inputs are keyed so); people know them by
    name: every id in a reason becomes the name, an unknown one stays as it is."""
    return _WORKSPACE_ID.sub(lambda m: names.get(m.group(0), m.group(0)), reason)


async def _workspace_names(db: Database, decisions: Decisions) -> dict[str, str]:
    """Workspace names by id, read only when a reason of this pass names a workspace."""
    reasons = [*decisions.waiting.values(), *(p.reason for p in decisions.preemptions)]
    if not any(_WORKSPACE_ID.search(r) for r in reasons):
        return {}
    async with db.session() as s:
        rows = await s.execute(select(Workspace.id, Workspace.name))
    return {str(i): str(n) for i, n in rows}


async def _place(
    db: Database, queued: QueuedJob, placement: tuple[WorkerPlacement, ...], token_key: bytes
) -> None:
    spec = queued.spec
    attempt = queued.attempt + 1
    values: dict[str, object] = {
        "status": JobStatus.STARTING.value,
        "attempt": attempt,
        "waiting_reason": None,
        "job_token_hash": hash_token(job_token(token_key, queued.id, attempt)),
        "message": "starting workers",
    }
    async with db.session() as s:
        job = await s.get(Job, queued.id)  # the pass read columns; write under its version
        if job is None or job.version != queued.version:  # cancelled meanwhile, say
            logger.info("job %s changed meanwhile; dropping a stale write", queued.id)
            return
        if not await guarded_update(s, job, values):
            return
        for index, wp in enumerate(placement):
            s.add(
                Worker(
                    job_id=queued.id,
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


async def _note_waiting(db: Database, queued: list[QueuedJob], waiting: dict[str, str]) -> None:
    """Store why each queued job waits, where that changed. Not a version bump: the reason
    is advice for people, and must not make a concurrent write of the job's state stale."""
    changed = [
        (j, waiting[j.id]) for j in queued if j.id in waiting and j.waiting_reason != waiting[j.id]
    ]
    if not changed:
        return
    statement = (
        update(Job)
        .where(Job.id == bindparam("job_id"), Job.version == bindparam("seen"))
        .values(waiting_reason=bindparam("reason"))
    )
    rows = [{"job_id": j.id, "seen": j.version, "reason": reason} for j, reason in changed]
    async with db.session() as s:
        # One statement executed for many rows on the connection (a Core executemany): a
        # first pass over 10,000 queued jobs writes them all, one round trip each otherwise.
        await (await s.connection()).execute(statement, rows)
