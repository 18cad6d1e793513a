"""Workspace quotas (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from kaon.core.quotas import QuotaSpec, QuotaView
from kaon.server.deps import CallerDep, DbDep, JobReconcilerDep
from kaon.server.services import quotas

router = APIRouter(prefix="/api/v1/quotas", tags=["quotas"])


@router.put("/{workspace}", response_model=QuotaView)
async def set_quota(
    workspace: str, body: QuotaSpec, caller: CallerDep, db: DbDep, reconciler: JobReconcilerDep
) -> QuotaView:
    async with db.session() as s:
        view = await quotas.set_quota(s, caller, workspace, body)
    reconciler.poke()
    return view


@router.get("", response_model=list[QuotaView])
async def list_quotas(caller: CallerDep, db: DbDep) -> list[QuotaView]:
    async with db.session() as s:
        return await quotas.list_quotas(s, caller)


@router.delete("/{workspace}", status_code=204)
async def delete_quota(
    workspace: str, caller: CallerDep, db: DbDep, reconciler: JobReconcilerDep
) -> Response:
    async with db.session() as s:
        await quotas.delete_quota(s, caller, workspace)
    reconciler.poke()
    return Response(status_code=204)
