"""The gateway's own HTTP/1.1 server: an `asyncio.Protocol` on httptools' request parser.

Why not uvicorn here: the gateway does little per request (a lookup, a token hash, a hop
to a replica), so the server's per-request overhead is a large share of it. Uvicorn builds
an ASGI scope, wraps the exchange in receive/send coroutines and checks every response
header; this server hands `Gateway` the parsed request directly and writes the answer in
one call, which cuts the gateway's CPU per request substantially (see docs/serving.md).
The same `Gateway` also runs as an ASGI app under any server.

Behaviour kept from a general-purpose server: keep-alive (and ``Connection: close``),
pipelined requests answered in order (held in a small backlog while one is handled; reading
goes on, so a client that leaves, or half-closes, cancels its request at once),
``Expect: 100-continue``, chunked request bodies, idle connections closed after
`KEEP_ALIVE_S`, a 400 for unparseable requests, and a graceful stop that lets in-flight
requests finish.

Slow clients cannot hold connections: a new connection, or a request once its first byte
is in, has `HEADER_TIMEOUT_S` for its request line and headers, and then `BODY_TIMEOUT_S`
for its body, however the bytes trickle in (a byte now and then does not extend either);
past that it gets a 408 and is closed. A head over `MAX_HEAD_BYTES` gets a 431.

The authorization and body-limit checks happen as soon as the headers
are in, so an unauthenticated caller never gets to upload a body.

A streamed reply goes out with chunked transfer, each chunk written as it arrives from the
replica; the response head leaves in the same write as the first chunk (and the final empty
chunk in the same write as the last, when the replica's reply has ended by then): a reply
of one chunk is one write, not three, and the client never wakes for a head alone. Writing
waits while the client's socket buffer is over asyncio's high-water mark
(`pause_writing`/`resume_writing`), which in turn stops reading from the replica, so a slow
client costs a bounded amount of memory. A client that leaves cancels the request's task,
which closes the connection to the replica.

With a certificate (`GatewayServer`'s `tls`), the same server speaks HTTPS only: asyncio's
TLS transport sits under the same protocol, so everything above holds over TLS. A TLS
handshake gets `HEADER_TIMEOUT_S` too (a client that stalls it never reaches the
request's deadline, which starts once the handshake is done). The hop to replicas stays
plain HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from http import HTTPStatus
from urllib.parse import unquote

import httptools

from kaon.gateway.app import Gateway, Incoming
from kaon.gateway.routing import DeploymentState
from kaon.gateway.upstream import UpstreamReply, UpstreamStream

__all__ = ["BODY_TIMEOUT_S", "HEADER_TIMEOUT_S", "KEEP_ALIVE_S", "MAX_HEAD_BYTES", "GatewayServer"]

logger = logging.getLogger("kaon.gateway")

KEEP_ALIVE_S = 75.0
HEADER_TIMEOUT_S = 10.0  # a new connection or a begun request: request line and headers
BODY_TIMEOUT_S = 60.0  # then the whole body
MAX_HEAD_BYTES = 64 * 2**10  # request line and headers together
MAX_CONNECTIONS_PER_ADDRESS = 512
"""Open connections one peer address may hold: the slow ones are closed by the deadlines,
but a client that keeps many fast ones open could still take every file descriptor.
Behind a proxy every client has the proxy's address: raise it there."""
_TOO_MANY = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: 56\r\n\r\n"
    b'{"detail":"too many open connections from your address"}'
)
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-length: 0\r\nconnection: close\r\n\r\n"
)
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BACKLOG_LIMIT = 64 * 2**10  # pipelined bytes held while a request is answered
_LAST_CHUNK = b"0\r\n\r\n"


