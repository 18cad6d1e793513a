"""Limits a member cannot exceed, over real HTTP (SQLite and PostgreSQL): workers per job,
jobs waiting per workspace, and what a code snapshot unpacks to. Each refusal names its
limit; and cancelling a job stops a launch still in progress.
"""

from __future__ import annotations

import asyncio
import io
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from kaon.core.jobs import JobSpec, JobStatus
from kaon.executors.local import LocalExecutor, _host_env, read_json
from kaon.server.services import jobs
from kaon.server.wake import Wake
from tests.conftest import ADMIN_TOKEN, test_settings
from tests.security.conftest import QuietServer
from tests.server.conftest import PlaneFactory, admin, step_until, submit

PY = sys.executable
JOBS = "/api/v1/workspaces/{}/jobs"
MAX_WORKERS = 4
MAX_QUEUED = 3
UNPACKED = 2**20
FILES = 50


@pytest.fixture
def api(tmp_path: Path, db_url: str) -> Iterator[httpx.Client]:
    """A control plane with small limits and no reconcilers (so submitted jobs stay
    queued), and an admin client of it."""
    settings = test_settings(
        tmp_path / "home",
        db_url,
        max_workers_per_job=MAX_WORKERS,
        max_queued_jobs=MAX_QUEUED,
        unpacked_limit=UNPACKED,
        unpacked_files_limit=FILES,
    )
    with QuietServer(settings) as running:
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=running.url, headers=auth) as http:
            yield http


def _spec(**fields: object) -> dict[str, object]:
    return {"command": [PY, "-c", "pass"], "resources": {"cpu": 0.5}, **fields}


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class TestWorkersPerJob:
    def test_a_gang_over_the_limit_is_422_naming_it(self, api: httpx.Client) -> None:
        response = api.post(JOBS.format("default"), json=_spec(workers=MAX_WORKERS + 1))
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "workers"
        assert "KAON_MAX_WORKERS_PER_JOB" in response.json()["detail"]
        assert api.post(JOBS.format("default"), json=_spec(workers=MAX_WORKERS)).status_code == 201


class TestQueuedJobs:
    def test_a_full_queue_is_429_with_retry_after(self, api: httpx.Client) -> None:
        ids = [api.post(JOBS.format("default"), json=_spec()).json()["id"] for _ in range(3)]
        assert len(ids) == MAX_QUEUED
        refused = api.post(JOBS.format("default"), json=_spec())
        assert refused.status_code == 429, refused.text
        assert refused.json()["limit"] == "max_queued_jobs"
        assert "KAON_MAX_QUEUED_JOBS" in refused.json()["detail"]
        assert int(refused.headers["Retry-After"]) > 0
        assert len(api.get(JOBS.format("default")).json()) == MAX_QUEUED  # nothing stored

        # The limit is the workspace's: another one still submits.
        assert api.post("/api/v1/workspaces", json={"name": "team-b"}).status_code == 201
        assert api.post(JOBS.format("team-b"), json=_spec()).status_code == 201

        # A cancelled job leaves the queue, and makes room.
        cancel = api.post(f"{JOBS.format('default')}/{ids[0]}/cancel")
        assert cancel.json()["status"] == "cancelled"
        assert api.post(JOBS.format("default"), json=_spec()).status_code == 201


class TestSnapshotSize:
    def test_a_bomb_is_refused_by_its_unpacked_size(self, api: httpx.Client) -> None:
        bomb = _tar_gz({"zeros": bytes(2 * UNPACKED)})
        assert len(bomb) < UNPACKED / 100  # small as uploaded: only unpacking shows it
        response = api.post("/api/v1/workspaces/default/snapshots", content=bomb)
        assert response.status_code == 413, response.text
        assert "KAON_UNPACKED_LIMIT" in response.json()["detail"]

    def test_too_many_files_is_refused(self, api: httpx.Client) -> None:
        many = _tar_gz({f"f{i}": b"" for i in range(FILES + 1)})
        response = api.post("/api/v1/workspaces/default/snapshots", content=many)
        assert response.status_code == 413, response.text
        assert "KAON_UNPACKED_FILES_LIMIT" in response.json()["detail"]

    def test_not_a_tar_gz_is_422(self, api: httpx.Client) -> None:
        response = api.post("/api/v1/workspaces/default/snapshots", content=b"x" * 100)
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "body"

    def test_one_within_the_limits_is_kept(self, api: httpx.Client) -> None:
        fine = _tar_gz({"train.py": b"print(1)\n", "data.bin": bytes(UNPACKED // 2)})
        response = api.post("/api/v1/workspaces/default/snapshots", content=fine)
        assert response.status_code == 201, response.text
        sha = response.json()["sha256"]
        assert api.head(f"/api/v1/workspaces/default/snapshots/{sha}").status_code == 200


class TestCancelDuringLaunch:
    async def test_stops_the_launch_and_every_started_worker(
        self, make_plane: PlaneFactory
    ) -> None:
        """A 40-worker gang on a machine where each start takes 50 ms (two seconds in
        all): the job is cancelled a quarter of the way through, and the rest of the gang
        is never started."""
        plane = await make_plane()
        local = plane.executor.get("local")  # type: ignore[attr-defined]
        assert isinstance(local, LocalExecutor)

        def slow_env() -> dict[str, str]:
            time.sleep(0.05)
            return _host_env()

        local.host_env = slow_env
        spec = JobSpec.model_validate(
            {"command": [PY, "-c", "import time; time.sleep(60)"], "workers": 40,
             "resources": {"cpu": 0.1, "memory": "64Mi"}}
        )  # fmt: skip
        job = await submit(plane, spec)
        launching = asyncio.create_task(plane.jobs.run_once())
        await asyncio.sleep(0.5)
        caller = await admin(plane)
        async with plane.db.unit_of_work() as s:
            await jobs.cancel(s, caller, "default", job.id, Wake())
        await launching
        started = list((plane.settings.runs_dir / job.id / "1").glob("*/pid.json"))
        assert 0 < len(started) < 30, f"{len(started)} of 40 workers were started"

        async def cancelled() -> bool:
            async with plane.db.unit_of_work() as s:
                view = await jobs.get(s, caller, "default", job.id)
            return view.status is JobStatus.CANCELLED

        await step_until(plane, cancelled, "the cancelled job to end")
        # A supervisor may outlive its worker's exit by a moment (it writes the exit status,
        # then exits): wait for that, well short of the 60 s a worker left running sleeps.
        deadline = time.monotonic() + 15
        alive = [path.parent.name for path in started if _runs(path.parent)]
        while alive and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            alive = [path.parent.name for path in started if _runs(path.parent)]
        assert alive == [], f"workers {alive} still run"


def _runs(worker_dir: Path) -> bool:
    """Whether the worker's supervisor or its command is still a living process."""
    for name in ("pid.json", "child.json"):
        info = read_json(worker_dir / name)
        if info is None:
            continue
        try:
            if psutil.Process(int(info["pid"])).status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            pass
    return False
