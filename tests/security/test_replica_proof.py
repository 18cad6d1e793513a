"""A replica proves it holds its credential before anything is sent to it.

When a replica's process ends, a process of another workspace on the node may bind its
port before the route table drops it. That process must receive neither the requests
meant for the replica nor its credential: the gateway's upstream client and the control
plane's health probes first send a challenge (no credential), and go on only when the
answer proves the key (`kaon.core.replicas.HELLO_PATH`).

Against real processes on loopback: a replica (`python -m kaon.serving.runtime` with its
key) and a squatter (an HTTP server that answers 200 to everything and records what it
was sent), both behind a real gateway process with a static route table.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from kaon.core.deployments import HealthCheck
from kaon.core.gateway import Route, RouteTable
from kaon.core.replicas import (
    CHALLENGE_HEADER,
    HELLO_PATH,
    PROOF_HEADER,
    REPLICA_KEY_HEADER,
    proof,
    proves,
)
from kaon.core.tokens import hash_token
from kaon.gateway.upstream import UpstreamError, UpstreamPool
from kaon.server.reconcilers.probes import ProbeTarget, probe_all
from tests.conftest import free_port

KEY = "krep_proof-test-key"
TOKEN = "kaon_replica-proof-caller"
SECRET_BODY = b'{"x": "meant for the replica only"}'
SERVICE = """
import kaon


class Echo(kaon.Service):
    @kaon.handler
    def echo(self, x: str) -> dict:
        return {"x": x}
"""


class _Squatter(BaseHTTPRequestHandler):
    """Took a replica's port: answers 200 to anything, and keeps what it was sent."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers.get("content-length", 0))))

    def _answer(self, body: bytes) -> None:
        _Squatter.seen.append((self.command, self.path, dict(self.headers.items()), body))
        self.send_response(200)
        self.send_header(PROOF_HEADER, "0" * 64)  # a guess
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def squatter() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Squatter)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _wait(url: str, proc: subprocess.Popen[bytes], headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the process ended before it answered"
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


def _spawn(args: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], env={**os.environ, **env}, stdout=out, stderr=out, cwd=cwd
        )


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("replica")
    (folder / "echo_service.py").write_text(SERVICE)
    port = free_port()
    args = ["-m", "kaon.serving.runtime", "--service", "echo_service:Echo", "--port", str(port)]
    args += ["--path", str(folder)]
    proc = _spawn(args, folder / "replica.log", {"KAON_REPLICA_KEY": KEY}, folder)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/ready", proc, {REPLICA_KEY_HEADER: KEY})
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def gateway(
    replica: str, squatter: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Two deployments: ``real`` on the replica, ``taken`` on a port the squatter holds."""
    folder = tmp_path_factory.mktemp("gateway")
    routes = [
        Route(name=name, replicas=[url], token_hashes=[hash_token(TOKEN)], replica_keys={url: KEY})
        for name, url in (("real", replica), ("taken", squatter))
    ]
    table = folder / "routes.json"
    table.write_text(RouteTable(version=1, routes=routes).model_dump_json())
    port = free_port()
    args = ["-m", "kaon.gateway", "--routes", str(table), "--port", str(port)]
    proc = _spawn(args, folder / "gateway.log", {}, folder)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/healthz", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _sent_the_key_or_body() -> list[tuple[str, str]]:
    return [
        (method, path)
        for method, path, headers, body in _Squatter.seen
        if REPLICA_KEY_HEADER in {k.lower() for k in headers} or SECRET_BODY in body
    ]


class TestTheReplica:
    def test_answers_a_challenge_with_its_proof_and_nothing_else_without_its_key(
        self, replica: str
    ) -> None:
        answer = httpx.get(f"{replica}{HELLO_PATH}", headers={CHALLENGE_HEADER: "abc123"})
        assert answer.status_code == 200
        assert answer.headers[PROOF_HEADER] == proof(KEY, "abc123")
        assert proves(KEY, "abc123", answer.headers[PROOF_HEADER])
        assert not proves("another-key", "abc123", answer.headers[PROOF_HEADER])
        assert httpx.get(f"{replica}{HELLO_PATH}").status_code == 400  # no challenge
        too_long = {CHALLENGE_HEADER: "a" * 65}
        assert httpx.get(f"{replica}{HELLO_PATH}", headers=too_long).status_code == 400
        assert httpx.post(f"{replica}/echo", json={"x": "hi"}).status_code == 403


class TestTheGateway:
    def test_forwards_to_a_replica_that_proves_its_key(self, gateway: str) -> None:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        answer = httpx.post(f"{gateway}/real/echo", content=SECRET_BODY, headers=auth)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"x": "meant for the replica only"}

    def test_sends_nothing_to_a_process_that_took_a_replicas_port(self, gateway: str) -> None:
        _Squatter.seen.clear()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        answer = httpx.post(f"{gateway}/taken/echo", content=SECRET_BODY, headers=auth)
        assert answer.status_code in (502, 503), answer.text
        assert _Squatter.seen, "the gateway never asked the squatter to prove itself"
        assert all(path == HELLO_PATH for _, path, _, _ in _Squatter.seen)
        assert _sent_the_key_or_body() == []

    def test_the_upstream_client_refuses_it_before_sending(self, squatter: str) -> None:
        _Squatter.seen.clear()
        port = int(squatter.rsplit(":", 1)[1])
        key_line = f"{REPLICA_KEY_HEADER}: {KEY}\r\n".encode()

        async def send() -> None:
            pool = UpstreamPool()
            try:
                await pool.request(
                    "127.0.0.1", port, "POST", b"/echo", key_line, SECRET_BODY, 10, key=KEY
                )
            finally:
                pool.close()

        with pytest.raises(UpstreamError, match="cannot prove its key") as refused:
            asyncio.run(send())
        assert refused.value.retry_safe  # nothing was sent: another replica may take it
        assert _sent_the_key_or_body() == []


class TestHealthProbes:
    def test_a_squatter_fails_the_probe_and_never_sees_the_key(
        self, replica: str, squatter: str
    ) -> None:
        _Squatter.seen.clear()
        check = HealthCheck(path="/ready")
        targets = [
            ProbeTarget("real", replica, check, KEY),
            ProbeTarget("taken", squatter, check, KEY),
        ]

        async def probe() -> dict[str, bool]:
            async with httpx.AsyncClient() as http:
                return await probe_all(http, targets)

        assert asyncio.run(probe()) == {"real": True, "taken": False}
        assert [path for _, path, _, _ in _Squatter.seen] == [HELLO_PATH]
        assert _sent_the_key_or_body() == []