class _Connection(asyncio.Protocol):
    """One client connection; requests are handled one at a time, in order."""

    def __init__(self, server: GatewayServer) -> None:
        self._server = server
        self._gateway = server.gateway
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._req: Incoming | None = None
        self._admitted: DeploymentState | UpstreamReply | None = None
        self._too_large = False
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._writable: asyncio.Future[None] | None = None  # set while writing is paused
        self._holding = False  # a request is being answered
        self._backlog: list[bytes] = []  # bytes that came meanwhile (a pipelined request)
        self._backlog_size = 0
        self._deadline: asyncio.TimerHandle | None = None  # for the request being read
        self._in_body = False
        self._head_size = 0
        self._address: str | None = None  # the peer, while it counts towards its cap

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._address = self._peer()
        if not self._server.admit_connection(self._address):
            self._address = None  # not counted
            transport.write(_TOO_MANY)  # type: ignore[attr-defined]
            transport.close()
            return
        self._server.connections.add(self)
        self._arm_deadline(self._server.header_timeout_s)  # not the keep-alive: nothing yet

    def data_received(self, data: bytes) -> None:
        self._disarm_idle()
        if self._holding:  # a request is being answered: keep the next one's bytes for later
            self._backlog.append(data)
            self._backlog_size += len(data)
            if self._backlog_size > _BACKLOG_LIMIT and self._transport is not None:
                self._transport.pause_reading()  # enough: the rest waits in the socket
            return
        if not self._in_body:
            self._head_size += len(data)
            if self._head_size > MAX_HEAD_BYTES:  # counted before httptools buffers it
                self._fail(_HEAD_TOO_LARGE)
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail()
        except httptools.HttpParserError:
            self._fail()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.release_connection(self._address)
        self._server.connections.discard(self)
        self._disarm_idle()
        self._disarm_deadline()
        self.resume_writing()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the caller left: give the replica slot back
        self._transport = None

    # --- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._size = b"", [], [], 0
        self._too_large = False
        if self._deadline is None:  # a kept-alive connection's next request begins
            self._arm_deadline(self._server.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_body = True
        self._arm_deadline(self._server.body_timeout_s)
        parsed = httptools.parse_url(self._url)
        query = parsed.query
        self._req = Incoming(
            method=self._parser.get_method().decode(),
            path=unquote(parsed.path.decode("latin-1")),
            target=parsed.path + b"?" + query if query else parsed.path,
            headers=self._headers,
            client=self._peer(),
        )
        self._admitted = admitted = self._gateway.admit(self._req)
        if isinstance(admitted, DeploymentState):
            declared = _content_length(self._headers)
            if declared is not None and declared > admitted.route.max_body_bytes:
                self._too_large = True
            elif _expects_continue(self._headers) and self._transport is not None:
                self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._too_large or not isinstance(self._admitted, DeploymentState):
            return  # refused already: drop the bytes rather than buffer them
        self._size += len(body)
        if self._size > self._admitted.route.max_body_bytes:
            self._too_large = True
            self._body = []
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        assert self._req is not None and self._admitted is not None
        self._disarm_deadline()
        self._in_body, self._head_size = False, 0
        keep_alive = self._parser.should_keep_alive()
        # one request at a time: what arrives meanwhile waits in `_backlog`. Reading goes on
        # (rather than pausing the transport) so that a client that leaves is noticed at
        # once, and its request cancelled, slot and replica work included.
        self._holding = True
        work = self._answer(self._req, self._admitted, b"".join(self._body), keep_alive)
        self._task = asyncio.get_running_loop().create_task(work)

    # --- answering ----------------------------------------------------------------------

    async def _answer(
        self, req: Incoming, admitted: DeploymentState | UpstreamReply, body: bytes, keep: bool
    ) -> None:
        if isinstance(admitted, UpstreamReply):
            reply = admitted
        elif self._too_large:
            reply = self._gateway.too_large(admitted, req)
        else:
            reply = await self._gateway.forward(admitted, req, body)
        transport = self._transport
        if transport is None or transport.is_closing():
            if reply.stream is not None:
                reply.stream.close()
            return
        if reply.stream is not None and isinstance(admitted, DeploymentState):
            if not await self._stream(admitted, req, reply, reply.stream, keep):
                transport.close()  # cut short: no final chunk, the client sees it broke off
                return
        else:
            transport.write(_encode(reply, keep))
        if not keep or self._server.stopping:
            transport.close()
            return
        self._arm_idle()
        self._holding = False
        backlog, self._backlog, self._backlog_size = self._backlog, [], 0
        transport.resume_reading()  # if the backlog had paused it
        if backlog:
            self.data_received(b"".join(backlog))

    async def _stream(
        self,
        state: DeploymentState,
        req: Incoming,
        reply: UpstreamReply,
        stream: UpstreamStream,
        keep: bool,
    ) -> bool:
        """Each chunk as it comes (chunked transfer); True if it went through.

        The head waits for the first chunk and leaves with it in one write: the client
        is woken once, with its first token, rather than for the head and then again
        (when the replica sends them apart).
        A chunk after which the replica's reply is already complete takes the final
        empty chunk along. Nothing is held back to wait for more."""
        transport = self._transport
        assert transport is not None
        pending = [_stream_head(reply, keep)]  # written with the first chunk
        ended = False

        async def write(chunk: bytes) -> None:
            nonlocal ended
            if transport.is_closing():
                raise ConnectionResetError("client left")
            pending.append(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if stream.complete:  # the replica is done: the end goes in the same write
                pending.append(_LAST_CHUNK)
                ended = True
            transport.write(b"".join(pending))
            pending.clear()
            if self._writable is not None:  # the client reads slowly: wait for it
                await self._writable

        try:
            done = await self._gateway.relay(state, req, stream, write)
        except ConnectionResetError:
            return False
        if done and not ended and not transport.is_closing():
            pending.append(_LAST_CHUNK)  # the head too, for an empty body
            transport.write(b"".join(pending))
        elif not done and pending and not transport.is_closing():
            transport.write(pending[0])  # broke off before any chunk: the head, then cut
        return done

    def _fail(self, answer: bytes = _BAD_REQUEST) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(answer)
            self._transport.close()

    def _arm_deadline(self, seconds: float) -> None:
        self._disarm_deadline()
        self._deadline = asyncio.get_running_loop().call_later(seconds, self._too_slow)

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        """The request being read is past its deadline: 408 and close. While one is being
        answered (the next one began in the same packet), look again later."""
        self._deadline = None
        if self._holding:
            self._arm_deadline(self._server.header_timeout_s)
            return
        self._fail(_TIMED_OUT)

    def _peer(self) -> str | None:
        peer = self._transport.get_extra_info("peername") if self._transport else None
        return str(peer[0]) if peer else None

    def _arm_idle(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(KEEP_ALIVE_S, self.close_if_idle)

    def _disarm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The request being answered, if any."""
        return self._task if self._task is not None and not self._task.done() else None

    @property
    def busy(self) -> bool:
        return self.task is not None

    def close_if_idle(self) -> None:
        if not self.busy:
            self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _stream_head(reply: UpstreamReply, keep_alive: bool) -> bytes:
    head = [
        b"HTTP/1.1 %d %s\r\n" % (reply.status, _REASONS.get(reply.status, b"Unknown")),
        *(b"%s: %s\r\n" % item for item in reply.headers),
        b"transfer-encoding: chunked\r\n",
    ]
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head)


def _encode(reply: UpstreamReply, keep_alive: bool) -> bytes:
    head = [
        b"HTTP/1.1 %d %s\r\n" % (reply.status, _REASONS.get(reply.status, b"Unknown")),
        *(b"%s: %s\r\n" % item for item in reply.headers),
        b"content-length: %d\r\n" % len(reply.body),
    ]
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + reply.body


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _expects_continue(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(n == b"expect" and v.lower() == b"100-continue" for n, v in headers)


class GatewayServer:
    """Runs a `Gateway` on host:port until `stop` (or SIGTERM/SIGINT with `run`); over
    HTTPS only when given `tls` (`kaon.core.tls.server_context`)."""

    def __init__(
        self,
        gateway: Gateway,
        host: str = "127.0.0.1",
        port: int = 8471,
        *,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        body_timeout_s: float = BODY_TIMEOUT_S,
        tls: ssl.SSLContext | None = None,
        max_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
    ) -> None:
        self.gateway = gateway
        self.max_per_address = max_per_address
        self._per_address: dict[str, int] = {}
        self.host = host
        self.port = port
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.tls = tls
        self.connections: set[_Connection] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._stopped = asyncio.Event()

    def admit_connection(self, address: str | None) -> bool:
        """Count a new connection from `address`; False (not counted) past the cap."""
        if address is None:
            return True
        held = self._per_address.get(address, 0)
        if held >= self.max_per_address:
            logger.warning("refused a connection from %s: it holds %d already", address, held)
            return False
        self._per_address[address] = held + 1
        return True

    def release_connection(self, address: str | None) -> None:
        if address is None:
            return
        held = self._per_address.get(address, 0) - 1
        if held > 0:
            self._per_address[address] = held
        else:
            self._per_address.pop(address, None)  # the map holds only live addresses

    async def start(self) -> None:
        """Start the gateway's tasks and listen; `port` 0 picks a free port."""
        self._stopped = asyncio.Event()
        await self.gateway.startup()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            self.host,
            self.port,
            backlog=4096,
            reuse_address=True,
            ssl=self.tls,
            # a stalled handshake is closed like a stalled head (no 408: no TLS to say it in)
            ssl_handshake_timeout=self.header_timeout_s if self.tls is not None else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if self.tls is not None else "http"
        logger.info("gateway listening on %s://%s:%d", scheme, self.host, self.port)

    async def serve(self, drain_s: float = 30.0) -> None:
        """Start, then serve until `stop()`; in-flight requests get `drain_s` to finish."""
        await self.start()
        await self._stopped.wait()
        self.stopping = True
        assert self._server is not None
        self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        in_flight = [conn.task for conn in self.connections if conn.task is not None]
        if in_flight:
            await asyncio.wait(in_flight, timeout=drain_s)
        for conn in list(self.connections):
            conn.close()
        await self.gateway.shutdown()

    def stop(self) -> None:
        self._stopped.set()

    def run(self, install_signals: bool = True) -> None:
        """Serve on a new uvloop event loop until SIGTERM or SIGINT."""
        import uvloop

        async def main() -> None:
            if install_signals:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self.stop)
            await self.serve()

        uvloop.run(main())
