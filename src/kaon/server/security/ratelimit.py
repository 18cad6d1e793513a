"""Slowing down token guessing: a source address with too many failed authentications
gets 429 with ``Retry-After`` for the rest of its window (`kaon.core.ratelimit`).

An ASGI middleware that needs no database: `authenticate` marks the request when the
bearer token it was given is missing, unknown, revoked or expired (`note_auth_failure`),
and the middleware counts that against the caller's address; a request that authenticates
writes nothing. Job-token routes are not counted: a worker of a replaced attempt calling
back with its old token is not a guesser, and on one machine it shares 127.0.0.1 with
everyone. A blocked source is refused before any route runs, whatever token it sends then,
while a caller from another address is not affected. Only ``/api/`` is guarded: the
health probes and the console's static files take no token.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from kaon.core.ratelimit import FailureLimiter

logger = logging.getLogger("kaon.server.security")


@dataclass
class _Attempt:
    failed: bool = False


_attempt: ContextVar[_Attempt | None] = ContextVar("kaon_auth_attempt", default=None)


def note_auth_failure() -> None:
    """The request being handled presented no valid API token: count it."""
    attempt = _attempt.get()
    if attempt is not None:
        attempt.failed = True


class AuthFailureLimit:
    """Refuse a source that failed authentication `limiter.limit` times in a window."""

    def __init__(self, app: ASGIApp, limiter: FailureLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        source = str(client[0]) if client else None
        wait = self.limiter.retry_after(source, time.monotonic())
        if wait is not None:
            await _too_many(send, wait)
            return

        attempt = _Attempt()
        token = _attempt.set(attempt)
        try:
            await self.app(scope, receive, send)
        finally:
            _attempt.reset(token)
            if attempt.failed and self.limiter.failed(source, time.monotonic()):
                logger.warning(
                    "%d failed authentications from %s within %g s: refusing it for now",
                    self.limiter.limit,
                    source,
                    self.limiter.window_s,
                )


async def _too_many(send: Send, wait: int) -> None:
    detail = {
        "detail": f"too many failed authentications from this address; retry in {wait} s",
        "error": "LimitExceededError",
        "limit": "auth_failures",
    }
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [(b"content-type", b"application/json"), (b"retry-after", b"%d" % wait)],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(detail).encode()})
