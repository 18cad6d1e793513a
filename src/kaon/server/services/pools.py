"""Pools: attaching Ray clusters to the pool, listing what each brings, detaching them.

Adding a pool writes its row and wakes the pool reconciler, which starts the connection
(a separate process that runs the Ray driver) and brings the cluster's nodes in. What can
be known at once is checked here: the address is well formed and something listens there,
so a typo fails with a one-line 422 instead of a pool that never connects. What only the
connection can tell (a different Ray version, a node without Kaon) shows in the pool's or
the node's state and message.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import ConflictError, InvalidSpecError, NotFoundError
from kaon.core.pools import LOCAL_POOL, PoolKind, PoolSpec, PoolState, PoolView
from kaon.server.db.models import Node, Pool, Worker, utcnow
from kaon.server.security.principal import Principal
from kaon.server.wake import Wake

PROBE_TIMEOUT_S = 3.0
READY = "ready"


async def add(session: AsyncSession, caller: Principal, spec: PoolSpec, wake: Wake) -> PoolView:
    caller.require_admin()
    if await session.get(Pool, spec.name) is not None:
        raise ConflictError(f"a pool named {spec.name!r} exists; remove it first or pick another")
    await probe(spec.address)
    pool = Pool(
        name=spec.name,
        kind=spec.kind.value,
        address=spec.address,
        api_url=spec.api_url,
        state=PoolState.CONNECTING.value,
        message="connecting",
    )
    session.add(pool)
    await session.commit()
    wake.pools()
    return _view(pool, [])


async def ensure(session: AsyncSession, name: str, address: str) -> None:
    """The pool `name` at `address` (``KAON_RAY_ADDRESS`` on start): added, or moved."""
    pool = await session.get(Pool, name)
    if pool is None:
        spec = PoolSpec(name=name, address=address)
        session.add(
            Pool(
                name=spec.name,
                kind=spec.kind.value,
                address=spec.address,
                state=PoolState.CONNECTING.value,
                message="connecting",
            )
        )
    elif pool.address != address:
        pool.address, pool.state, pool.message = address, PoolState.CONNECTING.value, "connecting"
    await session.flush()


async def probe(address: str) -> None:
    """422 naming `address` unless something accepts TCP connections there."""
    host, port = address.removeprefix("ray://").rsplit(":", 1)
    host = host.strip("[]")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port)), PROBE_TIMEOUT_S
        )
    except (OSError, TimeoutError) as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise InvalidSpecError(
            f"cannot reach a Ray cluster at {address}: {why}; is 'ray start --head' running "
            "there, and is its port open to this machine?",
            field="address",
        ) from None
    writer.close()


async def list_pools(session: AsyncSession, caller: Principal) -> list[PoolView]:
    """This machine's pool first, then every attached cluster, with what each brings."""
    nodes = list((await session.execute(select(Node))).scalars())
    views = [
        PoolView(
            name=LOCAL_POOL,
            kind=PoolKind.LOCAL,
            state=PoolState.READY,
            message="this machine",
        )
    ]
    views[0] = _with_nodes(views[0], [n for n in nodes if n.executor == LOCAL_POOL])
    for pool in (await session.execute(select(Pool).order_by(Pool.name))).scalars():
        views.append(_view(pool, [n for n in nodes if n.executor == pool.name]))
    return views


async def remove(
    session: AsyncSession, caller: Principal, name: str, force: bool, wake: Wake
) -> PoolView:
    """Detach a pool. While jobs run on it this is refused, unless forced: then their
    workers are stopped and the jobs queued again elsewhere, and the pool goes once none
    is left (the pool reconciler does that)."""
    caller.require_admin()
    if name == LOCAL_POOL:
        raise InvalidSpecError("the local pool cannot be removed", field="name")
    pool = await session.get(Pool, name)
    if pool is None:
        raise NotFoundError(f"pool {name!r} not found")
    running = await _workers_on(session, name)
    if running and not force:
        raise ConflictError(
            f"{running} worker(s) run on pool {name!r}; cancel their jobs, or remove with "
            "--force to stop them and queue their jobs again on other nodes"
        )
    pool.state = PoolState.REMOVING.value
    pool.message = "stopping its workers" if running else "detaching"
    pool.updated_at = utcnow()
    await session.commit()
    wake.pools()
    return _view(pool, [])


async def _workers_on(session: AsyncSession, pool: str) -> int:
    query = (
        select(func.count())
        .select_from(Worker)
        .join(Node, Node.id == Worker.node_id)
        .where(Node.executor == pool, Worker.active.is_(True))
    )
    return int(await session.scalar(query) or 0)


def _view(pool: Pool, nodes: list[Node]) -> PoolView:
    view = PoolView(
        name=pool.name,
        kind=PoolKind(pool.kind),
        address=pool.address,
        state=PoolState(pool.state),
        message=pool.message,
        elastic=pool.elastic,
        created_at=pool.created_at,
    )
    return _with_nodes(view, nodes)


def _with_nodes(view: PoolView, nodes: list[Node]) -> PoolView:
    ready = [n for n in nodes if n.state == READY]
    return view.model_copy(
        update={
            "nodes": len(ready),
            "cpu": sum(n.cpu for n in ready),
            "memory": sum(n.memory for n in ready),
            "gpus": sum(len(n.gpus) for n in ready),
        }
    )
