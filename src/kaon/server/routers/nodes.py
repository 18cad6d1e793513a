"""The resource pool."""

from __future__ import annotations

from fastapi import APIRouter

from kaon.core.nodes import NodeView
from kaon.server.deps import CallerDep, DbDep
from kaon.server.services import nodes

router = APIRouter(prefix="/api/v1/nodes", tags=["nodes"])


@router.get("", response_model=list[NodeView])
async def list_nodes(caller: CallerDep, db: DbDep) -> list[NodeView]:
    async with db.session() as s:
        return await nodes.list_nodes(s)
