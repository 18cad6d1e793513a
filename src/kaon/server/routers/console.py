"""Serves the web console (`kaon.console`): `/console/` is its page, `/console/<file>` its
scripts, styles and vendored libraries, and `/` sends a browser there.

The files are public (they hold no data; every number the console shows comes from the
API with the signed-in token). Pages are addressed by the URL's fragment
(`/console/#/jobs`), so the server only ever serves files that exist.

Three API routes exist for the console alone: the pool's allocation over the last day
(`services.history`), for the overview and quotas pages; and for the deployment page, a
deployment's recent traffic and scaling (`services.timeline`), and trying one of its
handlers. The page cannot call the gateway itself (another origin, and the page may talk
only to this server), so the control plane forwards the call to the gateway with the
caller's own token (or the deployment token they paste): the gateway makes the same
decision on it as on any call.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import ssl
import time
from typing import Annotated

import httpx
from fastapi import APIRouter, Header, Query
from fastapi.responses import FileResponse, RedirectResponse, Response

from kaon.console import INDEX, STATIC_DIR
from kaon.core.deployments import HandlerCall, HandlerReply
from kaon.core.errors import InvalidSpecError, NotFoundError, UnavailableError
from kaon.core.gateway import deployment_key
from kaon.core.tls import client_context
from kaon.server.deps import CallerDep, PlaneDep, SessionDep
from kaon.server.security.principal import bearer
from kaon.server.services import deployments, history
from kaon.server.services.timeline import DeploymentTimelineView

router = APIRouter(tags=["console"], include_in_schema=False)
# Every file is revalidated (cheap: 304), so an upgraded Kaon never runs yesterday's script.
NO_STALE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _page_policy() -> str:
    """The page runs only its own files and its one inline script (the import map, allowed
    by its hash) and talks only to this server: injected markup cannot run a script that
    reads the token from sessionStorage, nor send it elsewhere. Inline styles stay allowed
    (the charts and meters set widths with them)."""
    inline = re.findall(r"<script[^>]*>(.*?)</script>", INDEX.read_text(), re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in inline
        if s.strip()
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


PAGE_HEADERS = {**NO_STALE, "Content-Security-Policy": _page_policy()}


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/console/")


@router.get("/console")
async def console_bare() -> RedirectResponse:
    return RedirectResponse("/console/")


@router.get("/console/")
async def index() -> FileResponse:
    return FileResponse(INDEX, headers=PAGE_HEADERS)


@router.get("/console/{path:path}")
async def asset(path: str) -> FileResponse:
    """A file of the console's package; nothing outside it, whatever `..` the path holds."""
    root = STATIC_DIR.resolve()
    found = (root / path).resolve()
    if not found.is_relative_to(root) or not found.is_file():
        raise NotFoundError(f"no console file {path!r}")
    return FileResponse(found, headers=NO_STALE)


# --- the deployment page's API -----------------------------------------------------------

api = APIRouter(prefix="/api/v1/workspaces/{workspace}/deployments", tags=["console"])

GATEWAY_ENV = "KAON_GATEWAY_URL"  # `kaon up` sets it to the gateway it starts
DEFAULT_GATEWAY = "http://127.0.0.1:8471"
REPLY_LIMIT = 64 * 1024  # bytes of a reply the page shows; the rest is cut
HANDLER = re.compile(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-.]+)*")


def gateway_url() -> str:
    """The gateway the control plane forwards tried calls to (read at each call, so a
    gateway moved to another port is followed)."""
    return (os.environ.get(GATEWAY_ENV) or DEFAULT_GATEWAY).rstrip("/")


GATEWAY_CA_ENV = "KAON_GATEWAY_CA_FILE"  # `kaon up` over TLS: the gateway's certificate


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every forwarded call: building one per client costs ~70 ms.
    An https gateway is verified by `GATEWAY_CA_ENV`'s file alone where it is set."""
    return client_context(ca_file=os.environ.get(GATEWAY_CA_ENV) or None)


@api.post("/{name}/try", response_model=HandlerReply)
async def try_handler(
    workspace: str,
    name: str,
    call: HandlerCall,
    caller: CallerDep,
    session: SessionDep,
    authorization: Annotated[str | None, Header()] = None,
) -> HandlerReply:
    """Call a handler through the gateway: the deployment must be one the caller sees (404
    otherwise, as everywhere), and the gateway decides on the token, as for any client."""
    handler = call.handler.strip("/")
    if not HANDLER.fullmatch(handler) or ".." in handler:
        raise InvalidSpecError(
            f"handler {call.handler!r}: letters, digits, '-', '_' and '/' only", "handler"
        )
    view = await deployments.get(session, caller, workspace, name)
    await session.close()  # the call may take long: hold no connection meanwhile
    token = call.token.strip() if call.token and call.token.strip() else bearer(authorization)
    url = f"{gateway_url()}/{workspace}/{name}/{handler}"  # canonical: names are per workspace
    timeout = min(view.spec.request_timeout_s + 5.0, 600.0)
    started = time.perf_counter()
    try:
        async with (
            httpx.AsyncClient(timeout=timeout, verify=_tls()) as http,
            http.stream(
                "POST",
                url,
                json={} if call.body is None else call.body,
                headers={"Authorization": f"Bearer {token}"},
            ) as reply,
        ):
            body = b""
            async for chunk in reply.aiter_bytes():
                body += chunk
                if len(body) > REPLY_LIMIT:
                    break
            latency_ms = (time.perf_counter() - started) * 1000
    except httpx.HTTPError as e:
        raise UnavailableError(
            f"the gateway at {gateway_url()} did not answer ({type(e).__name__}); is it "
            f"running? `kaon up` starts it, and {GATEWAY_ENV} tells the control plane where"
        ) from e
    return HandlerReply(
        status=reply.status_code,
        latency_ms=round(latency_ms, 2),
        content_type=reply.headers.get("content-type"),
        body=body[:REPLY_LIMIT].decode("utf-8", errors="replace"),
        truncated=len(body) > REPLY_LIMIT,
        gateway=gateway_url(),
    )


@api.get("/{name}/timeline", response_model=DeploymentTimelineView)
async def timeline(
    workspace: str, name: str, caller: CallerDep, session: SessionDep, plane: PlaneDep
) -> DeploymentTimelineView:
    """The deployment's traffic (each second, as its gateways reported it) and scaling
    decisions over the last minutes, from the control plane's memory (a restart forgets
    them)."""
    await deployments.get(session, caller, workspace, name)  # 404 unless the caller sees it
    return plane.timeline.view(deployment_key(workspace, name), name)


# --- the overview's and quotas page's API ----------------------------------------------

history_api = APIRouter(prefix="/api/v1/history", tags=["console"])


@history_api.get("", response_model=history.HistoryView)
async def pool_history(
    caller: CallerDep,
    session: SessionDep,
    plane: PlaneDep,
    window_s: Annotated[
        float, Query(gt=0, le=history.RETENTION_S, description="seconds back from now")
    ] = 3600.0,
) -> Response:
    """The pool's allocation, queue and GPU utilisation over the last `window_s`, one point
    per interval from the control plane's memory (a restart forgets them) and one taken
    now; per workspace its use, quota, borrowed and lent, for the caller's workspaces only
    (an admin's: every one). Pool-wide totals name no workspace."""
    at = time.time()
    now = await history.sample(session, at, plane.history.readings.values(at))
    await session.close()
    # Serialised once, by pydantic's core: FastAPI's generic encoder would walk every number
    # of a day's series again (several times slower for the same bytes).
    view = plane.history.view(caller, window_s, now)
    return Response(view.model_dump_json(), media_type="application/json")
