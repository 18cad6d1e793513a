"""Workspace quotas (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from kaon.core.quotas import QuotaSpec, QuotaView
from kaon.server.deps import CallerDep, SessionDep, WakeDep
from kaon.server.services import quotas

router = APIRouter(prefix="/api/v1/quotas", tags=["quotas"])


@router.put("/{workspace}", response_model=QuotaView)
async def set_quota(
    workspace: str, body: QuotaSpec, caller: CallerDep, session: SessionDep, wake: WakeDep
) -> QuotaView:
    return await quotas.set_quota(session, caller, workspace, body, wake)


@router.get("", response_model=list[QuotaView])
async def list_quotas(caller: CallerDep, session: SessionDep) -> list[QuotaView]:
    return await quotas.list_quotas(session, caller)


@router.delete("/{workspace}", status_code=204)
async def delete_quota(
    workspace: str, caller: CallerDep, session: SessionDep, wake: WakeDep
) -> Response:
    await quotas.delete_quota(session, caller, workspace, wake)
    return Response(status_code=204)
