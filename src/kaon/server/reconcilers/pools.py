"""The pool reconciler: which executors the control plane holds, and what their nodes are.

Each pass brings the set of executors in line with the pools in the database (attach a
new Ray cluster, detach a removed one), asks every pool for its nodes, and records them:
a node that is ready takes work; one that is not says why (its agent cannot start, Kaon
is not installed there, it died); a pool that cannot be reached has its nodes marked
unreachable, and its jobs wait with that reason, none failed by mistake.

Removing a pool is a drain: its nodes take no new work, the jobs that run there are
preempted (queued again, to resume on other nodes), and once no worker is left the
executor is let go and the row deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import BackendError, PermanentBackendError
from kaon.core.jobs import JobStatus, StopReason
from kaon.core.pools import LOCAL_POOL, PoolState
from kaon.executors.base import Executor, NodeInventory, SupportsCapacityRequests
from kaon.executors.pools import Pools
from kaon.server.db.models import Job, Node, Pool, Worker, utcnow
from kaon.server.db.session import Database
from kaon.server.reconcilers.loop import Loop
from kaon.server.services.job_state import guarded_update
from kaon.server.services.pool import mark_nodes, register_node

ExecutorFactory = Callable[[Pool], Executor]
UNREACHABLE = "unreachable"
GONE = "gone"
DRAINING = "draining"


@dataclass(frozen=True)
class _Seen:
    """One pool's answer this pass: its nodes, or why there are none."""

    pool: str
    nodes: list[NodeInventory] | None
    error: BackendError | None = None


class PoolReconciler(Loop):
    name = "pools"

    def __init__(
        self,
        db: Database,
        pools: Pools,
        factory: ExecutorFactory,
        poke_jobs: Callable[[], None],
        interval_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.db = db
        self.pools = pools
        self.factory = factory
        self.poke_jobs = poke_jobs
        self.interval_s = interval_s

    async def run_once(self) -> bool:
        async with self.db.session() as s:
            rows = {p.name: p for p in (await s.execute(select(Pool))).scalars()}
        self._sync_executors(rows)
        changed = False
        # Each pool is recorded as soon as it answers: a cluster that is slow to connect
        # (or cannot be reached) never holds up the others.
        for answer in asyncio.as_completed([self._inventory(p) for p in self.pools.names()]):
            seen = await answer
            changed |= await self._record(seen, rows.get(seen.pool))
        for row in rows.values():
            if row.state == PoolState.REMOVING.value:
                changed |= await self._drain(row)
        if changed:
            self.poke_jobs()
        return False

    async def register_local(self) -> None:
        """This machine's nodes, at once (start-up does not wait for remote pools)."""
        await self._record(await self._inventory(LOCAL_POOL), None)

    async def stopped(self) -> None:
        self.pools.close()

    def _sync_executors(self, rows: dict[str, Pool]) -> None:
        attached = set(self.pools.names()) - {LOCAL_POOL}
        for name, row in rows.items():
            if name not in attached:
                self.pools.attach(name, self.factory(row))
        for name in attached - set(rows):
            self.pools.detach(name)

    async def _inventory(self, pool: str) -> _Seen:
        try:
            return _Seen(pool, await asyncio.to_thread(self.pools.inventory_of, pool))
        except BackendError as e:
            return _Seen(pool, None, e)

    async def _record(self, seen: _Seen, row: Pool | None) -> bool:
        """Write one pool's nodes and state. True when the set of ready nodes changed."""
        async with self.db.session() as s:
            before = set(await _ready_nodes(s, seen.pool))
            if seen.nodes is None:
                message = f"pool {seen.pool!r} cannot be reached: {seen.error}"
                await mark_nodes(s, seen.pool, UNREACHABLE, message)
            else:
                for node in seen.nodes:
                    await register_node(s, node, seen.pool)
                kept = [n.id for n in seen.nodes]
                await mark_nodes(s, seen.pool, GONE, "left the pool", keep=kept)
            if row is not None and row.state != PoolState.REMOVING.value:
                await _pool_state(s, row, seen, self.pools.get(seen.pool))
            after = set(await _ready_nodes(s, seen.pool))
        return before != after

    async def _drain(self, row: Pool) -> bool:
        """A pool being removed: no new work, its jobs preempted; gone once empty."""
        async with self.db.session() as s:
            await mark_nodes(s, row.name, DRAINING, f"its pool {row.name!r} is being removed")
            query = (
                select(Job)
                .join(Worker, Worker.job_id == Job.id)
                .join(Node, Node.id == Worker.node_id)
                .where(Node.executor == row.name, Worker.active.is_(True))
                .distinct()
            )
            jobs = list((await s.execute(query)).scalars())
            for job in jobs:
                if job.stop_reason is None and job.status in (
                    JobStatus.STARTING.value,
                    JobStatus.RUNNING.value,
                ):
                    await guarded_update(
                        s,
                        job,
                        {
                            "stop_reason": StopReason.PREEMPT.value,
                            "status": JobStatus.PREEMPTED.value,
                            "message": f"preempted: its pool {row.name!r} is being removed",
                        },
                    )
            if jobs:
                return True
            await s.execute(delete(Pool).where(Pool.name == row.name))
            await mark_nodes(s, row.name, "removed", f"pool {row.name!r} was removed")
        self.pools.detach(row.name)
        return True


async def _ready_nodes(s: AsyncSession, pool: str) -> list[str]:
    rows = await s.execute(select(Node.id).where(Node.executor == pool, Node.state == "ready"))
    return list(rows.scalars())


async def _pool_state(s: AsyncSession, row: Pool, seen: _Seen, executor: Executor | None) -> None:
    pool = await s.get(Pool, row.name)
    if pool is None:
        return
    if seen.nodes is not None:
        ready = sum(1 for n in seen.nodes if n.ready)
        state, message = PoolState.READY, f"{ready} node(s) ready of {len(seen.nodes)}"
    elif isinstance(seen.error, PermanentBackendError):
        state, message = PoolState.ERROR, str(seen.error)
    elif pool.state == PoolState.CONNECTING.value:
        state, message = PoolState.CONNECTING, str(seen.error)
    else:
        state, message = PoolState.UNREACHABLE, str(seen.error)
    elastic = isinstance(executor, SupportsCapacityRequests) and bool(
        getattr(executor, "elastic", False)
    )
    if (pool.state, pool.message, pool.elastic) != (state.value, message, elastic):
        pool.state, pool.message, pool.elastic = state.value, message, elastic
        pool.updated_at = utcnow()
