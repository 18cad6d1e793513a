"""A job's code and checkpoint files over real HTTP, on SQLite and PostgreSQL: what a node
of a remote executor fetches and mirrors with the job's own tokens.

Requests are sent raw with httpx, so the checks see exactly the status codes, headers and
bytes a node gets.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kaon.core.jobs import JobStatus, JobView
from kaon.server.config import normalize_database_url
from kaon.server.security.tokens import job_token, load_token_key
from tests.conftest import (
    ADMIN_TOKEN,
    PG_ENV,
    RunningServer,
    ThreadServer,
    _pg_admin_url,
    _pg_database,
    _pg_exec,
)
from tests.conftest import test_settings as make_settings

PY = sys.executable
LIMIT = 10 * 2**20  # the checkpoint upload limit here: over the 8 MiB JSON limit
SLEEP = [PY, "-c", "import time; time.sleep(60)"]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One server per database for the module, with a 10 MiB checkpoint upload limit.

    Starting a server (and a PostgreSQL database) costs about a second; each test makes
    jobs of its own and stops them, so they can share one."""
    tmp = tmp_path_factory.mktemp(f"job-files-{request.param}")
    name = None
    if request.param == "sqlite":
        url = normalize_database_url(str(tmp / "kaon.db"))
    else:
        admin = _pg_admin_url()
        if admin is None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{PG_ENV} must be set in CI")
            pytest.skip(f"set {PG_ENV} to run against PostgreSQL")
        name = f"kaon_test_{secrets.token_hex(6)}"
        asyncio.run(_pg_exec(admin, f'CREATE DATABASE "{name}"'))
        url = normalize_database_url(_pg_database(admin, name))
    try:
        settings = make_settings(tmp / "home", url, checkpoint_upload_limit=LIMIT)
        with ThreadServer(settings) as running:
            yield running
    finally:
        if name is not None:
            admin = _pg_admin_url()
            assert admin is not None
            asyncio.run(_pg_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Job:
    """A job of the test server, and raw HTTP to its files with a token of its own."""

    def __init__(self, api: RunningServer, view: JobView) -> None:
        self.api = api
        self.id = view.id
        self.view = view

    def token(self, attempt: int) -> str:
        return job_token(load_token_key(self.api.settings.home), self.id, attempt)

    def http(self, token: str | None) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=f"{self.api.url}/api/v1/jobs/{self.id}", headers=headers)

    @property
    def folder(self) -> Path:
        """The control plane's checkpoint folder for the job (the local executor's)."""
        return self.api.settings.checkpoints_dir / self.id


def _start(api: RunningServer, command: list[str], **options: object) -> Job:
    with api.client() as client:
        view = client.jobs.submit(command, cpu=0.5, **options)  # type: ignore[arg-type]
    return Job(api, view)


def _wait(job: Job, restarts: int = 0) -> None:
    """Until the job runs its attempt number ``restarts + 1``."""
    deadline = time.monotonic() + 30
    with job.api.client() as client:
        while True:
            view = client.jobs.get(job.id)
            if view.status is JobStatus.RUNNING and view.restart_count == restarts:
                job.view = view
                return
            assert view.status is not JobStatus.FAILED, view.message
            assert time.monotonic() < deadline, f"job never ran attempt {restarts + 1}: {view}"
            time.sleep(0.05)


def _stop(job: Job) -> None:
    with job.api.client() as client:
        client.jobs.cancel(job.id)
        client.jobs.wait(job.id, timeout=30)


@pytest.fixture
def job(api: RunningServer) -> Iterator[Job]:
    """A running job on its first attempt (no code snapshot)."""
    started = _start(api, SLEEP)
    _wait(started)
    yield started
    _stop(started)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _put(http: httpx.Client, path: str, data: bytes, sha: str | None = None) -> httpx.Response:
    return http.put(
        f"/checkpoints/{path}", content=data, headers={"X-Kaon-Sha256": sha or _sha(data)}
    )


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".kaon-part-*")]


