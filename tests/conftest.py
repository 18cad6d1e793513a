"""Shared fixtures: real databases (SQLite and PostgreSQL) and the real app on loopback.

PostgreSQL runs when KAON_TEST_DATABASE_URL points at one (CI sets it); each test gets a
database of its own, created from scratch, so tests can run in parallel. Without the
variable the PostgreSQL cases skip, except under CI=true where that is an error.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import uvicorn
from typer.testing import CliRunner

from kaon.sdk.client import Client
from kaon.server.app import create_app
from kaon.server.config import Settings, normalize_database_url

ADMIN_TOKEN = "kaon_test-admin-" + "x" * 24
PG_ENV = "KAON_TEST_DATABASE_URL"

# Test Ray clusters run without token authentication, whatever this machine's
# ~/.ray/auth_token says (Ray 2.60 turns it on for clusters started where that file
# exists, and a local ray.init() writes it): every head, node and driver the tests start
# inherits this, so they agree.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# A control plane run as root runs jobs as users of their own unless told otherwise (CI
# runs as root). Most tests write and read their jobs' files as the test's own user, so
# the control planes they start run workers as that user; the tests of workers as users
# of their own (tests/security) and of the default itself say so explicitly.
WORKER_UIDS_OFF = {"KAON_WORKER_UIDS": "off"}
os.environ.setdefault("KAON_WORKER_UIDS", "off")


def _pg_admin_url() -> str | None:
    return os.environ.get(PG_ENV) or None


async def _pg_exec(url: str, sql: str) -> None:
    import asyncpg

    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://"))
    conn = await asyncpg.connect(urlunsplit(parts))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_database(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield normalize_database_url(str(tmp_path / "kaon.db"))
        return
    admin = _pg_admin_url()
    if admin is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{PG_ENV} must be set in CI")
        pytest.skip(f"set {PG_ENV} to run against PostgreSQL")
    name = f"kaon_test_{secrets.token_hex(6)}"
    asyncio.run(_pg_exec(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield normalize_database_url(_pg_database(admin, name))
    finally:
        asyncio.run(_pg_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_settings(home: Path, db_url: str, port: int = 0, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": home,
        "database_url": db_url,
        "port": port,
        "bootstrap_token": ADMIN_TOKEN,
        "node_cpus": 8.0,
        "node_memory": 16 * 2**30,
        "stop_grace_s": 3.0,
        "reconcile_interval_s": 0.2,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


test_settings.__test__ = False  # type: ignore[attr-defined]  # a factory, not a test


@dataclass
class RunningServer:
    url: str
    settings: Settings
    token: str = ADMIN_TOKEN

    def client(self, token: str | None = None, workspace: str = "default") -> Client:
        return Client(self.url, token=self.token if token is None else token, workspace=workspace)


class ThreadServer:
    """The real app under uvicorn, on a free loopback port, in a thread."""

    def __init__(self, settings: Settings, **uvicorn_options: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", settings.port))
        port = self.sock.getsockname()[1]
        self.settings = settings.with_(port=port)
        app = create_app(self.settings)
        config = uvicorn.Config(app, log_level="warning", lifespan="on", **uvicorn_options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return RunningServer(f"http://127.0.0.1:{self.settings.port}", self.settings)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        kill_workers(self.settings.home)


def kill_workers(home: Path) -> None:
    """Workers outlive the control plane by design; a test's must not outlive the test.
    Each worker's command leads a process group of its own, and so does its supervisor."""
    import json
    import signal

    for path in [*home.glob("runs/*/*/*/child.json"), *home.glob("runs/*/*/*/pid.json")]:
        try:
            os.killpg(int(json.loads(path.read_text())["pid"]), signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    """The control plane with its reconcilers, on SQLite and on PostgreSQL."""
    with ThreadServer(test_settings(tmp_path / "home", db_url)) as running:
        yield running


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[RunningServer]:
    """The control plane on SQLite only: for behaviour that does not depend on the
    database (CLI rendering, logs), so it is not paid for twice."""
    url = normalize_database_url(str(tmp_path / "kaon.db"))
    with ThreadServer(test_settings(tmp_path / "home", url)) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    with server.client() as c:
        yield c


PY = sys.executable


@pytest.fixture
def kaon(
    sqlite_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> CliRunner:
    """A CLI runner pointed at the SQLite test server, with its own KAON_HOME and cwd
    (the `kaon` command in-process, for the CLI tests of every package)."""
    home = tmp_path / "client-home"
    home.mkdir()
    monkeypatch.setenv("KAON_URL", sqlite_server.url)
    monkeypatch.setenv("KAON_TOKEN", sqlite_server.token)
    monkeypatch.setenv("KAON_HOME", str(home))
    monkeypatch.delenv("KAON_WORKSPACE", raising=False)
    monkeypatch.chdir(tmp_path)
    return CliRunner()
