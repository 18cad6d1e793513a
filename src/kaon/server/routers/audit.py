"""The audit log: list it (admins everything, others their workspaces') and verify its
chain (admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from kaon.core.secrets import AuditRecordView, AuditVerification
from kaon.server.deps import CallerDep, SessionDep
from kaon.server.services import audit

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("", response_model=list[AuditRecordView])
async def list_records(
    caller: CallerDep,
    session: SessionDep,
    workspace: str | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_LIST)] = 1000,
) -> list[AuditRecordView]:
    return await audit.list_records(session, caller, workspace, since, limit)


@router.get("/verify", response_model=AuditVerification)
async def verify(caller: CallerDep, session: SessionDep) -> AuditVerification:
    return await audit.verify(session, caller)
