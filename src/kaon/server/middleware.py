"""ASGI middleware of the control plane."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413. Paths for which `exempt` is true
    are uploads that their service streams to disk under a limit of its own."""

    def __init__(self, app: ASGIApp, limit: int, exempt: Callable[[str], bool]) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _too_large(send, self.limit)
            return
        seen = 0
        over = False

        async def limited() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge
            return message

        async def checked_send(message: Message) -> None:
            # FastAPI answers 400 to any error while it reads a body, _TooLarge included:
            # once the body went over the limit, whatever the app answers becomes our 413.
            if not over:
                await send(message)
            elif message["type"] == "http.response.start":
                await _too_large(send, self.limit)

        try:
            await self.app(scope, limited, checked_send)
        except _TooLarge:
            await _too_large(send, self.limit)


class RefuseNul:
    """Refuse a path or query that holds a NUL character with 422, before any route sees
    it. PostgreSQL cannot store or even compare text with NUL in it (the query fails, a
    500), SQLite and the file system cut a name at it; no name Kaon gives anything holds
    one, so such a request can only be a probe."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            where = _nul_in(scope)
            if where is not None:
                await _refuse_nul(send, where)
                return
        await self.app(scope, receive, send)


def _nul_in(scope: Scope) -> str | None:
    if "\x00" in scope.get("path", ""):
        return "path"
    query = scope.get("query_string", b"").lower()
    if b"%00" in query or b"\x00" in query:
        return "query"
    return None


async def _refuse_nul(send: Callable[[Message], Awaitable[None]], where: str) -> None:
    detail = {
        "detail": f"{where}: must not contain NUL characters",
        "error": "InvalidSpecError",
        "field": where,
        "errors": [{"field": where, "message": "must not contain NUL characters"}],
    }
    await _answer(send, 422, detail)


class _TooLarge(Exception):
    pass


async def _too_large(send: Callable[[Message], Awaitable[None]], limit: int) -> None:
    detail = {"detail": f"request body over {limit} bytes", "error": "PayloadTooLargeError"}
    await _answer(send, 413, detail)


async def _answer(
    send: Callable[[Message], Awaitable[None]], status: int, detail: Mapping[str, object]
) -> None:
    body = json.dumps(detail).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
