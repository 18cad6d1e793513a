"""The two endpoints the gateways use: the route table, and load reports."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response

from kaon.core.gateway import GatewayReport, RouteTable
from kaon.server.deps import (
    CallerDep,
    LoadBoardDep,
    PlaneDep,
    RouteVersionsDep,
    SessionDep,
    WakeDep,
)
from kaon.server.services import gateway

router = APIRouter(prefix="/api/v1/gateway", tags=["gateway"])


@router.get("/routes", response_model=RouteTable)
async def routes(
    caller: CallerDep, session: SessionDep, versions: RouteVersionsDep, plane: PlaneDep
) -> RouteTable:
    """Every deployment and its ready replicas, for the gateways to poll."""
    return await gateway.route_table(session, caller, versions, plane.jobs.config.token_key)


@router.post("/report", status_code=204)
async def report(
    body: GatewayReport, caller: CallerDep, board: LoadBoardDep, wake: WakeDep, plane: PlaneDep
) -> Response:
    """Load as a gateway saw it; a 'demand' report wakes the autoscaler at once."""
    gateway.record_report(caller, body, board, time.time(), wake, plane.timeline)
    return Response(status_code=204)
