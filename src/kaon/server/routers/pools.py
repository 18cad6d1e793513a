"""Pools: attach Ray clusters, list them with their nodes, detach them (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from kaon.core.pools import PoolSpec, PoolView
from kaon.server.deps import CallerDep, SessionDep, WakeDep
from kaon.server.services import pools

router = APIRouter(prefix="/api/v1/pools", tags=["pools"])


@router.post("", response_model=PoolView, status_code=201)
async def add(body: PoolSpec, caller: CallerDep, session: SessionDep, wake: WakeDep) -> PoolView:
    return await pools.add(session, caller, body, wake)


@router.get("", response_model=list[PoolView])
async def list_pools(caller: CallerDep, session: SessionDep) -> list[PoolView]:
    return await pools.list_pools(session, caller)


@router.delete("/{name}", response_model=PoolView)
async def remove(
    name: str, caller: CallerDep, session: SessionDep, wake: WakeDep, force: bool = False
) -> PoolView:
    return await pools.remove(session, caller, name, force, wake)
