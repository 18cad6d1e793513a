"""The audit log over HTTP on the real app (SQLite and PostgreSQL): what is recorded, who
sees which records, and that `verify` finds a record edited, deleted or reordered
directly in the database."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

from kaon.cli.main import app
from kaon.core.errors import AuthError, NotFoundError, PermissionDeniedError
from kaon.core.jobs import JobStatus
from kaon.core.secrets import AuditRecordView
from kaon.sdk.admin import Users
from kaon.sdk.client import Client
from tests.conftest import RunningServer, ThreadServer, test_settings

PY = sys.executable
VALUE = "audit-canary-value-91f0c2"


def sql(server: RunningServer, *statements: str) -> None:
    """Edit the database behind the server's back, as an attacker with its file would."""

    async def run() -> None:
        engine = create_async_engine(server.settings.database_url)
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))
        await engine.dispose()

    asyncio.run(run())


def by_action(records: list[AuditRecordView]) -> dict[str, AuditRecordView]:
    return {r.action: r for r in records}


def some_changes(client: Client) -> None:
    client.secrets.set("api-key", VALUE)
    job = client.jobs.submit([PY, "-c", "import time; time.sleep(30)"], cpu=0.5)
    deadline = time.monotonic() + 30
    while client.jobs.get(job.id).status is not JobStatus.RUNNING:  # cancel a settled job
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.jobs.cancel(job.id)
    client.tokens.create("ci")
    client.secrets.delete("api-key")


class TestRecording:
    def test_changes_are_recorded_with_who_what_where(self, client: Client) -> None:
        some_changes(client)
        records = client.audit.list()
        actions = [r.action for r in records]
        assert actions == [
            "secrets.put_secret",
            "jobs.submit",
            "jobs.cancel",
            "auth.create_token",
            "secrets.delete_secret",
        ]
        submit, cancel = by_action(records)["jobs.submit"], by_action(records)["jobs.cancel"]
        assert submit.resource == cancel.resource and (submit.resource or "").startswith("jobs/j-")
        assert submit.token_name == "admin" and (submit.principal or "").startswith("tok-")
        assert submit.workspace == "default" and submit.source == "127.0.0.1"
        assert (submit.outcome, submit.status) == ("ok", 201)
        assert by_action(records)["secrets.put_secret"].resource == "secrets/api-key"
        assert [r.seq for r in records] == list(range(1, len(records) + 1))

    def test_reads_are_not_recorded_but_refusals_are(
        self, server: RunningServer, client: Client
    ) -> None:
        client.jobs.list()
        with server.client("kaon_wrong-token") as stranger, pytest.raises(AuthError):
            stranger.jobs.list()
        member = client.tokens.create("m").token
        with server.client(member) as m, pytest.raises(PermissionDeniedError):
            m.admin.rotate_master_key()
        records = client.audit.list()
        assert [(r.action, r.outcome, r.status) for r in records] == [
            ("jobs.list_jobs", "denied", 401),
            ("auth.create_token", "ok", 201),
            ("admin.rotate_master_key", "denied", 403),
        ]
        assert records[0].principal is None and records[2].token_name == "m"

    def test_quota_and_token_changes(self, client: Client) -> None:
        client.quotas.set("default", gpus=4, cpus=16)
        client.quotas.delete("default")
        token = client.tokens.create("ci")
        client.tokens.revoke(token.id)
        got = [(r.action, r.workspace, r.resource, r.status) for r in client.audit.list()]
        assert got == [
            ("quotas.set_quota", "default", None, 200),
            ("quotas.delete_quota", "default", None, 204),
            ("auth.create_token", None, f"auth/{token.id}", 201),
            ("auth.revoke_token", None, f"auth/{token.id}", 200),
        ]
        assert token.token not in client.request("GET", "/api/v1/audit").text

    def test_a_failed_change_is_recorded_as_failed(self, client: Client) -> None:
        with pytest.raises(NotFoundError):
            client.jobs.cancel("j-nope")
        (record,) = client.audit.list()
        assert (record.action, record.outcome, record.status) == ("jobs.cancel", "failed", 404)

    def test_secret_values_never_enter_the_log(
        self, server: RunningServer, client: Client
    ) -> None:
        some_changes(client)
        raw = client.request("GET", "/api/v1/audit").text
        assert VALUE not in raw and "api-key" in raw

    def test_the_log_can_be_turned_off(self, tmp_path: Path, db_url: str) -> None:
        settings = test_settings(tmp_path / "quiet", db_url, audit_log=False)
        with ThreadServer(settings) as quiet, quiet.client() as c:
            c.secrets.set("x", VALUE)
            assert c.audit.list() == []
            assert c.audit.verify().ok


