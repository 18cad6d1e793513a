"""Real servers on loopback for the serving and gateway tests.

`running(app)` serves any ASGI app with uvicorn in a thread on a free port (the way the
replica and gateway run in production, minus the process); `spawn_replica` starts the
real replica process, ``python -m kaon.serving.runtime``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """`app` under uvicorn (uvloop, httptools) in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, loop="uvloop", http="httptools", log_level="warning", lifespan="on",
        timeout_graceful_shutdown=1,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_ready(
    url: str, timeout: float = 20.0, path: str = "/ready", headers: dict[str, str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + path, headers=headers, timeout=1).status_code == 200:
                return
        time.sleep(0.02)
    raise TimeoutError(f"{url}{path} not ready after {timeout} s")


@contextlib.contextmanager
def spawn_replica(
    service: str, *args: str, env: dict[str, str] | None = None, wait: bool = True
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real replica process serving `service` from this folder; yields (process, URL)."""
    port = free_port()
    cmd = [sys.executable, "-m", "kaon.serving.runtime", "--service", service,
           "--path", str(HERE), "--port", str(port), *args]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        if wait:
            wait_ready(url)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
