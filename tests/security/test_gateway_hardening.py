"""The gateway's bad days, against a real gateway process (`python -m kaon.gateway
--routes`) in front of an echo replica on loopback:

- connections that send their headers or body too slowly get a 408 and are closed (300
  slow-loris connections at once), and the gateway keeps serving meanwhile;
- a head over the cap is 431;
- a path with ``.`` or ``..`` segments, plain or percent-encoded, is refused (400) and
  reaches no replica;
- a client's X-Forwarded-For (and X-Real-IP, Forwarded) is dropped, and the peer address
  is sent instead;
- bad tokens from one address get 429 with Retry-After; a good one from another address
  still works;
- ``/metrics`` needs a token the gateway knows (401 otherwise, counted like any bad token)
  and shows the deployments that token may call, all of them to an instance admin's;
- a canonical path, ``/{workspace}/{name}/...``, reaches the replica without both segments.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from kaon.core.gateway import Route, RouteTable
from kaon.core.tokens import hash_token
from tests.conftest import free_port

TOKEN = "kaon_gateway-hardening-1"
THEIRS = "kaon_gateway-hardening-2"  # another workspace's member
ADMIN = "kaon_gateway-hardening-admin"  # the instance admin: every deployment's series
LIMIT = 5
SLOW_CONNECTIONS = 300
PER_ADDRESS = 400  # above SLOW_CONNECTIONS: those all come from 127.0.0.1


class _Echo(BaseHTTPRequestHandler):
    """A replica that answers with what it was sent: its path and headers."""

    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._answer()

    def _answer(self) -> None:
        _Echo.seen.append(self.path)
        body = json.dumps({"path": self.path, "headers": self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Gateway:
    def __init__(self, url: str, port: int, log: Path) -> None:
        self.url = url
        self.port = port
        self.log = log


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    echo = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    echo.daemon_threads = True
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    replica = f"http://127.0.0.1:{echo.server_address[1]}"
    routes = [
        Route(name=name, replicas=[replica], token_hashes=[hash_token(TOKEN)])
        for name in ("dep", "other")
    ]
    routes.append(
        Route(name="theirs", workspace="team", replicas=[replica],
              token_hashes=[hash_token(THEIRS)])
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("gateway")
    table = folder / "routes.json"
    full = RouteTable(version=1, routes=routes, metrics_token_hashes=[hash_token(ADMIN)])
    table.write_text(full.model_dump_json())
    port = free_port()
    log = folder / "gateway.log"
    env = {**os.environ, "KAON_AUTH_FAILURE_LIMIT": str(LIMIT)}
    args = ["--routes", str(table), "--host", "0.0.0.0", "--port", str(port)]
    args += ["--header-timeout", "1", "--body-timeout", "2"]
    args += ["--max-connections-per-address", str(PER_ADDRESS)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kaon.gateway", *args], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the gateway did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        yield Gateway(url, port, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        echo.shutdown()


def _raw(port: int, request: bytes, source: str = "127.0.0.1") -> bytes:
    """Send `request` as it is (no client normalises it) and read the answer."""
    where = ("127.0.0.1", port)
    with socket.create_connection(where, timeout=10, source_address=(source, 0)) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _get(path: str, token: str = TOKEN) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()


class TestPaths:
    @pytest.mark.parametrize(
        "path",
        [
            "/dep/../other/x",
            "/dep/%2e%2e/other/x",
            "/dep/..%2Fother/x",
            "/dep%2F..%2Fother",
            "/../dep/x",
            "/dep/./x",
            "/dep/..",
            "/dep/..\\other",
            "/team/theirs/../x",
            "/team/theirs/%2e%2e/dep/x",
        ],
    )
    def test_dot_segments_are_refused_before_any_replica(
        self, gateway: Gateway, path: str
    ) -> None:
        before = len(_Echo.seen)
        answer = _raw(gateway.port, _get(path))
        assert _status(answer) == 400, answer
        assert b"segments are not allowed" in answer
        assert len(_Echo.seen) == before

    def test_a_plain_path_is_forwarded_without_the_deployment(self, gateway: Gateway) -> None:
        answer = httpx.get(f"{gateway.url}/dep/a/b?q=1", headers=_auth(), timeout=10)
        assert answer.status_code == 200
        assert answer.json()["path"] == "/a/b?q=1"

    @pytest.mark.parametrize(
        ("path", "forwarded"),
        [("/team/theirs/a/b?q=1", "/a/b?q=1"), ("/team/theirs?q=1", "/?q=1"),
         ("/team/theirs", "/"), ("/theirs/a", "/a")],
    )  # fmt: skip
    def test_a_canonical_path_is_forwarded_without_workspace_and_deployment(
        self, gateway: Gateway, path: str, forwarded: str
    ) -> None:
        answer = httpx.get(f"{gateway.url}{path}", headers=_auth(THEIRS), timeout=10)
        assert answer.status_code == 200
        assert answer.json()["path"] == forwarded


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestForwardedFor:
    def test_a_clients_forwarding_headers_are_replaced_by_the_peer(self, gateway: Gateway) -> None:
        sent = {**_auth(), "X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6",
                "Forwarded": "for=6.6.6.6"}  # fmt: skip
        answer = httpx.get(f"{gateway.url}/dep/who", headers=sent, timeout=10)
        assert answer.status_code == 200
        headers = [(k.lower(), v) for k, v in answer.json()["headers"]]
        assert [v for k, v in headers if k == "x-forwarded-for"] == ["127.0.0.1"]
        assert not [v for k, v in headers if k in ("x-real-ip", "forwarded")]
        assert "6.6.6.6" not in answer.text


class TestSlowClients:
    def test_slow_loris_connections_are_closed_and_others_served(self, gateway: Gateway) -> None:
        """300 connections that each trickle a header line every 0.3 s (which would keep
        an idle timer from ever firing) are all answered 408 and closed; a normal request
        is served while they hang on."""
        selector = selectors.DefaultSelector()
        conns = []
        for _ in range(SLOW_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
            s.sendall(b"GET /dep/x HTTP/1.1\r\nHost: x\r\n")
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ)
            conns.append(s)
        served = httpx.get(f"{gateway.url}/dep/meanwhile", headers=_auth(), timeout=10)
        assert served.status_code == 200
        closed: dict[socket.socket, bytes] = {}
        deadline = time.monotonic() + 30  # the header timeout is 1 s
        try:
            while len(closed) < len(conns) and time.monotonic() < deadline:
                for s in conns:
                    if s not in closed:
                        with contextlib.suppress(OSError):
                            s.send(b"X-Slow: 1\r\n")
                for key, _ in selector.select(timeout=0.3):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    try:
                        data = ready.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    closed[ready] = closed.get(ready, b"") + data
                    if not data:
                        selector.unregister(ready)
            assert len(closed) == SLOW_CONNECTIONS, f"{len(closed)} closed"
            assert all(answer.startswith(b"HTTP/1.1 408") for answer in closed.values())
        finally:
            for s in conns:
                s.close()

    def test_a_silent_connection_is_closed(self, gateway: Gateway) -> None:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as s:
            assert s.recv(4096).startswith(b"HTTP/1.1 408")
            assert s.recv(4096) == b""

    def test_a_slow_body_is_closed(self, gateway: Gateway) -> None:
        head = b"POST /dep/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n" % TOKEN.encode()
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as s:
            s.sendall(head + b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
            s.settimeout(0.3)
            answer = b""
            for _ in range(100):  # a byte now and then: it does not extend the deadline
                try:
                    chunk = s.recv(4096)
                except TimeoutError:
                    s.send(b"x")
                    continue
                answer += chunk
                if not chunk:
                    break
            assert answer.startswith(b"HTTP/1.1 408"), answer

    def test_a_head_over_the_cap_is_431(self, gateway: Gateway) -> None:
        big = b"GET /dep/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n"
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
            with contextlib.suppress(OSError):  # it may close before all is sent
                s.sendall(big)
            assert s.recv(4096).startswith(b"HTTP/1.1 431")


class TestConnectionsPerAddress:
    def test_one_address_past_its_cap_is_refused_and_others_served(self, gateway: Gateway) -> None:
        """127.0.0.3 opens `PER_ADDRESS` connections and holds them: the next one it
        opens gets 429 and is closed; 127.0.0.4 is served meanwhile; once they close,
        127.0.0.3 is served again."""
        where = ("127.0.0.1", gateway.port)
        held = [
            socket.create_connection(where, timeout=10, source_address=("127.0.0.3", 0))
            for _ in range(PER_ADDRESS)
        ]
        try:
            refused = _raw(gateway.port, _get("/dep/echo"), source="127.0.0.3")
            assert _status(refused) == 429 and b"too many open connections" in refused
            assert _status(_raw(gateway.port, _get("/dep/echo"), source="127.0.0.4")) == 200
        finally:
            for conn in held:
                conn.close()
        deadline = time.monotonic() + 10
        while _status(_raw(gateway.port, _get("/dep/echo"), source="127.0.0.3")) != 200:
            assert time.monotonic() < deadline, "the address's count never went down"
            time.sleep(0.05)


class TestBadTokens:
    def test_an_address_with_bad_tokens_gets_429_another_is_served(self, gateway: Gateway) -> None:
        source = "127.0.0.3"  # of its own: other tests' calls do not count
        for _ in range(LIMIT):
            assert _status(_raw(gateway.port, _get("/dep/x", "kaon_guess"), source)) == 401
        refused = _raw(gateway.port, _get("/dep/x", "kaon_guess"), source)
        assert _status(refused) == 429, refused
        assert b"retry-after: " in refused.lower()
        assert _status(_raw(gateway.port, _get("/dep/x"), source)) == 429
        assert _status(_raw(gateway.port, _get("/dep/x"), "127.0.0.4")) == 200
        assert "failed authentications from 127.0.0.3" in gateway.log.read_text()


class TestMetrics:
    def test_metrics_need_a_known_token_and_count_bad_ones(self, gateway: Gateway) -> None:
        source = "127.0.0.5"  # of its own: other tests' calls do not count
        bare = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        assert _status(_raw(gateway.port, bare, source)) == 401
        for _ in range(LIMIT - 1):
            assert _status(_raw(gateway.port, _get("/metrics", "kaon_guess"), source)) == 401
        assert _status(_raw(gateway.port, _get("/metrics"), source)) == 429
        assert _status(_raw(gateway.port, _get("/metrics"), "127.0.0.6")) == 200

    def test_a_token_sees_the_deployments_it_may_call_and_the_admin_all(
        self, gateway: Gateway
    ) -> None:
        httpx.get(f"{gateway.url}/team/theirs/x", headers=_auth(THEIRS), timeout=10)
        httpx.get(f"{gateway.url}/dep/x", headers=_auth(), timeout=10)

        def series(token: str) -> set[str]:
            answer = httpx.get(f"{gateway.url}/metrics", headers=_auth(token), timeout=10)
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert "# TYPE kaon_gateway_requests_total counter" in answer.text
            return {
                line.split('deployment="')[1].split('"')[0]
                for line in answer.text.splitlines()
                if 'deployment="' in line
            }

        assert series(TOKEN) == {"dep", "other"}
        assert series(THEIRS) == {"team/theirs"}
        assert series(ADMIN) == {"dep", "other", "team/theirs"}
