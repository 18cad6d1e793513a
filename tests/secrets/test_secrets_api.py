"""Secrets over HTTP on the real app (SQLite and PostgreSQL): who may set, list and
delete them, that no view ever carries a value, and that a job referencing one gets the
value in its environment and shows it masked in its log."""

from __future__ import annotations

import hashlib
import os
import sys

import httpx
import pytest

from kaon.core.errors import InvalidSpecError, NotFoundError, PermissionDeniedError
from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from kaon.sdk.secrets import secret
from tests.conftest import RunningServer

PY = sys.executable
VALUE = "sk-live-7f3a9c1e5b2d8047"


class TestSecretsApi:
    def test_set_list_delete_never_show_the_value(self, client: Client) -> None:
        first = client.secrets.set("openai-key", VALUE)
        second = client.secrets.set("openai-key", VALUE + "-2")
        assert (first.version, second.version) == (1, 2)
        listed = client.secrets.list()
        assert [(s.name, s.version, s.updated_by) for s in listed] == [("openai-key", 2, "admin")]
        raw = client.request("GET", client.ws_path("/secrets")).text
        assert VALUE not in raw
        client.secrets.delete("openai-key")
        assert client.secrets.list() == []
        with pytest.raises(NotFoundError):
            client.secrets.delete("openai-key")

    def test_a_bad_name_is_refused(self, client: Client) -> None:
        with pytest.raises(InvalidSpecError, match="secret name"):
            client.secrets.set("Not_A_Label", VALUE)

    def test_another_workspace_sees_nothing(self, server: RunningServer, client: Client) -> None:
        client.workspaces.create("team-b")
        client.secrets.set("db-pass", VALUE)
        other = client.tokens.create("bob", workspaces=["team-b"]).token
        with server.client(other, workspace="team-b") as bob:
            assert bob.secrets.list() == []
            with pytest.raises(NotFoundError):
                bob.secrets.list(workspace="default")  # like a workspace that is not there
            with pytest.raises(NotFoundError):
                bob.secrets.delete("db-pass", workspace="default")
        assert [s.name for s in client.secrets.list()] == ["db-pass"]

    def test_a_gateway_token_holds_no_secrets(self, server: RunningServer, client: Client) -> None:
        gateway = client.tokens.create("gw", role="gateway").token
        with server.client(gateway) as gw, pytest.raises(PermissionDeniedError):
            gw.secrets.list()

    def test_a_job_referencing_a_missing_secret_is_refused_at_submit(self, client: Client) -> None:
        with pytest.raises(InvalidSpecError, match="kaon secret set nope") as info:
            client.jobs.submit([PY, "-c", "pass"], env={"API_KEY": secret("nope")}, cpu=0.5)
        assert info.value.field == "env.API_KEY"
        assert client.jobs.list() == []

    def test_the_worker_endpoint_wants_the_jobs_own_token(
        self, server: RunningServer, client: Client
    ) -> None:
        client.secrets.set("k", VALUE)
        job = client.jobs.submit(
            [PY, "-c", "import time; time.sleep(30)"], env={"K": secret("k")}, cpu=0.5
        )
        for token in (None, server.token, "kjob_" + "0" * 64):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            answer = httpx.post(f"{server.url}/api/v1/jobs/{job.id}/secrets", headers=headers)
            assert answer.status_code == 401
            assert VALUE not in answer.text
        client.jobs.cancel(job.id)


