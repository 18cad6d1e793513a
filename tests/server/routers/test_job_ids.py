"""A job named by a unique prefix of its id, over real HTTP (SQLite and PostgreSQL): tables
cut ids short and people type the first few characters. A prefix is looked up in the
caller's workspace only: another workspace's job is never found, nor makes it ambiguous."""

from __future__ import annotations

import sys
import time

import pytest

from kaon.core.errors import ConflictError, NotFoundError
from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from tests.conftest import RunningServer

PY = sys.executable
SLEEPER = [PY, "-c", "import time; print('up', flush=True); time.sleep(60)"]


def prefix(job_id: str) -> str:
    """Short enough to be a prefix, long enough that two random ids never share it."""
    return job_id[:-2]


class TestUniquePrefix:
    def test_get_logs_and_metrics_take_a_prefix(self, client: Client) -> None:
        job = client.jobs.submit([PY, "-c", "print('hi')"], cpu=0.5)
        done = client.jobs.wait(prefix(job.id), timeout=30)
        assert (done.id, done.status) == (job.id, JobStatus.SUCCEEDED)
        assert client.jobs.get(prefix(job.id)).id == job.id
        assert client.jobs.logs(prefix(job.id)) == "hi\n"
        assert "".join(client.jobs.follow(prefix(job.id))) == "hi\n"
        assert client.jobs.metrics(prefix(job.id)) == []

    def test_cancel_takes_a_prefix(self, client: Client) -> None:
        job = client.jobs.submit(SLEEPER, cpu=0.5)
        _wait_for_log(client, job.id, "up")
        asked = client.jobs.cancel(prefix(job.id))
        assert asked.id == job.id
        done = client.jobs.wait(job.id, timeout=30)
        # The message set on cancel outlives the stop: it must read true once cancelled.
        assert (done.status, done.message) == (JobStatus.CANCELLED, "cancelled by a user")

    def test_no_match_is_404_like_a_missing_id(self, client: Client) -> None:
        job = client.jobs.submit([PY, "-c", "pass"], cpu=0.5)
        for name in ("j-zz", job.id.upper(), "j-_", job.id + "0"):  # case, LIKE's wildcard
            with pytest.raises(NotFoundError, match="not found"):
                client.jobs.get(name)
        client.jobs.wait(job.id, timeout=30)

    def test_an_ambiguous_prefix_is_409_naming_the_candidates(self, client: Client) -> None:
        first = client.jobs.submit([PY, "-c", "pass"], cpu=0.5)
        second = client.jobs.submit([PY, "-c", "pass"], cpu=0.5)
        for call in (client.jobs.get, client.jobs.cancel, client.jobs.logs, client.jobs.metrics):
            with pytest.raises(ConflictError, match="several job ids") as e:
                call("j-")
            assert first.id in str(e.value) and second.id in str(e.value)
        for job in (first, second):
            client.jobs.wait(job.id, timeout=30)


class TestPrefixStaysInItsWorkspace:
    def test_another_workspaces_job_is_never_found_or_counted(self, server: RunningServer) -> None:
        admin = server.client()
        admin.workspaces.create("team-b")
        secret = admin.tokens.create("b-only", workspaces=["team-b"]).token
        team_b = server.client(token=secret, workspace="team-b")
        theirs = team_b.jobs.submit([PY, "-c", "pass"], cpu=0.5)
        ours = admin.jobs.submit([PY, "-c", "pass"], cpu=0.5)
        # "j-" starts both ids, yet each workspace sees only its own job: not ambiguous.
        assert admin.jobs.get("j-").id == ours.id
        assert team_b.jobs.get("j-").id == theirs.id
        for call in (admin.jobs.get, admin.jobs.cancel, admin.jobs.logs, admin.jobs.metrics):
            with pytest.raises(NotFoundError):
                call(prefix(theirs.id))
        with pytest.raises(NotFoundError):
            team_b.jobs.get(prefix(ours.id))
        assert admin.jobs.wait(ours.id, timeout=30).status is JobStatus.SUCCEEDED
        assert team_b.jobs.wait(theirs.id, timeout=30).status is JobStatus.SUCCEEDED


def _wait_for_log(client: Client, job_id: str, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in client.jobs.logs(job_id):
        assert time.monotonic() < deadline, f"{text!r} never appeared in the log"
        time.sleep(0.05)
