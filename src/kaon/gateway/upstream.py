"""A lean HTTP/1.1 client for the gateway's hop to the replicas.

Why not httpx: the gateway's budget is about a millisecond at p50 on a busy two-core box,
and the hop to a replica on loopback is the whole of its work. httpx (with httpcore and
anyio) spends a few hundred microseconds of Python per request; this client is an
`asyncio.Protocol` feeding the C parser (httptools) that uvicorn uses, plus a pool of
keep-alive connections per replica, and spends a small fraction of that. It only has to
talk to our own replicas: HTTP/1.1, no TLS, no redirects, bodies buffered (replies up to
`MAX_REPLY_BYTES`), except chunked replies, which are streamed.

Streamed replies (``Transfer-Encoding: chunked``, which is how a replica sends a generator's
output) come back as soon as their head is in, with an `UpstreamStream` to read the body
from, chunk by chunk as the replica sends it. At most `STREAM_HIGH_WATER` bytes wait in it:
above that the connection stops reading, so TCP's flow control holds the replica (and its
generator) back until the client catches up. Closing a stream before its end closes the
connection, which the replica sees as a disconnect and answers by closing the generator.

Failure semantics matter for the retry rule: `UpstreamError.retry_safe` is True when not a
single byte of the reply arrived (connection refused, or closed/reset before the status
line), so the gateway may send the request to another replica.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import httptools

from kaon.core.replicas import CHALLENGE_HEADER, HELLO_PATH, PROOF_HEADER, challenge, proves

__all__ = ["UpstreamError", "UpstreamPool", "UpstreamReply", "UpstreamStream", "MAX_REPLY_BYTES"]

MAX_REPLY_BYTES = 256 * 2**20
STREAM_HIGH_WATER = 256 * 2**10
"""Bytes of a streamed reply buffered in the gateway before it stops reading the replica."""

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
    stream: UpstreamStream | None = None  # a chunked reply: read its body from here


class UpstreamStream:
    """The body of a streamed reply, chunk by chunk, with bounded buffering.

    `next` returns the next chunk (b"" once the reply is complete); `close` must be called
    when done: it hands the connection back to the pool after a complete reply, and closes
    it otherwise. ``on_close`` callbacks run once, at `close`.
    """

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._complete = False
        self._error: UpstreamError | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._paused = False
        self._closed = False
        self._on_close: list[Callable[[bool], None]] = []

    @property
    def complete(self) -> bool:
        return self._complete and not self._chunks

    def on_close(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(complete)` when the stream is closed."""
        self._on_close.append(callback)

    # fed by the connection
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > STREAM_HIGH_WATER and not self._paused and self._conn.transport:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if not self._complete:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # read by the gateway
    async def next(self, timeout_s: float) -> bytes:
        """The next chunk, or b"" at the end; `UpstreamError` if the connection broke,
        `TimeoutError` if nothing came for `timeout_s` seconds."""
        while not self._chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            loop = asyncio.get_running_loop()
            self._wakeup = wakeup = loop.create_future()
            timer = loop.call_later(timeout_s, _time_out, wakeup)  # cheaper than asyncio.timeout
            try:
                await wakeup
            finally:
                timer.cancel()
                self._wakeup = None
        return self._pop()

    def next_ready(self) -> bytes:
        """The next chunk if one is already here, else b"" (never waits): a reader that
        fell behind passes on everything that came meanwhile in one write."""
        return self._pop() if self._chunks else b""

    @property
    def buffered(self) -> bool:
        """Whether a chunk is waiting to be read."""
        return bool(self._chunks)

    def _pop(self) -> bytes:
        data = self._chunks.popleft()
        self._size -= len(data)
        if self._paused and self._size <= STREAM_HIGH_WATER // 2 and self._conn.transport:
            self._paused = False
            self._conn.transport.resume_reading()
        return data

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        complete = self.complete
        self._conn.stream_done(complete)
        for callback in self._on_close:
            callback(complete)


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


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
        self._chunked = False
        self._stream: UpstreamStream | None = None
        self._keep_alive = False  # of the streamed reply, read when it completes
        self._timer: asyncio.TimerHandle | None = None
        self.release: Callable[[_Connection, bool], None] | None = None  # set by the pool

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
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            self._chunked = True

    def on_headers_complete(self) -> None:
        if self._head:  # a reply to HEAD has no body, whatever its Content-Length says
            self.on_message_complete()
            self.close()
            return
        status = self._parser.get_status_code()
        if self._chunked and status >= 200:  # stream it: hand the head over now
            self._reply.status = status
            self._stream = self._reply.stream = UpstreamStream(self)
            if self._timer is not None:  # from here on, `UpstreamStream.next` times out
                self._timer.cancel()
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(self._reply)

    def on_body(self, body: bytes) -> None:
        if self._stream is not None:
            self._stream._feed(body)
            return
        self._size += len(body)
        if self._size > MAX_REPLY_BYTES:
            self._fail(UpstreamError("reply from replica is too large", retry_safe=False))
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._stream is not None:
            # asked now: once the parser has moved past the message it answers False, and
            # every streamed reply would cost a new connection (a connect on the TTFT path)
            self._keep_alive = self._parser.should_keep_alive()
            self._stream._finish()
            return
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
        self._head, self._chunked, self._stream, self._keep_alive = head, False, None, False
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._timer = timer = loop.call_later(timeout_s, self._expire)
        self.transport.write(request)
        try:
            return await self._waiter
        finally:
            timer.cancel()
            self._waiter = None
            self.last_used = time.monotonic()

    def stream_done(self, complete: bool) -> None:
        """The gateway is done with the streamed reply: reuse the connection if the reply
        was read to its end, close it otherwise (the replica then stops generating)."""
        reusable = complete and not self.closed and self._keep_alive
        self._stream = None
        self.last_used = time.monotonic()
        if not reusable:
            self.close()
        if self.release is not None:
            self.release(self, reusable)

    def _expire(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())
        self.close()

    def _fail(self, error: UpstreamError) -> None:
        if self._stream is not None:
            self._stream._fail(error)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def _hello(conn: _Connection, host: str, port: int, key: str, timeout_s: float) -> None:
    """Ask the process on a new connection to prove it holds the replica's `key`
    (`kaon.core.replicas.HELLO_PATH`): once per connection, not per request, since
    connections are kept alive. One that cannot is closed, and the request may go to
    another replica (nothing of it was sent)."""
    asked = challenge()
    request = b"GET %s HTTP/1.1\r\nhost: %s:%d\r\n%s: %s\r\ncontent-length: 0\r\n\r\n" % (
        HELLO_PATH.encode(), host.encode(), port, CHALLENGE_HEADER.encode(), asked.encode()
    )  # fmt: skip
    try:
        reply = await conn.exchange(request, timeout_s)
    except TimeoutError:
        raise UpstreamError("replica did not answer its challenge", retry_safe=True) from None
    except UpstreamError as exc:
        raise UpstreamError(f"replica's challenge failed: {exc}", retry_safe=True) from exc
    answer = next((v for k, v in reply.headers if k == _PROOF), None)
    if reply.status != 200 or not proves(key, asked, answer) or conn.closed:
        conn.close()
        raise UpstreamError(
            f"the process on {host}:{port} is not the replica (it cannot prove its key)",
            retry_safe=True,
        )


