"""The control plane as a real separate process, so tests can kill it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kaon.sdk.client import Client
from tests.conftest import ADMIN_TOKEN, RunningServer, free_port, kill_workers


class ServerProcess:
    """`python -m kaon.server` with its own home, port and database."""

    def __init__(self, home: Path, db_url: str, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "KAON_HOME": str(home),
            "KAON_PORT": str(self.port),
            "KAON_DATABASE_URL": db_url,
            "KAON_BOOTSTRAP_TOKEN": ADMIN_TOKEN,
            "KAON_NODE_CPUS": "8",
            "KAON_NODE_MEMORY": "16Gi",
            "KAON_STOP_GRACE_S": "3",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kaon.server"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = self.client()
        deadline = time.monotonic() + 60
        while not client.healthy():
            assert self.proc.poll() is None, (self.home / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.proc = None

    def client(self) -> Client:
        return Client(self.url, token=ADMIN_TOKEN)

    def running(self) -> RunningServer:
        """As the in-process fixtures describe a server (for the gateway fixture)."""
        from kaon.server.config import Settings

        return RunningServer(self.url, Settings(home=self.home, database_url=""))


@pytest.fixture
def server_process(tmp_path: Path, db_url: str) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "home", db_url)
    server.start()
    yield server
    if server.proc is not None:
        server.kill(signal.SIGTERM)
    kill_workers(server.home)


class Gateway:
    def __init__(self, server: RunningServer) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "KAON_GATEWAY_TOKEN": server.token}
        argv = [
            sys.executable,
            "-m",
            "kaon.gateway",
            "--port",
            str(self.port),
            "--control-plane",
            server.url,
            "--poll",
            "0.2",
        ]
        self.proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        # Up once it has its first route table: `/metrics` knows the admin's token only
        # from there (before it, a call without a token to a public deployment is 401).
        # (Each early 401 counts towards the gateway's failed-authentication limit of 30 a
        # minute: a few at most, hence /healthz first and no hurry after it.)
        deadline = time.monotonic() + 30
        for path, pause in (("/healthz", 0.05), ("/metrics", 0.1)):
            while not self._answers(path, server.token):
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(pause)

    def _answers(self, path: str, token: str) -> bool:
        headers = {"Authorization": f"Bearer {token}"}
        try:
            return httpx.get(f"{self.url}{path}", headers=headers, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def predict(
        self, name: str, token: str | None, x: list[float], timeout: float = 30
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(
            f"{self.url}/{name}/predict", json={"x": x}, headers=headers, timeout=timeout
        )

    def call(self, name: str, handler: str, token: str | None, x: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(
            f"{self.url}/{name}/{handler}", json={"x": x}, headers=headers, timeout=30
        )

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def gateway(server: RunningServer) -> Iterator[Gateway]:
    gw = Gateway(server)
    yield gw
    gw.close()