class TestVisibility:
    def test_admins_see_all_members_their_workspaces(
        self, server: RunningServer, client: Client
    ) -> None:
        client.workspaces.create("team-b")
        client.secrets.set("a", VALUE)
        client.secrets.set("b", VALUE, workspace="team-b")
        Users(client).create("bob")  # the audit log of team-b is its admins'
        client.workspaces.add_member("team-b", "bob", "admin")
        bob = client.tokens.create("bob", workspaces=["team-b"], role="admin", user="bob").token
        with server.client(bob, workspace="team-b") as b:
            b.secrets.set("c", VALUE)
            seen = b.audit.list()
            assert {r.workspace for r in seen} == {"team-b"} and len(seen) == 3  # bob joined
            with pytest.raises(NotFoundError):
                b.audit.list(workspace="default")
            with pytest.raises(PermissionDeniedError):
                b.audit.verify()
        everything = client.audit.list()
        assert {r.workspace for r in everything} == {None, "default", "team-b"}
        assert [r.workspace for r in client.audit.list(workspace="default")] == ["default"]

    def test_since(self, client: Client) -> None:
        client.secrets.set("a", VALUE)
        first = client.audit.list()[0]
        client.secrets.set("b", VALUE)
        later = client.audit.list(since=first.time)
        assert [r.resource for r in later][-1] == "secrets/b"
        assert client.audit.list(since=later[-1].time.replace(year=2100)) == []


class TestVerify:
    def test_an_untouched_log_verifies(self, client: Client) -> None:
        some_changes(client)
        result = client.audit.verify()
        assert result.ok and result.checked == 5
        assert result.head_hash == client.audit.list()[-1].hash

    @pytest.mark.parametrize(
        ("statements", "bad_seq", "why"),
        [
            (["UPDATE audit_log SET action = 'jobs.list_jobs' WHERE seq = 2"], 2, "changed"),
            (["UPDATE audit_log SET token_name = 'nobody' WHERE seq = 4"], 4, "changed"),
            (["DELETE FROM audit_log WHERE seq = 3"], 3, "missing"),
            (
                [  # swap records 2 and 3 entirely, sequence numbers included
                    "UPDATE audit_log SET seq = 1000 WHERE seq = 2",
                    "UPDATE audit_log SET seq = 2 WHERE seq = 3",
                    "UPDATE audit_log SET seq = 3 WHERE seq = 1000",
                ],
                2,
                "does not follow",
            ),
            (
                [  # swap only their contents, keeping the sequence in order
                    "UPDATE audit_log SET seq = 1000 WHERE seq = 2",
                    "UPDATE audit_log SET seq = 2 WHERE seq = 3",
                    "UPDATE audit_log SET seq = 3 WHERE seq = 1000",
                    "UPDATE audit_log SET prev_hash = (SELECT hash FROM audit_log WHERE seq = 1)"
                    " WHERE seq = 2",
                ],
                2,
                "changed",
            ),
            (["DELETE FROM audit_log WHERE seq = 5"], 5, "removed from the end"),
        ],
        ids=["edited action", "edited who", "deleted", "reordered", "relinked", "cut off"],
    )
    def test_tampering_is_found(
        self,
        server: RunningServer,
        client: Client,
        statements: list[str],
        bad_seq: int,
        why: str,
    ) -> None:
        some_changes(client)
        assert client.audit.verify().ok
        sql(server, *statements)
        result = client.audit.verify()
        assert not result.ok
        assert result.first_bad_seq == bad_seq
        assert why in (result.problem or "")

    def test_the_cli_lists_and_exits_1_on_tampering(
        self, server: RunningServer, client: Client, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAON_URL", server.url)
        monkeypatch.setenv("KAON_TOKEN", server.token)
        some_changes(client)
        runner = CliRunner()
        listed = runner.invoke(app, ["audit", "list", "--json", "--since", "1h"])
        assert listed.exit_code == 0, listed.output
        assert [r["seq"] for r in json.loads(listed.stdout)] == [1, 2, 3, 4, 5]
        table = runner.invoke(app, ["audit", "list", "--workspace", "default"])
        assert "ok (201)" in table.stdout and "admin" in table.stdout  # narrow: cells cut
        assert runner.invoke(app, ["audit", "verify"]).exit_code == 0
        sql(server, "UPDATE audit_log SET outcome = 'failed' WHERE seq = 1")
        result = runner.invoke(app, ["audit", "verify"])
        assert result.exit_code == 1
        assert "record 1 was changed" in result.stderr


def test_the_worker_secret_call_is_recorded_as_the_job(
    server: RunningServer, client: Client
) -> None:
    client.secrets.set("k", VALUE)
    job = client.jobs.submit(
        [PY, "-c", "import os; assert os.environ['K']"], env={"K": {"secret": "k"}}, cpu=0.5
    )
    client.jobs.wait(job.id, timeout=60)
    records = [r for r in client.audit.list() if r.action == "jobs.resolve_secrets"]
    assert [(r.principal, r.resource, r.outcome) for r in records] == [
        (f"job:{job.id}", f"jobs/{job.id}", "ok")
    ]
    answer = httpx.get(f"{server.url}/api/v1/audit", headers={"Authorization": "Bearer x"})
    assert answer.status_code == 401
