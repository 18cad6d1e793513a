"""The resource pool."""

from __future__ import annotations

from fastapi import APIRouter

from kaon.core.nodes import NodeView
from kaon.server.deps import CallerDep, SessionDep
from kaon.server.services import pool

router = APIRouter(prefix="/api/v1/nodes", tags=["nodes"])


@router.get("", response_model=list[NodeView])
async def list_nodes(caller: CallerDep, session: SessionDep) -> list[NodeView]:
    return await pool.list_nodes(session)
