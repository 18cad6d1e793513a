"""TLS for the gateway, and its token kept out of its process.

On `kaon up`'s real processes: ``--tls-self-signed`` serves the gateway over HTTPS with
the control plane's certificate and records an ``https://`` gateway URL; a deployment
call through it works verified by that certificate (directly, and forwarded by the
control plane's "try it"), a client that trusts another certificate is refused, plain
HTTP is refused; the gateway's token is in neither its environment nor its command line;
beyond loopback the gateway takes TLS or ``--insecure`` as the API does.

On a gateway process serving a fixed route table over TLS: keep-alive, streaming, the
431, the 408 for a slow head or body, and a stalled TLS handshake closed by the header
deadline. And ``--token-file``: read, then deleted; refused when others may read it.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest

from kaon.core.gateway import Route, RouteTable
from kaon.core.tls import client_context, fingerprint, is_verify_failure
from kaon.server.security.tls import ensure_self_signed
from tests.cli.test_up import free_port_pair, kaon
from tests.conftest import free_port, kill_workers
from tests.security.test_tls import other_cert, up_home

__all__ = ["other_cert", "up_home"]  # fixtures of tests.security.test_tls, used here

TOKEN_TEXT = re.compile(rb"kaon_[A-Za-z0-9_\-]{20,}")  # what every Kaon token looks like

SERVICE = """
import kaon


class Echo(kaon.Service):
    @kaon.handler
    def ping(self) -> str:
        return "pong"