class TestCheckpointFiles:
    def test_upload_list_download_delete_round_trip(self, job: Job) -> None:
        files = {
            "step-000000001/model.pt": b"weights" * 1000,
            "step-000000001/manifest.json": b'{"step": 1}',
            "notes #1 & more.txt": b"a name that needs quoting",
        }
        with job.http(job.token(1)) as http:
            for path, data in files.items():
                response = _put(http, path.replace("#", "%23"), data)
                assert response.status_code == 200, response.text
                assert response.json() == {"path": path, "size": len(data), "sha256": _sha(data)}
            listing = http.get("/checkpoints").json()
            assert listing == [
                {"path": p, "size": len(d), "sha256": _sha(d)} for p, d in sorted(files.items())
            ]
            for path, data in files.items():
                response = http.get(f"/checkpoints/{path.replace('#', '%23')}")
                assert response.status_code == 200
                assert response.content == data
                assert response.headers["content-length"] == str(len(data))
            # The files are where the local executor keeps checkpoints (deploy --from-job).
            assert (job.folder / "step-000000001" / "model.pt").read_bytes() == files[
                "step-000000001/model.pt"
            ]
            for path in ("step-000000001/model.pt", "step-000000001/manifest.json"):
                assert http.delete(f"/checkpoints/{path}").status_code == 204
                assert http.delete(f"/checkpoints/{path}").status_code == 204  # idempotent
            assert [e["path"] for e in http.get("/checkpoints").json()] == ["notes #1 & more.txt"]
            assert http.get("/checkpoints/step-000000001/model.pt").status_code == 404
        assert not (job.folder / "step-000000001").exists()  # emptied folders go too
        assert _leftovers(job.folder) == []

    def test_upload_replaces_a_file_atomically(self, job: Job) -> None:
        with job.http(job.token(1)) as http:
            assert _put(http, "state.pt", b"old").status_code == 200
            assert _put(http, "state.pt", b"new contents").status_code == 200
            assert http.get("/checkpoints/state.pt").content == b"new contents"
        assert _leftovers(job.folder) == []

    def test_a_wrong_sha256_is_refused_and_nothing_replaced(self, job: Job) -> None:
        with job.http(job.token(1)) as http:
            assert _put(http, "model.pt", b"good").status_code == 200
            response = _put(http, "model.pt", b"corrupted in transit", sha=_sha(b"other"))
            assert response.status_code == 422
            assert response.json()["field"] == "X-Kaon-Sha256"
            assert _put(http, "fresh.pt", b"x", sha=_sha(b"y")).status_code == 422
            assert http.get("/checkpoints/model.pt").content == b"good"
            assert [e["path"] for e in http.get("/checkpoints").json()] == ["model.pt"]
            missing = http.put("/checkpoints/model.pt", content=b"no header")
            assert missing.status_code == 422
            assert missing.json()["field"] == "X-Kaon-Sha256"
        assert _leftovers(job.folder) == []

    @pytest.mark.parametrize(
        "path",
        [
            "%2E%2E/escaped",
            "a/%2E%2E/%2E%2E/escaped",
            "%2Ftmp/escaped",
            "%2E/a",
            "a//b",
            "a%5C..%5C..%5Cescaped",
            "a%00b",
            "a%01b",
            ".kaon-part-x",
            "x" * 513,
        ],
        ids=["dotdot", "dotdot-inside", "absolute", "dot", "empty-part", "backslash", "nul",
             "control", "reserved", "too-long"],
    )  # fmt: skip
    def test_a_bad_path_is_422_naming_path(self, job: Job, path: str) -> None:
        with job.http(job.token(1)) as http:
            for method in ("GET", "PUT", "DELETE"):
                response = http.request(
                    method,
                    f"/checkpoints/{path}",
                    content=b"x" if method == "PUT" else None,
                    headers={"X-Kaon-Sha256": _sha(b"x")},
                )
                assert response.status_code == 422, (method, response.text)
                assert response.json()["field"] == "path"
        outside = job.folder.parent
        assert not (outside / "escaped").exists()
        assert not (outside.parent / "escaped").exists()
        assert not list(Path("/tmp").glob("escaped"))

    def test_the_longest_path_allowed_works(self, job: Job) -> None:
        path = "d/" + "x" * 200 + "/" + "y" * 200 + "/" + "z" * (512 - 404)
        with job.http(job.token(1)) as http:
            assert _put(http, path, b"deep").status_code == 200
            assert http.get(f"/checkpoints/{path}").content == b"deep"

    def test_symlinks_in_the_folder_are_never_followed(self, job: Job, tmp_path: Path) -> None:
        secret = tmp_path / "secret.txt"
        secret.write_text("not the job's")
        job.folder.mkdir(parents=True, exist_ok=True)
        (job.folder / "link-dir").symlink_to(tmp_path, target_is_directory=True)
        (job.folder / "link-file").symlink_to(secret)
        with job.http(job.token(1)) as http:
            assert http.get("/checkpoints").json() == []
            assert http.get("/checkpoints/link-file").status_code == 404
            assert http.get("/checkpoints/link-dir/secret.txt").status_code == 404
            assert _put(http, "link-dir/planted.txt", b"x").status_code == 409
            assert http.delete("/checkpoints/link-dir/secret.txt").status_code == 204
        assert secret.read_text() == "not the job's"
        assert not (tmp_path / "planted.txt").exists()

    def test_a_file_over_8_mib_streams_both_ways(self, job: Job) -> None:
        data = os.urandom(9 * 2**20)
        chunks = (data[i : i + 2**20] for i in range(0, len(data), 2**20))  # chunked upload
        with job.http(job.token(1)) as http:
            response = http.put(
                "/checkpoints/big.pt", content=chunks, headers={"X-Kaon-Sha256": _sha(data)}
            )
            assert response.status_code == 200, response.text
            with http.stream("GET", "/checkpoints/big.pt") as download:
                assert download.headers["content-length"] == str(len(data))
                pieces = list(download.iter_raw())
        assert len(pieces) > 1  # streamed, not one body
        assert b"".join(pieces) == data

    def test_an_upload_over_the_limit_is_413(self, job: Job) -> None:
        data = b"z" * (LIMIT + 1)
        chunks = (data[i : i + 2**20] for i in range(0, len(data), 2**20))
        with job.http(job.token(1)) as http:
            declared = _put(http, "huge.pt", data)  # refused from its Content-Length
            assert declared.status_code == 413
            assert declared.json()["error"] == "PayloadTooLargeError"
            streamed = http.put(
                "/checkpoints/huge.pt", content=chunks, headers={"X-Kaon-Sha256": _sha(data)}
            )
            assert streamed.status_code == 413  # refused once the count passes the limit
            assert http.get("/checkpoints").json() == []
        assert _leftovers(job.folder) == []


