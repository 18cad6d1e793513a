"""Streamed replies and raw requests: what a handler uses when JSON in, JSON out is not enough.

A handler that is a generator (``def`` with ``yield``, or ``async def`` with ``yield``) is
streamed: each item goes to the client as soon as it is yielded, which is what token-by-token
generation needs. The replica frames items by what the client asked for:

- ``Accept: text/event-stream``: server-sent events, one ``data:`` event per item;
- otherwise chunked transfer, an item per chunk: ``str`` as UTF-8, ``bytes`` as they are,
  anything else as one line of JSON (NDJSON).

A handler may also return a `Response` to choose its status, headers and body itself (an API
with its own error format, such as OpenAI's), with ``stream`` set to an iterator whose items
are written as they are (already framed). One parameter typed `Request` gives a handler the
raw request (method, path, query, headers, body) instead of a validated body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Request", "Response", "sse_event", "wants_events"]


async def _never() -> None:
    """A client that is never seen to leave (a `Request` built outside a replica)."""
    await asyncio.Event().wait()


@dataclass(frozen=True)
class Request:
    """The raw request, for a handler that parses its body itself."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    disconnected: Callable[[], Coroutine[Any, Any, None]] = field(
        default=_never, repr=False, compare=False
    )
    """Returns once the client has gone: an ``async def`` handler doing long work can race
    its work against it and stop early (streams need not: the replica closes them)."""

    def json(self) -> Any:
        """The body as JSON; raises `ValueError` when it is not."""
        return json.loads(self.body or b"null")


@dataclass
class Response:
    """A reply chosen by the handler: status, headers and a body, or a stream.

    ``body``: bytes and str are sent as they are; anything else as JSON. ``stream``: an
    iterator (sync or async) of bytes or str, written chunk by chunk as it yields, with
    ``media_type`` as its content type; the body is ignored then.
    """

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"
    stream: Iterator[bytes | str] | AsyncIterator[bytes | str] | None = None

    def encoded_body(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


def wants_events(accept: bytes | None) -> bool:
    """Whether an ``Accept`` header asks for server-sent events."""
    return accept is not None and b"text/event-stream" in accept


def sse_event(payload: bytes) -> bytes:
    """One server-sent event carrying `payload` (a line break inside starts a new ``data:``
    line, as the format requires, so any text survives the trip)."""
    if b"\n" not in payload and b"\r" not in payload:
        return b"data: " + payload + b"\n\n"
    lines = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