"""


# --- `kaon up` over TLS ------------------------------------------------------------------


@dataclass(frozen=True)
class Up:
    home: Path
    port: int
    gateway_port: int
    stdout: str

    @property
    def cert(self) -> Path:
        return self.home / "tls" / "cert.pem"

    @property
    def gateway(self) -> str:
        return f"https://127.0.0.1:{self.gateway_port}"

    def gateway_pid(self) -> int:
        return int((self.home / "gateway.pid").read_text().split()[0])


@pytest.fixture
def tls_up(db_url: str, up_home: Path) -> Iterator[Up]:
    """`kaon up --tls-self-signed` on SQLite or PostgreSQL (`db_url` first, so that its
    database is dropped only after `up_home` has stopped the control plane)."""
    port = free_port_pair()
    ports = ("--port", str(port), "--gateway-port", str(port + 1))
    try:
        started = kaon(up_home, "up", *ports, "--tls-self-signed", "--db", db_url)
        assert started.returncode == 0, started.stderr
        yield Up(up_home, port, port + 1, started.stdout)
    finally:  # `kaon down` leaves replicas running, and a running control plane restarts them
        kaon(up_home, "down", timeout=60)
        kill_workers(up_home)


@pytest.mark.e2e
class TestKaonUpServesTheGatewayOverTls:
    def test_the_gateway_serves_the_recorded_certificate_and_only_https(
        self, tls_up: Up, other_cert: str
    ) -> None:
        saved = json.loads((tls_up.home / "config.json").read_text())
        assert saved["gateway_url"] == tls_up.gateway
        assert saved["ca_file"] == str(tls_up.cert)
        assert tls_up.gateway in tls_up.stdout

        served = ssl.get_server_certificate(("127.0.0.1", tls_up.gateway_port))
        assert fingerprint(served) == fingerprint(tls_up.cert.read_text())
        verified = httpx.get(f"{tls_up.gateway}/healthz", verify=client_context(str(tls_up.cert)))
        assert verified.status_code == 200

        with pytest.raises(httpx.HTTPError):  # no plain HTTP on that port
            httpx.get(f"http://127.0.0.1:{tls_up.gateway_port}/healthz", timeout=5)

        with pytest.raises(httpx.ConnectError) as refused:
            httpx.get(f"{tls_up.gateway}/healthz", verify=client_context(other_cert), timeout=5)
        assert is_verify_failure(refused.value)

    def test_the_token_is_handed_over_out_of_sight_and_calls_work(
        self, tls_up: Up, tmp_path: Path
    ) -> None:
        pid = tls_up.gateway_pid()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"KAON_GATEWAY_TOKEN" not in environ
        assert TOKEN_TEXT.search(environ) is None, "a token in the gateway's environment"
        assert TOKEN_TEXT.search(cmdline) is None, "a token on the gateway's command line"
        assert b"--token-file" in cmdline  # the hand-over it was given ...
        assert not list(tls_up.home.glob("gateway-token-*"))  # ... read and gone

        home = tls_up.home
        (tmp_path / "svc").mkdir()
        (tmp_path / "svc" / "svc.py").write_text(SERVICE)
        svc = ("--path", str(tmp_path / "svc"), "--service", "svc:Echo")
        created = kaon(
            home,
            "deploy",
            "create",
            "echo",
            *svc,
            "--cpu",
            "0.5",
            "--memory",
            "256Mi",
            timeout=300,
        )
        assert created.returncode == 0, created.stderr

        # the control plane's "try it" (`kaon deploy call`) forwards over TLS, verified
        called = kaon(home, "deploy", "call", "echo", "ping")
        assert called.returncode == 0, called.stderr
        assert called.stdout.strip() == '"pong"'

        # a client calls the gateway itself, verifying it by the recorded certificate; the
        # token is new to the gateway: it fetches the route table (over TLS) to admit it
        token = kaon(home, "deploy", "token", "echo", "-q").stdout.strip()
        answer = httpx.post(
            f"{tls_up.gateway}/echo/ping",
            json={},
            headers={"Authorization": f"Bearer {token}"},
            verify=client_context(str(tls_up.cert)),
            timeout=30,
        )
        assert (answer.status_code, answer.json()) == (200, "pong"), answer.text


@pytest.mark.e2e
class TestBeyondLoopback:
    def test_without_tls_the_gateway_is_refused_too(self, up_home: Path) -> None:
        port = free_port_pair()
        ports = ("--port", str(port), "--gateway-port", str(port + 1))
        result = kaon(up_home, "up", "--host", "0.0.0.0", *ports)
        assert result.returncode == 2, result.stdout
        message = " ".join(result.stderr.split())
        assert "the gateway listens on the same address, under the same rule" in message
        assert not (up_home / "gateway.pid").exists()  # nothing was started
        assert not (up_home / "gateway.log").exists()

    def test_insecure_serves_the_gateway_there_in_plain_http(self, up_home: Path) -> None:
        port = free_port_pair()
        ports = ("--port", str(port), "--gateway-port", str(port + 1))
        result = kaon(up_home, "up", "--host", "0.0.0.0", "--insecure", *ports)
        assert result.returncode == 0, result.stderr
        assert "the API and the gateway on 0.0.0.0 speak plain HTTP" in " ".join(
            result.stderr.split()
        )
        gateway = f"http://127.0.0.1:{port + 1}"
        assert json.loads((up_home / "config.json").read_text())["gateway_url"] == gateway
        assert httpx.get(f"{gateway}/healthz", timeout=5).status_code == 200
        pid = int((up_home / "gateway.pid").read_text().split()[0])
        listening = {
            c.laddr.ip
            for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == {"0.0.0.0"}


# --- the gateway's own server over TLS ---------------------------------------------------

CHUNKS = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]


class _Replica(BaseHTTPRequestHandler):
    """``/stream``: three chunks, a little apart; anything else: its path, at once."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path != "/stream":
            body = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for chunk in CHUNKS:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            time.sleep(0.05)
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


