"""The resource pool."""

from __future__ import annotations

import time

from fastapi import APIRouter

from kaon.core.nodes import NodeView
from kaon.server.deps import CallerDep, PlaneDep, SessionDep
from kaon.server.services import node_gpus, pool

router = APIRouter(prefix="/api/v1/nodes", tags=["nodes"])


@router.get("", response_model=list[NodeView])
async def list_nodes(caller: CallerDep, session: SessionDep, plane: PlaneDep) -> list[NodeView]:
    """Every node, with each GPU's holder and latest measured utilisation and memory
    (`gpu_use`): the nodes page reads it all in one call at each refresh."""
    nodes = await pool.list_nodes(session)
    return await node_gpus.with_gpu_use(
        session, nodes, plane.history.readings, caller, time.time()
    )
