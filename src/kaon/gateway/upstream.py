"""A lean HTTP/1.1 client for the gateway's hop to the replicas.

Why not httpx: the gateway's budget is about a millisecond at p50 on a busy two-core box,
and the hop to a replica on loopback is the whole of its work. httpx (with httpcore and
anyio) spends a few hundred microseconds of Python per request; this client is an
`asyncio.Protocol` feeding the C parser (httptools) that uvicorn uses, plus a pool of
keep-alive connections per replica, and spends a small fraction of that. It only has to
talk to our own replicas: HTTP/1.1, no TLS, no redirects, bodies buffered (replies up to
`MAX_REPLY_BYTES`).

Failure semantics matter for the retry rule: `UpstreamError.retry_safe` is True when not a
single byte of the reply arrived (connection refused, or closed/reset before the status
line), so the gateway may send the request to another replica.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import cast

import httptools

__all__ = ["UpstreamError", "UpstreamPool", "UpstreamReply", "MAX_REPLY_BYTES"]

MAX_REPLY_BYTES = 256 * 2**20

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
     b"trailer", b"transfer-encoding", b"upgrade", b"content-length", b"date", b"server"}
)  # fmt: skip


class UpstreamError(Exception):
    """The replica could not be reached, or the connection broke during the exchange."""

    def __init__(self, message: str, retry_safe: bool) -> None:
        super().__init__(message)
        self.retry_safe = retry_safe


@dataclass
class UpstreamReply:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.last_used = time.monotonic()
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamReply] | None = None
        self._reply = UpstreamReply()
        self._chunks: list[bytes] = []
        self._size = 0
        self._got_bytes = False
        self._head = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"bad reply from replica: {exc}", retry_safe=False))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        why = "reset" if exc else "closed"
        self._fail(UpstreamError(f"replica {why} the connection", retry_safe=not self._got_bytes))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in _HOP_BY_HOP:
            self._reply.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._head:  # a reply to HEAD has no body, whatever its Content-Length says
            self.on_message_complete()
            self.close()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_REPLY_BYTES:
            self._fail(UpstreamError("reply from replica is too large", retry_safe=False))
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        reply = self._reply
        reply.status = self._parser.get_status_code()
        reply.body = b"".join(self._chunks)
        if not self._parser.should_keep_alive():
            self.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    # use
    async def exchange(
        self, request: bytes, timeout_s: float, head: bool = False
    ) -> UpstreamReply:
        """Send `request`, wait for the whole reply; `TimeoutError` after `timeout_s` seconds.

        The deadline is a plain timer on the loop (cheaper than `asyncio.timeout`, which
        matters at this rate); on expiry the connection is closed, never reused."""
        assert self.transport is not None
        self._reply, self._chunks, self._size, self._got_bytes = UpstreamReply(), [], 0, False
        self._head = head
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(timeout_s, self._expire)
        self.transport.write(request)
        try:
            return await self._waiter
        finally:
            timer.cancel()
            self._waiter = None
            self.last_used = time.monotonic()

    def _expire(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())
        self.close()

    def _fail(self, error: UpstreamError) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Keep-alive connections to every replica, reused LIFO (the warmest first).

    Idle connections older than `idle_timeout_s` are dropped, staying under the replica's
    own keep-alive timeout (75 s) so the replica rarely closes one we are about to use.
    """

    def __init__(self, max_idle_per_replica: int = 512, idle_timeout_s: float = 30.0) -> None:
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._max_idle = max_idle_per_replica
        self._idle_timeout_s = idle_timeout_s

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: bytes,
        headers: bytes,
        body: bytes,
        timeout_s: float = 300.0,
    ) -> UpstreamReply:
        """Send one request; raises `UpstreamError`, or `TimeoutError` when no full reply
        came within `timeout_s` seconds (connecting included). Cancelling it is safe too: the
        connection is then closed rather than reused."""
        deadline = time.monotonic() + timeout_s
        head = b"%s %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-length: %d\r\n%s\r\n" % (
            method.encode(), target, host.encode(), port, len(body), headers
        )  # fmt: skip
        conn = await self._connection(host, port, timeout_s)
        ok = False
        try:
            remaining = max(0.0, deadline - time.monotonic())
            reply = await conn.exchange(head + body, remaining, head=method == "HEAD")
            ok = True
            return reply
        finally:
            if ok and not conn.closed:
                self._put(host, port, conn)
            else:
                conn.close()

    async def _connection(self, host: str, port: int, timeout_s: float) -> _Connection:
        idle = self._idle.get((host, port))
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.last_used < self._idle_timeout_s:
                return conn
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            connecting = loop.create_connection(_Connection, host, port)
            _, conn = await asyncio.wait_for(connecting, timeout_s)
        except (OSError, TimeoutError) as exc:
            why = exc or "timed out"
            raise UpstreamError(f"cannot connect to replica: {why}", retry_safe=True) from exc
        return conn

    def _put(self, host: str, port: int, conn: _Connection) -> None:
        idle = self._idle.setdefault((host, port), deque())
        if len(idle) >= self._max_idle:
            conn.close()
            return
        idle.append(conn)

    def forget(self, host: str, port: int) -> None:
        """Close the idle connections of a replica that left or failed."""
        for conn in self._idle.pop((host, port), ()):
            conn.close()

    def close(self) -> None:
        for key in list(self._idle):
            self.forget(*key)
