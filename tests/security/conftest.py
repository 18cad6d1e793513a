"""Fixtures for the security tests: a control plane whose reconcilers do not run (so
generated requests never start a process), tokens of each role, and a job that looks
launched, so its per-attempt token opens the job-token routes."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import update

from kaon.core.tokens import hash_token
from kaon.server.app import create_app
from kaon.server.config import Settings
from kaon.server.db.models import Job
from kaon.server.db.session import Database
from kaon.server.security.tokens import job_token, load_token_key
from tests.conftest import ADMIN_TOKEN, ThreadServer, test_settings
from tests.server.conftest import make_plane as make_plane  # the reconcilers, stepped


class QuietServer(ThreadServer):
    """`ThreadServer` without the reconcilers: what a request writes stays desired state,
    so a fuzzer's job specs are stored and checked but never run."""

    def __init__(self, settings: Settings) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", settings.port))
        self.settings = settings.with_(port=self.sock.getsockname()[1])
        app = create_app(self.settings, run_reconcilers=False)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )


@dataclass(frozen=True)
class Tokens:
    """A token of each kind a caller of the API can hold."""

    admin: str
    member: str  # a member of the default workspace only
    job_id: str  # a job of the default workspace, as if its first attempt were launched
    job: str  # that attempt's token
    viewer: str  # a viewer of the default workspace (its user's role there)
    gateway: str  # a gateway's token: the route table and reports only


@dataclass(frozen=True)
class Quiet:
    url: str
    settings: Settings
    tokens: Tokens


@pytest.fixture
def quiet(tmp_path: Path, db_url: str) -> Iterator[Quiet]:
    """A control plane on SQLite and PostgreSQL with tokens of every role."""
    with QuietServer(test_settings(tmp_path / "home", db_url)) as running:
        yield Quiet(running.url, running.settings, _tokens(running.url, running.settings))


def _tokens(url: str, settings: Settings) -> Tokens:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=url, headers=admin) as http:
        member = http.post("/api/v1/tokens", json={"name": "member", "workspaces": ["default"]})
        member.raise_for_status()
        http.post("/api/v1/users", json={"name": "quiet-viewer"}).raise_for_status()
        http.put("/api/v1/workspaces/default/members/quiet-viewer", json={"role": "viewer"})
        body = {
            "name": "viewer",
            "user": "quiet-viewer",
            "role": "viewer",
            "workspaces": ["default"],
        }
        viewer = http.post("/api/v1/tokens", json=body)
        viewer.raise_for_status()
        gateway = http.post("/api/v1/tokens", json={"name": "gateway", "role": "gateway"})
        gateway.raise_for_status()
        job = http.post(
            "/api/v1/workspaces/default/jobs", json={"command": ["true"], "resources": {"cpu": 1}}
        )
        job.raise_for_status()
    job_id = job.json()["id"]
    token = job_token(load_token_key(settings.home), job_id, 1)
    asyncio.run(_mark_launched(settings.database_url, job_id, token))
    return Tokens(
        ADMIN_TOKEN,
        member.json()["token"],
        job_id,
        token,
        viewer.json()["token"],
        gateway.json()["token"],
    )


async def _mark_launched(url: str, job_id: str, token: str) -> None:
    """What the launch step records for a job's first attempt (its token's hash), without
    starting its workers."""
    db = Database(url)
    try:
        async with db.session() as s:
            values = {"attempt": 1, "job_token_hash": hash_token(token)}
            await s.execute(update(Job).where(Job.id == job_id).values(**values))
    finally:
        await db.dispose()
