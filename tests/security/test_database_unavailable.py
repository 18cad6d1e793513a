"""A database that is locked or cannot be reached: the API answers 503 with
``Retry-After`` within the busy timeout (not a plain-text 500 after 30 s), ``/readyz``
says so, and everything works again once the database is back.

SQLite is locked by another connection holding its write lock; PostgreSQL is cut off by
a TCP relay between the server and it, unplugged as a network or a restart would.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from kaon.server.config import normalize_database_url
from tests.conftest import ADMIN_TOKEN, ThreadServer, test_settings

PY = sys.executable
BUSY_TIMEOUT_S = 0.5
JOBS = "/api/v1/workspaces/default/jobs"
SPEC = {"command": [PY, "-c", "pass"], "resources": {"cpu": 0.5}}
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "UnavailableError"
    assert int(response.headers["Retry-After"]) > 0


class TestLockedSqlite:
    def test_503_while_locked_and_back_after(self, tmp_path: Path) -> None:
        db_file = tmp_path / "kaon.db"
        settings = test_settings(
            tmp_path / "home",
            normalize_database_url(str(db_file)),
            db_busy_timeout_s=BUSY_TIMEOUT_S,
            reconcile_interval_s=60.0,  # the API alone contends for the lock
        )
        with (
            ThreadServer(settings) as running,
            httpx.Client(base_url=running.url, headers=AUTH, timeout=30) as http,
        ):
            assert http.get("/readyz").json() == {"status": "ready"}
            lock = sqlite3.connect(db_file, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")  # another writer holds the database
            try:
                started = time.monotonic()
                _assert_unavailable(http.post(JOBS, json=SPEC))
                assert time.monotonic() - started < 10 * BUSY_TIMEOUT_S + 5
                _assert_unavailable(http.get("/readyz"))
                assert http.get("/healthz").status_code == 200  # alive, just not ready
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            assert http.get("/readyz").status_code == 200
            assert http.post(JOBS, json=SPEC).status_code == 201


class Relay:
    """A TCP relay on loopback to `target`; `unplug` drops every connection and refuses
    new ones until `plug`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.plugged = True
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.plugged:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def unplug(self) -> None:
        self.plugged = False
        with self.lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.open.clear()

    def plug(self) -> None:
        self.plugged = True

    def close(self) -> None:
        self.unplug()
        self.listener.close()


@pytest.fixture
def relay(db_url: str) -> Iterator[tuple[Relay, str]]:
    """A relay to the test's PostgreSQL database, and that database's URL through it."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the relay cuts a network connection: PostgreSQL only")
    parts = urlsplit(db_url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{relay.port}"
    through = urlunsplit(
        parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
    )
    yield relay, through
    relay.close()


class TestUnreachablePostgres:
    def test_503_while_cut_off_and_back_after(
        self, tmp_path: Path, relay: tuple[Relay, str]
    ) -> None:
        cable, url = relay
        settings = test_settings(
            tmp_path / "home", url, db_busy_timeout_s=BUSY_TIMEOUT_S, reconcile_interval_s=60.0
        )
        with (
            ThreadServer(settings) as running,
            httpx.Client(base_url=running.url, headers=AUTH, timeout=30) as http,
        ):
            assert http.get("/readyz").status_code == 200
            cable.unplug()
            _assert_unavailable(http.post(JOBS, json=SPEC))
            _assert_unavailable(http.get(JOBS))
            _assert_unavailable(http.get("/readyz"))
            cable.plug()
            deadline = time.monotonic() + 30
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "never ready again"
                time.sleep(0.1)
            assert http.post(JOBS, json=SPEC).status_code == 201
