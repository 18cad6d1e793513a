"""Tokens and workspaces over real HTTP, on SQLite and PostgreSQL: secrets are stored
hashed and shown once, revocation is immediate, members stay in their lane, and another
workspace's resources look exactly like missing ones."""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from kaon.core.errors import AuthError, NotFoundError
from kaon.core.jobs import JobStatus
from kaon.server.db.models import Base
from tests.conftest import ADMIN_TOKEN, RunningServer

PY = sys.executable


def _http(server: RunningServer, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=headers)


def _dump_tables(database_url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every Kaon table, read with SQLAlchemy straight from the database."""

    async def dump() -> dict[str, list[dict[str, Any]]]:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as conn:
                out = {}
                for table in Base.metadata.sorted_tables:
                    rows = (await conn.execute(select(table))).mappings().all()
                    out[table.name] = [dict(r) for r in rows]
                return out
        finally:
            await engine.dispose()

    return asyncio.run(dump())


class TestTokens:
    def test_secrets_are_stored_only_as_hashes(self, server: RunningServer) -> None:
        created = server.client().tokens.create("ci-bot")
        secret = created.token
        tables = _dump_tables(server.settings.database_url)
        tokens = {row["name"]: row for row in tables["tokens"]}
        assert set(tokens) == {"admin", "ci-bot"}
        assert tokens["ci-bot"]["hash"] == hashlib.sha256(secret.encode()).hexdigest()
        assert tokens["admin"]["hash"] == hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()
        for table, rows in tables.items():
            text = repr(rows)
            assert secret not in text, f"the new token's secret is stored in {table}"
            assert ADMIN_TOKEN not in text, f"the admin token is stored in {table}"
        assert tokens["ci-bot"]["prefix"] == secret[:9]  # enough to tell tokens apart
        assert len(secret) - 9 >= 32  # and far from enough to guess the rest

        # The secret is shown once, at creation; lists show names and never secrets.
        with _http(server, ADMIN_TOKEN) as http:
            listed = http.get("/api/v1/tokens")
        assert listed.status_code == 200
        assert secret not in listed.text and ADMIN_TOKEN not in listed.text
        rows = {t["name"]: t for t in listed.json()}
        assert set(rows) == {"admin", "ci-bot"}
        assert "token" not in rows["ci-bot"] and "hash" not in rows["ci-bot"]
        assert (rows["ci-bot"]["workspaces"], rows["ci-bot"]["role"]) == (["default"], "member")
        # A member sees only itself.
        assert [t.name for t in server.client(token=secret).tokens.list()] == ["ci-bot"]

    def test_a_revoked_token_is_refused_at_once(self, server: RunningServer) -> None:
        admin = server.client()
        secret = admin.tokens.create("short-lived").token
        member = server.client(token=secret)
        assert member.whoami().token == "short-lived"
        assert admin.tokens.revoke("short-lived").revoked_at is not None
        with pytest.raises(AuthError):
            member.whoami()
        with _http(server, secret) as http:
            assert http.get("/api/v1/workspaces/default/jobs").status_code == 401
        assert {t.name: t for t in admin.tokens.list()}["short-lived"].revoked_at is not None
        # By id, too; a second revoke finds nothing left to revoke.
        created = admin.tokens.create("by-id")
        assert admin.tokens.revoke(created.id).name == "by-id"
        with pytest.raises(NotFoundError):
            admin.tokens.revoke(created.id)
        with pytest.raises(AuthError):
            server.client(token=created.token).whoami()

    def test_a_member_revokes_only_itself(self, server: RunningServer) -> None:
        admin = server.client()
        member = server.client(token=admin.tokens.create("self-revoker").token)
        with pytest.raises(NotFoundError):
            member.tokens.revoke("admin")
        assert admin.whoami().role == "admin"
        member.tokens.revoke("self-revoker")
        with pytest.raises(AuthError):
            member.whoami()


class TestMemberPermissions:
    def test_a_member_cannot_make_admins_or_workspaces(self, server: RunningServer) -> None:
        admin = server.client()
        admin.workspaces.create("secret-team")
        secret = admin.tokens.create("member").token
        with _http(server, secret) as http:
            admin_token = http.post("/api/v1/tokens", json={"name": "escalate", "role": "admin"})
            workspace = http.post("/api/v1/workspaces", json={"name": "mine"})
            own = http.post("/api/v1/tokens", json={"name": "helper"})
            other = http.post(
                "/api/v1/tokens", json={"name": "sneaky", "workspaces": ["secret-team"]}
            )
        assert admin_token.status_code == 403
        assert admin_token.json()["error"] == "PermissionDeniedError"
        assert workspace.status_code == 403
        assert own.status_code == 201 and own.json()["role"] == "member"
        assert other.status_code == 404  # a workspace it is not in does not exist for it
        names = {t.name for t in admin.tokens.list()}
        assert {"escalate", "sneaky"}.isdisjoint(names) and "helper" in names
        assert [w.name for w in admin.workspaces.list()] == ["default", "secret-team"]


def _shape(response: httpx.Response, *ids: str) -> tuple[int, dict[str, Any]]:
    """Status and body with the ids in it blanked, to compare two 404s."""
    body = response.json()
    detail = body["detail"]
    for value in ids:
        detail = detail.replace(value, "<id>")
    return response.status_code, {**body, "detail": detail}


class TestWorkspaceIsolation:
    def test_another_workspaces_job_looks_missing(self, server: RunningServer) -> None:
        admin = server.client()
        admin.workspaces.create("team-b")
        secret = admin.tokens.create("b-only", workspaces=["team-b"]).token
        job = admin.jobs.submit([PY, "-c", "pass"], cpu=0.5)
        missing = "j-000000000000"
        with _http(server, secret) as http:
            for suffix in ("", "/logs", "/metrics"):
                theirs = http.get(f"/api/v1/workspaces/team-b/jobs/{job.id}{suffix}")
                absent = http.get(f"/api/v1/workspaces/team-b/jobs/{missing}{suffix}")
                assert theirs.status_code == 404
                assert _shape(theirs, job.id) == _shape(absent, missing)
            theirs = http.post(f"/api/v1/workspaces/team-b/jobs/{job.id}/cancel")
            absent = http.post(f"/api/v1/workspaces/team-b/jobs/{missing}/cancel")
            assert _shape(theirs, job.id) == _shape(absent, missing)
            # Naming the other workspace is the same as naming one that does not exist.
            theirs = http.get(f"/api/v1/workspaces/default/jobs/{job.id}")
            absent = http.get(f"/api/v1/workspaces/no-such-ws/jobs/{job.id}")
            assert theirs.status_code == 404
            assert _shape(theirs, "default") == _shape(absent, "no-such-ws")
            assert re.search(r"not found", theirs.json()["detail"])
            assert http.get("/api/v1/workspaces/team-b/jobs").json() == []
            submit = http.post("/api/v1/workspaces/default/jobs", json={"command": ["true"]})
            assert submit.status_code == 404
        assert admin.jobs.wait(job.id, timeout=30).status is JobStatus.SUCCEEDED
        assert [j.id for j in admin.jobs.list()] == [job.id]


REPORTER = """
import json, os, sys, urllib.error, urllib.request

def post(job_id):
    body = json.dumps({"points": [{"step": 1, "values": {"loss": 0.5}}]}).encode()
    request = urllib.request.Request(
        f"{os.environ['KAON_API_URL']}/api/v1/jobs/{job_id}/metrics", data=body, method="POST",
        headers={"Authorization": f"Bearer {os.environ['KAON_JOB_TOKEN']}",
                 "Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(request).status
    except urllib.error.HTTPError as e:
        return e.code

def whoami():
    request = urllib.request.Request(f"{os.environ['KAON_API_URL']}/api/v1/whoami",
        headers={"Authorization": f"Bearer {os.environ['KAON_JOB_TOKEN']}"})
    try:
        return urllib.request.urlopen(request).status
    except urllib.error.HTTPError as e:
        return e.code

print("own", post(os.environ["KAON_JOB_ID"]))
print("other", post(sys.argv[1]))
print("api", whoami())
"""


class TestJobToken:
    def test_a_job_token_reports_metrics_for_its_own_job_only(self, server: RunningServer) -> None:
        admin = server.client()
        # The victim runs while the reporter tries its token on it, so the victim has a
        # live job token of its own (a finished job has none).
        victim = admin.jobs.submit([PY, "-c", "import time; time.sleep(30)"], cpu=0.5)
        _wait_running(admin, victim.id)
        reporter = admin.jobs.submit([PY, "-c", REPORTER, victim.id], cpu=0.5)
        done = admin.jobs.wait(reporter.id, timeout=30)
        log = admin.jobs.logs(reporter.id)
        assert done.status is JobStatus.SUCCEEDED, log
        assert log.split() == ["own", "202", "other", "401", "api", "401"]
        assert [(m.name, m.value) for m in admin.jobs.metrics(reporter.id)] == [("loss", 0.5)]
        assert admin.jobs.metrics(victim.id) == []
        # An API token, even the admin's, is not a job token.
        with _http(server, ADMIN_TOKEN) as http:
            body = {"points": [{"values": {"loss": 1.0}}]}
            assert http.post(f"/api/v1/jobs/{victim.id}/metrics", json=body).status_code == 401
        admin.jobs.cancel(victim.id)
        assert admin.jobs.wait(victim.id, timeout=30).status is JobStatus.CANCELLED


def _wait_running(client: Any, job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.jobs.get(job_id).status is not JobStatus.RUNNING:
        assert time.monotonic() < deadline, f"job {job_id} never ran"
        time.sleep(0.05)