_PROOF = PROOF_HEADER.encode()


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
        key: str | None = None,
    ) -> UpstreamReply:
        """Send one request; raises `UpstreamError`, or `TimeoutError` when no full reply
        came within `timeout_s` seconds (connecting included). Cancelling it is safe too: the
        connection is then closed rather than reused. With the replica's `key`, a new
        connection is used only once the process on it proved it holds the key (`_hello`),
        so neither the request nor the credential in `headers` reaches another process."""
        deadline = time.monotonic() + timeout_s
        head = b"%s %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-length: %d\r\n%s\r\n" % (
            method.encode(), target, host.encode(), port, len(body), headers
        )  # fmt: skip
        conn = await self._connection(host, port, timeout_s, key)
        ok = False
        try:
            remaining = max(0.0, deadline - time.monotonic())
            reply = await conn.exchange(head + body, remaining, head=method == "HEAD")
            ok = True
            if reply.stream is not None:  # the connection comes back when the stream closes
                conn.release = lambda c, reusable: self._put(host, port, c) if reusable else None
            return reply
        finally:
            if ok and reply.stream is not None:
                pass
            elif ok and not conn.closed:
                self._put(host, port, conn)
            else:
                conn.close()

    async def _connection(
        self, host: str, port: int, timeout_s: float, key: str | None = None
    ) -> _Connection:
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
        if key is not None:
            await _hello(conn, host, port, key, timeout_s)
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