@pytest.mark.e2e
class TestSecretInAJob:
    def test_the_value_reaches_the_worker_and_its_log_shows_stars(self, client: Client) -> None:
        client.secrets.set("openai-key", VALUE)
        digest = hashlib.sha256(VALUE.encode()).hexdigest()
        code = (
            "import hashlib, os; v = os.environ['API_KEY']; "
            "print('sha', hashlib.sha256(v.encode()).hexdigest()); print('the key is', v); "
            "assert 'KAON_SECRET_ENV' not in os.environ"
        )
        job = client.jobs.submit(
            [PY, "-c", code], env={"API_KEY": secret("openai-key"), "PLAIN": "x"}, cpu=0.5
        )
        done = client.jobs.wait(job.id, timeout=60)
        logs = client.jobs.logs(job.id)
        assert done.status is JobStatus.SUCCEEDED, logs
        assert f"sha {digest}" in logs
        assert "the key is ***" in logs
        assert VALUE not in logs
        view = client.request("GET", client.ws_path(f"/jobs/{job.id}")).json()
        assert view["spec"]["env"] == {"API_KEY": {"secret": "openai-key"}, "PLAIN": "x"}
        assert VALUE not in str(client.request("GET", client.ws_path("/jobs")).json())

    def test_a_secret_as_a_file_is_private_in_memory_and_gone_after(self, client: Client) -> None:
        client.secrets.set("tls-key", VALUE)
        digest = hashlib.sha256(VALUE.encode()).hexdigest()
        code = (
            "import hashlib, os, stat; p = os.environ['KEY_FILE']; st = os.stat(p); "
            "print('sha', hashlib.sha256(open(p).read().encode()).hexdigest()); "
            "print('mode', oct(stat.S_IMODE(st.st_mode)), "
            "oct(stat.S_IMODE(os.stat(os.path.dirname(p)).st_mode))); print('path', p)"
        )
        env = {"KEY_FILE": secret("tls-key", file=True), "API_KEY": secret("tls-key")}
        job = client.jobs.submit([PY, "-c", code], env=env, cpu=0.5)
        done = client.jobs.wait(job.id, timeout=60)
        logs = client.jobs.logs(job.id)
        assert done.status is JobStatus.SUCCEEDED, logs
        assert f"sha {digest}" in logs
        assert "mode 0o400 0o700" in logs
        path = logs.split("path ", 1)[1].split()[0]
        assert path.startswith("/dev/shm/kaon-secrets-")
        assert not os.path.exists(path)  # removed when the worker's supervisor ended
        view = client.request("GET", client.ws_path(f"/jobs/{job.id}")).json()
        assert view["spec"]["env"]["KEY_FILE"] == {"secret": "tls-key", "file": True}
        assert view["spec"]["env"]["API_KEY"] == {"secret": "tls-key"}

    def test_a_secret_deleted_before_start_fails_the_worker_with_the_reason(
        self, client: Client
    ) -> None:
        client.secrets.set("gone", VALUE)
        blocker = client.jobs.submit([PY, "-c", "import time; time.sleep(60)"], cpu=8)
        job = client.jobs.submit([PY, "-c", "print('ran')"], env={"K": secret("gone")}, cpu=1)
        client.secrets.delete("gone")  # while the job waits for the blocker's CPUs
        client.jobs.cancel(blocker.id)
        done = client.jobs.wait(job.id, timeout=60)
        logs = client.jobs.logs(job.id)
        assert done.status is JobStatus.FAILED, logs
        assert "cannot read the job's secrets" in logs and "'gone' not found" in logs
        assert "ran" not in logs


class TestValues:
    @pytest.mark.parametrize(
        "value", ["", "x" * (64 * 1024 + 1), "a\x00b"], ids=["empty", "too long", "NUL"]
    )
    def test_refused_values(self, client: Client, value: str) -> None:
        with pytest.raises(InvalidSpecError, match="value") as info:
            client.secrets.set("k", value)
        assert value[:100] not in str(info.value) or not value  # never echoed back

    def test_any_text_survives_the_round_trip(self, client: Client) -> None:
        odd = "multi\nline ünïcode $HOME 'quotes' \"dq\" \\ ✓"
        client.secrets.set("odd", odd)
        code = "import os, sys; sys.exit(0 if os.environ['V'] == sys.argv[1] else 1)"
        job = client.jobs.submit([PY, "-c", code, odd], env={"V": secret("odd")}, cpu=0.5)
        assert client.jobs.wait(job.id, timeout=60).status is JobStatus.SUCCEEDED
