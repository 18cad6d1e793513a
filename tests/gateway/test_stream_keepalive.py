"""A streamed reply read to its end gives its connection back to the pool: the next request
to the replica reuses it instead of paying a connect (and the replica an accept) on its
time to first token. One that is closed early is not reused (the replica must see the
disconnect). Real sockets on loopback, a replica that answers in chunked transfer."""

from __future__ import annotations

import asyncio

from kaon.gateway.upstream import UpstreamPool

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


class ChunkedReplica(asyncio.Protocol):
    """Answers every request with three chunks; counts the connections it accepted."""

    accepted = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        type(self).accepted += 1
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            chunks = b"".join(b"5\r\ntok%02d\r\n" % i for i in range(3))
            self.transport.write(HEAD + chunks + b"0\r\n\r\n")


async def _read_all(pool: UpstreamPool, port: int) -> bytes:
    reply = await pool.request("127.0.0.1", port, "POST", b"/v1/completions", b"", b"{}", 5.0)
    assert reply.status == 200 and reply.stream is not None
    body = b""
    while chunk := await reply.stream.next(5.0):
        body += chunk
    reply.stream.close()
    return body


async def test_streams_read_to_the_end_reuse_one_connection() -> None:
    ChunkedReplica.accepted = 0
    server = await asyncio.get_running_loop().create_server(ChunkedReplica, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool()
    try:
        for _ in range(5):
            assert await _read_all(pool, port) == b"tok00tok01tok02"
        assert ChunkedReplica.accepted == 1

        reply = await pool.request("127.0.0.1", port, "POST", b"/", b"", b"{}", 5.0)
        assert reply.stream is not None
        assert await reply.stream.next(5.0)
        reply.stream.close()  # before the end: that connection must not serve again
        assert await _read_all(pool, port) == b"tok00tok01tok02"
        assert ChunkedReplica.accepted == 2
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