class TestJobTokens:
    def test_tokens_of_other_jobs_and_api_tokens_are_401(
        self, api: RunningServer, job: Job
    ) -> None:
        other = _start(api, [PY, "-c", "pass"])
        other_token = job_token(load_token_key(api.settings.home), other.id, 1)
        with job.http(job.token(1)) as http:
            assert _put(http, "mine.pt", b"mine").status_code == 200
        for token in (other_token, ADMIN_TOKEN, "kjob_" + "0" * 64, None):
            with job.http(token) as http:
                calls = [
                    http.get("/code"),
                    http.get("/checkpoints"),
                    http.get("/checkpoints/mine.pt"),
                    _put(http, "mine.pt", b"theirs"),
                    http.delete("/checkpoints/mine.pt"),
                ]
            assert [c.status_code for c in calls] == [401] * 5, token
            assert calls[0].headers["WWW-Authenticate"] == "Bearer"
        assert (job.folder / "mine.pt").read_bytes() == b"mine"

    def test_a_job_that_does_not_exist_is_401(self, api: RunningServer) -> None:
        token = job_token(load_token_key(api.settings.home), "j-000000000000", 1)
        with httpx.Client(base_url=f"{api.url}/api/v1/jobs/j-000000000000") as http:
            headers = {"Authorization": f"Bearer {token}"}
            assert http.get("/checkpoints", headers=headers).status_code == 401
            assert http.get("/code", headers=headers).status_code == 401

    def test_an_old_attempts_token_works_for_checkpoints_not_code(
        self, api: RunningServer, tmp_path: Path
    ) -> None:
        (tmp_path / "train.py").write_text("print('training')\n")
        # Attempt 1 fails at once; attempt 2 (a retry) runs until it is cancelled.
        code = (
            "import os, sys, time\n"
            "if os.environ['KAON_RESTART_COUNT'] == '0': sys.exit(5)\n"
            "time.sleep(60)\n"
        )
        job = _start(api, [PY, "-c", code], max_retries=1, workdir=tmp_path)
        _wait(job, restarts=1)
        old, current = job.token(1), job.token(2)
        with job.http(old) as http:
            assert _put(http, "last-words.pt", b"saved as it was preempted").status_code == 200
            assert http.get("/checkpoints/last-words.pt").status_code == 200
            assert http.get("/code").status_code == 401
        with job.http(current) as http:
            tarball = http.get("/code")
            assert tarball.status_code == 200
            assert tarball.headers["content-type"] == "application/gzip"
            assert _sha(tarball.content) == job.view.spec.snapshot
            assert tarball.headers["X-Kaon-Sha256"] == job.view.spec.snapshot
            assert http.get("/checkpoints/last-words.pt").content == b"saved as it was preempted"
        with job.http(job.token(3)) as http:  # an attempt that has not happened yet
            assert http.get("/checkpoints").status_code == 401
        _stop(job)
        with job.http(current) as http:
            # The attempt ended: its token no longer fetches code, but can still push the
            # checkpoint its worker wrote as it stopped.
            assert http.get("/code").status_code == 401
            assert _put(http, "final.pt", b"after the end").status_code == 200


class TestCode:
    def test_a_job_without_a_snapshot_has_no_code(self, job: Job) -> None:
        with job.http(job.token(1)) as http:
            response = http.get("/code")
        assert response.status_code == 404
        assert response.json()["error"] == "NotFoundError"
