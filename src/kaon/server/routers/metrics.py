"""`/metrics`: the control plane's Prometheus metrics (see `kaon.server.telemetry`).

It needs an admin token, like every other route that shows the whole pool: job counts by
workspace name tell one team what the others run. Prometheus sends one with
`authorization: {credentials: ...}` in its scrape config (docs/console.md shows it).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from kaon.server.deps import CallerDep, SessionDep
from kaon.server.telemetry import Telemetry

router = APIRouter(tags=["metrics"])


def _telemetry(request: Request) -> Telemetry:
    found = request.app.state.telemetry
    assert isinstance(found, Telemetry)
    return found


TelemetryDep = Annotated[Telemetry, Depends(_telemetry)]


@router.get("/metrics", response_class=Response)
async def metrics(caller: CallerDep, session: SessionDep, telemetry: TelemetryDep) -> Response:
    """The Prometheus text exposition (admin token)."""
    caller.require_admin()
    return Response(await telemetry.exposition(session), media_type=CONTENT_TYPE_LATEST)
