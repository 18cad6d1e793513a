"""Why the gateway has its own upstream client: CPU per request of httpx.AsyncClient vs
`kaon.gateway.upstream.UpstreamPool`, 16 concurrent requests to one replica on loopback.

    .venv/bin/python benchmarks/serve_upstream_client.py

The client's CPU time (``time.process_time``) per request is what the gateway would spend
on the hop to the replica; the replica's own cost is the same for both.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import uvloop

from kaon.gateway.upstream import UpstreamPool

HERE = Path(__file__).resolve().parent
N = 2000
CONCURRENCY = 16
BODY = b'{"x": [[0.5, -1.0]]}'


async def lean(port: int) -> None:
    pool = UpstreamPool()
    headers = b"content-type: application/json\r\n"

    async def worker(n: int) -> None:
        for _ in range(n):
            reply = await pool.request("127.0.0.1", port, "POST", b"/predict", headers, BODY)
            assert reply.status == 200

    await asyncio.gather(*(worker(N // CONCURRENCY) for _ in range(CONCURRENCY)))
    pool.close()


async def with_httpx(port: int) -> None:
    limits = httpx.Limits(max_keepalive_connections=2 * CONCURRENCY)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as client:

        async def worker(n: int) -> None:
            for _ in range(n):
                r = await client.post("/predict", content=BODY)
                assert r.status_code == 200

        await asyncio.gather(*(worker(N // CONCURRENCY) for _ in range(CONCURRENCY)))


def main() -> None:
    sys.path.insert(0, str(HERE))
    import serve_compare as sc

    clients: dict[str, Callable[[int], Coroutine[Any, Any, None]]] = {
        "lean": lean,
        "httpx": with_httpx,
    }
    with tempfile.TemporaryDirectory() as tmp:
        replica, base = sc.start_replica(Path(tmp), "serve_compare:AsyncMLPService")
        port = int(base.rsplit(":", 1)[1])
        try:
            for round_ in range(3):
                for name, client in clients.items():
                    cpu, wall = time.process_time(), time.perf_counter()
                    uvloop.run(client(port))
                    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                    print(
                        f"{name:6} round {round_}: client cpu {cpu / N * 1e6:5.0f} us/req, "
                        f"{N / wall:5.0f} req/s"
                    )
        finally:
            sc.stop(replica)


if __name__ == "__main__":
    main()