@dataclass(frozen=True)
class TlsGateway:
    port: int
    cert: str
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def context(self) -> ssl.SSLContext:
        return client_context(self.cert)


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsGateway]:
    """`python -m kaon.gateway --routes` serving HTTPS (1 s for a head, 2 s for a body)."""
    replica = ThreadingHTTPServer(("127.0.0.1", 0), _Replica)
    replica.daemon_threads = True
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    folder = tmp_path_factory.mktemp("tls-gateway")
    route = Route(name="dep", public=True, replicas=[f"http://127.0.0.1:{replica.server_port}"])
    table = folder / "routes.json"
    table.write_text(RouteTable(version=1, routes=[route]).model_dump_json())
    files = ensure_self_signed(folder / "home", "127.0.0.1")
    port = free_port()
    args = ["--routes", str(table), "--port", str(port), "--header-timeout", "1"]
    args += ["--body-timeout", "2", "--tls-cert", str(files.cert), "--tls-key", str(files.key)]
    log = folder / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kaon.gateway", *args], stdout=out, stderr=out
        )
    running = TlsGateway(port, str(files.cert), log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the gateway did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{running.url}/healthz", verify=running.context()).is_success:
                    break
            time.sleep(0.05)
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        replica.shutdown()


def _tls_socket(gateway: TlsGateway) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    return gateway.context().wrap_socket(raw, server_hostname="127.0.0.1")


def _read_answer(sock: socket.socket) -> bytes:
    """One answer with a content-length body (or what came before the peer closed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    while length and len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _closed(sock: socket.socket) -> bool:
    """Whether the peer closes `sock` (reading until it does, within the socket timeout)."""
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return True


class TestGatewayServerOverTls:
    def test_keep_alive_serves_requests_one_after_another_on_one_connection(
        self, tls_gateway: TlsGateway
    ) -> None:
        with _tls_socket(tls_gateway) as sock:
            for n in range(3):
                sock.sendall(b"GET /dep/n%d HTTP/1.1\r\nhost: x\r\n\r\n" % n)
                answer = _read_answer(sock)
                assert answer.startswith(b"HTTP/1.1 200"), answer
                assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"path": f"/n{n}"}

    def test_a_stream_arrives_chunk_by_chunk(self, tls_gateway: TlsGateway) -> None:
        with (
            httpx.Client(verify=tls_gateway.context(), timeout=10) as http,
            http.stream("GET", f"{tls_gateway.url}/dep/stream") as reply,
        ):
            assert reply.status_code == 200
            assert reply.headers["content-type"] == "text/event-stream"
            assert b"".join(reply.iter_raw()) == b"".join(CHUNKS)

    def test_a_head_over_the_cap_is_431(self, tls_gateway: TlsGateway) -> None:
        with _tls_socket(tls_gateway) as sock:
            with contextlib.suppress(OSError):  # it may close before all is sent
                sock.sendall(b"GET /dep/x HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 2**16)
            assert _read_answer(sock).startswith(b"HTTP/1.1 431")

    @pytest.mark.parametrize(
        "sent",
        [
            b"GET /dep/x HTTP/1.1\r\n",  # a head that never ends
            b"POST /dep/x HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n{}",  # a body
        ],
    )
    def test_a_slow_request_gets_408_and_is_closed(
        self, tls_gateway: TlsGateway, sent: bytes
    ) -> None:
        with _tls_socket(tls_gateway) as sock:
            sock.sendall(sent)  # and nothing more
            assert _read_answer(sock).startswith(b"HTTP/1.1 408")
            assert _closed(sock)

    @pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00\x01"])  # nothing; half a hello
    def test_a_stalled_handshake_is_closed_by_the_header_deadline(
        self, tls_gateway: TlsGateway, sent: bytes
    ) -> None:
        with socket.create_connection(("127.0.0.1", tls_gateway.port), timeout=20) as raw:
            raw.sendall(sent)
            assert _closed(raw), "the default handshake timeout is 60 s; the deadline 1 s"

    def test_plain_http_is_not_answered(self, tls_gateway: TlsGateway) -> None:
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{tls_gateway.port}/healthz", timeout=5)


class TestTokenFile:
    """`python -m kaon.gateway --token-file`, as `kaon up` starts it."""

    def _start(self, token_file: Path) -> subprocess.Popen[bytes]:
        port = free_port()
        args = ["--port", str(port), "--control-plane", f"http://127.0.0.1:{free_port()}"]
        return subprocess.Popen(
            [sys.executable, "-m", "kaon.gateway", *args, "--token-file", str(token_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def test_the_file_is_read_then_deleted(self, tmp_path: Path) -> None:
        token_file = tmp_path / "token"
        token_file.write_text("kaon_handed-over-token-0123456789")
        token_file.chmod(0o600)
        proc = self._start(token_file)
        try:
            deadline = time.monotonic() + 30
            while token_file.exists():
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "the gateway did not take the file"
                time.sleep(0.05)
            assert proc.poll() is None  # it runs on, token in memory only
            assert b"handed-over" not in Path(f"/proc/{proc.pid}/environ").read_bytes()
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    def test_a_file_others_may_read_is_refused(self, tmp_path: Path) -> None:
        token_file = tmp_path / "token"
        token_file.write_text("kaon_handed-over-token-0123456789")
        token_file.chmod(0o644)
        proc = self._start(token_file)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 2 and b"readable by others" in output, output
