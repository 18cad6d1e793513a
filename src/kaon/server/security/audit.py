"""What the audit log records, decided at the edge of the app.

`AuditTrail` is ASGI middleware around the whole API. Every call that changes something
(any method but GET, HEAD and OPTIONS) and every refused call (401, 403, on any method)
gets one record in the hash chain (`kaon.server.services.audit`) before the answer
leaves, so a caller who saw a change succeed can rely on its record being there. A change
that commits is recorded in its own transaction (`record_in_transactions`): the change and
its record commit together or not at all, for the price of three more statements and no
more commits. Everything else (refusals, failures, changes made elsewhere) is appended by
the middleware in a short transaction of its own as the answer starts.

A record says who (the token, set by the request's authentication through `note_caller`),
the workspace, the action (the route's tag and name, e.g. ``secrets.put_secret``), the
resource (the path's ids, or the id a create inserted), the outcome, the source address
and the time; never a request body, so a secret's value never enters the log.

A few calls are machine telemetry rather than changes (metrics a job reports, load a
gateway reports, checkpoint files a node pushes) and are left out unless refused:
recording them would put a write on every report for no one to read.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kaon.server.db.models import utcnow

READS = frozenset({"GET", "HEAD", "OPTIONS"})
REFUSED = frozenset({401, 403})
TELEMETRY = frozenset(
    {
        "jobs.report",  # metrics a job reports
        "gateway.report",  # a gateway's load
        "job files.write_checkpoint",  # checkpoint files a node pushes for its job
        "job files.delete_checkpoint",
    }
)
"""Route actions left out unless refused: frequent reports by machines, not changes."""
MAX_BODY = 256 * 1024  # a create's answer kept to find the new resource's id


@dataclass
class AuditContext:
    """One request's audit facts, filled in as the request goes (mutable on purpose: it
    is shared by reference with the tasks the request runs in)."""

    method: str
    path: str
    source: str | None
    scope: Scope
    principal: str | None = None
    token_name: str | None = None
    created: str | None = None  # the id of the first resource the request inserted
    pending: bool = False  # a record is in the open transaction
    recorded: bool = False  # a record committed with the request's change


@dataclass(frozen=True)
class AuditEntry:
    """What one record says, before it is chained."""

    time: datetime
    principal: str | None
    token_name: str | None
    workspace: str | None
    action: str
    resource: str | None
    outcome: str
    status: int
    source: str | None


_CURRENT: contextvars.ContextVar[AuditContext | None] = contextvars.ContextVar(
    "kaon_audit", default=None
)


def current() -> AuditContext | None:
    """The audit facts of the request being served, if the audit log is on."""
    return _CURRENT.get()


def note_caller(principal: str, token_name: str | None) -> None:
    """Who makes the current request (a token's id, or ``job:ID`` for a job's token)."""
    ctx = _CURRENT.get()
    if ctx is not None:
        ctx.principal, ctx.token_name = principal, token_name


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    if status in REFUSED:
        return "denied"
    return "failed" if status < 500 else "error"


def describe(
    scope: Scope, body: bytes | None, created: str | None = None
) -> tuple[str, str | None, str | None]:
    """(action, workspace, resource) of a routed request: the route names the action,
    the path names the workspace and the resource, and for a create the resource it
    inserted (`created`), or else its answer (its ``id``, else its ``name``)."""
    route = scope.get("route")
    params: dict[str, Any] = dict(scope.get("path_params") or {})
    workspace = params.pop("workspace", None)
    if route is None:
        return f"{scope['method']} {scope['path']}", workspace, None
    tags = getattr(route, "tags", None) or ["api"]
    action = f"{tags[0]}.{getattr(route, 'name', 'call')}"
    values = [str(v) for v in params.values()]
    resource = "/".join(values) if values else (created or _created(body))
    return action, _str(workspace), f"{tags[0]}/{resource}" if resource else None


def _clip(value: str | None, length: int) -> str | None:
    """A value cut to its column's length: a refused call names whatever the caller sent
    (a 300-character job id), and its record must still fit (PostgreSQL would refuse
    it, turning the refusal into a 500)."""
    return value if value is None or len(value) <= length else value[: length - 1] + "…"


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _created(body: bytes | None) -> str | None:
    if not body:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for key in ("id", "name"):
        if isinstance(data.get(key), str):
            return str(data[key])
    return None


def wanted(scope: Scope, status: int) -> bool:
    """Whether a call gets a record: every refusal, and every change but telemetry."""
    if status in REFUSED:
        return True
    if scope["method"] in READS:
        return False
    action, _, _ = describe(scope, None)
    return action not in TELEMETRY


Appender = Callable[[AuditEntry], Awaitable[None]]


class AuditTrail:
    """The middleware; `append` writes one entry to the chain (in its own transaction)."""

    def __init__(self, app: ASGIApp, append: Appender) -> None:
        self.app = app
        self.append = append

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        ctx = AuditContext(scope["method"], scope["path"], client[0] if client else None, scope)
        token = _CURRENT.set(ctx)
        held: list[Message] = []
        size = 0

        async def audited_send(message: Message) -> None:
            nonlocal size
            if message["type"] == "http.response.start":
                # A 503 says the database cannot be used now: recording the call in it
                # would fail too, and turn the 503 with Retry-After into a 500.
                unavailable = message["status"] == 503
                if ctx.recorded or unavailable or not wanted(scope, message["status"]):
                    await send(message)
                    return
                held.append(message)
                return
            if not held:
                await send(message)
                return
            held.append(message)
            size += len(message.get("body", b""))
            if message.get("more_body") and size <= MAX_BODY:
                return
            await self._record(scope, ctx, held)
            for m in held:
                await send(m)
            held.clear()

        try:
            await self.app(scope, receive, audited_send)
        finally:
            _CURRENT.reset(token)

    async def _record(self, scope: Scope, ctx: AuditContext, held: list[Message]) -> None:
        status = int(held[0]["status"])
        body = b"".join(m.get("body", b"") for m in held[1:]) if status == 201 else None
        action, workspace, resource = describe(scope, body, ctx.created)
        entry = AuditEntry(
            time=utcnow(),
            principal=_clip(ctx.principal, 64),
            token_name=_clip(ctx.token_name, 63),
            workspace=_clip(workspace, 63),
            action=_clip(action, 96) or action,
            resource=_clip(resource, 255),
            outcome=outcome_of(status),
            status=status,
            source=_clip(ctx.source, 64),
        )
        ctx.recorded = True  # this append's own commit must not record the call again
        await self.append(entry)
