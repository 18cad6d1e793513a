"""The retention loop: what `decide` removes (a table of cases), and the loop on real
folders and a real database (SQLite and PostgreSQL), times moved back by editing rows: a
finished job's run folder and checkpoints go after the retention, a checkpoint that a
deployment or a model version uses never does, a snapshot goes once nothing that has not
expired names it; and a real job's logs stay readable until its run folder goes."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from kaon.server.db.models import (
    Deployment,
    Job,
    Metric,
    Model,
    ModelVersion,
    Snapshot,
    Workspace,
)
from kaon.server.db.session import Database
from kaon.server.reconcilers.retention import (
    Disk,
    Holds,
    JobFacts,
    Retention,
    SnapshotFacts,
    Sweep,
    decide,
    expired,
)
from kaon.server.services.auth import ensure_default_workspace
from kaon.server.services.snapshots import snapshot_path
from tests.conftest import RunningServer
from tests.server.conftest import PlaneFactory

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAYS = timedelta(days=30)
OLD = NOW - DAYS - timedelta(seconds=1)  # just past the retention
RECENT = NOW - DAYS + timedelta(seconds=1)  # just within it
WS = "w-1"
SHA_A, SHA_B = "a" * 64, "b" * 64


def job(job_id: str, finished_at: datetime | None, snapshot: str | None = None) -> JobFacts:
    return JobFacts(job_id, WS, finished_at, snapshot)


class TestDecide:
    @pytest.mark.parametrize(
        ("finished_at", "gone"),
        [(None, False), (RECENT, False), (NOW - DAYS, False), (OLD, True)],
        ids=["running", "recent", "exactly-the-retention", "past-it"],
    )
    def test_expired(self, finished_at: datetime | None, gone: bool) -> None:
        assert expired(finished_at, NOW, DAYS) is gone

    def test_naive_times_are_utc(self) -> None:  # as SQLite gives them back
        assert expired(OLD.replace(tzinfo=None), NOW, DAYS)

    @pytest.mark.parametrize(
        ("jobs", "disk", "holds", "expected"),
        [
            pytest.param(
                [job("j-old", OLD), job("j-new", RECENT), job("j-run", None)],
                Disk(frozenset({"j-old", "j-new", "j-run"}), frozenset({"j-old", "j-new"})),
                Holds(),
                Sweep(run_folders=("j-old",), checkpoints=("j-old",)),
                id="only-what-ended-past-the-retention",
            ),
            pytest.param(
                [job("j-served", OLD), job("j-model", OLD), job("j-free", OLD)],
                Disk(frozenset(), frozenset({"j-served", "j-model", "j-free"})),
                Holds(checkpoints=frozenset({"j-served", "j-model"})),
                Sweep(checkpoints=("j-free",)),
                id="held-checkpoints-stay",
            ),
            pytest.param(
                [job("j-old", OLD)],
                Disk(frozenset({"j-old", "j-unknown"}), frozenset({"j-unknown"})),
                Holds(),
                Sweep(run_folders=("j-old",)),
                id="folders-without-a-job-stay",
            ),
            pytest.param(
                [job("j-old", OLD)],
                Disk(),
                Holds(),
                Sweep(),
                id="nothing-on-disk-nothing-to-do",
            ),
        ],
    )
    def test_folders(
        self, jobs: list[JobFacts], disk: Disk, holds: Holds, expected: Sweep
    ) -> None:
        assert decide(NOW, DAYS, disk, {j.id: j for j in jobs}, [], holds) == expected

    @pytest.mark.parametrize(
        ("jobs", "snapshots", "holds", "expected"),
        [
            pytest.param(
                [], [SnapshotFacts(WS, SHA_A, OLD)], Holds(), ((WS, SHA_A),), id="unused-old"
            ),
            pytest.param([], [SnapshotFacts(WS, SHA_A, RECENT)], Holds(), (), id="unused-recent"),
            pytest.param(
                [job("j-run", None, SHA_A)],
                [SnapshotFacts(WS, SHA_A, OLD)],
                Holds(),
                (),
                id="a-running-job-keeps-it",
            ),
            pytest.param(
                [job("j-new", RECENT, SHA_A)],
                [SnapshotFacts(WS, SHA_A, OLD)],
                Holds(),
                (),
                id="a-recently-ended-job-keeps-it",
            ),
            pytest.param(
                [job("j-old", OLD, SHA_A)],
                [SnapshotFacts(WS, SHA_A, OLD)],
                Holds(),
                ((WS, SHA_A),),
                id="an-expired-job-does-not",
            ),
            pytest.param(
                [],
                [SnapshotFacts(WS, SHA_A, OLD), SnapshotFacts(WS, SHA_B, OLD)],
                Holds(snapshots=frozenset({(WS, SHA_B)})),
                ((WS, SHA_A),),
                id="a-deployment-keeps-it",
            ),
            pytest.param(
                [job("j-run", None, SHA_A)],
                [SnapshotFacts("w-other", SHA_A, OLD)],
                Holds(),
                (("w-other", SHA_A),),
                id="another-workspaces-job-keeps-only-its-own",
            ),
        ],
    )
    def test_snapshots(
        self,
        jobs: list[JobFacts],
        snapshots: list[SnapshotFacts],
        holds: Holds,
        expected: tuple[tuple[str, str], ...],
    ) -> None:
        sweep = decide(NOW, DAYS, Disk(), {j.id: j for j in jobs}, snapshots, holds)
        assert sweep.snapshots == expected

    def test_a_pass_takes_a_batch_and_says_more(self) -> None:
        jobs = {f"j-{i:03}": job(f"j-{i:03}", OLD) for i in range(5)}
        disk = Disk(frozenset(jobs), frozenset())
        first = decide(NOW, DAYS, disk, jobs, [], Holds(), batch=3)
        assert first.run_folders == ("j-000", "j-001", "j-002") and first.more
        rest = decide(NOW, DAYS, Disk(frozenset({"j-003", "j-004"})), jobs, [], Holds(), batch=3)
        assert rest.run_folders == ("j-003", "j-004") and not rest.more


def make_folder(root: Path, job_id: str, name: str) -> Path:
    folder = root / job_id
    (folder / "1" / "0").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "0" / name).write_text("x")
    return folder


class TestLoop:
    async def test_expired_work_goes_and_held_work_stays(self, make_plane: PlaneFactory) -> None:
        plane = await make_plane()
        settings, db = plane.settings, plane.db
        now = NOW
        async with db.session() as s:
            ws = await ensure_default_workspace(s)
            for job_id, status, finished, snapshot in (
                ("j-old", JobStatus.SUCCEEDED, OLD, SHA_A),
                ("j-served", JobStatus.SUCCEEDED, OLD, None),
                ("j-model", JobStatus.FAILED, OLD, None),
                ("j-new", JobStatus.CANCELLED, RECENT, SHA_B),
                ("j-running", JobStatus.RUNNING, None, None),
                ("j-requeued", JobStatus.QUEUED, OLD, None),  # ended once, resumes
            ):
                s.add(
                    Job(
                        id=job_id,
                        workspace_id=ws,
                        spec={"command": ["true"], "snapshot": snapshot},
                        status=status.value,
                        submitted_at=OLD - DAYS,
                        finished_at=finished,
                    )
                )
            await s.flush()
            s.add(Metric(job_id="j-old", worker=0, time=OLD.timestamp(), name="loss", value=1.0))
            s.add(
                Deployment(
                    id="d-1",
                    workspace_id=ws,
                    name="served",
                    spec={"name": "served", "from_job": "j-served"},
                )
            )
            s.add(Model(id="m-1", workspace_id=ws, name="m", created_by="admin"))
            await s.flush()
            s.add(
                ModelVersion(
                    id="mv-1",
                    model_id="m-1",
                    version=1,
                    artifact_id="a-1",
                    artifact_ref="m:1",
                    source_job_id="j-model",
                    created_by="admin",
                )
            )
            for sha in (SHA_A, SHA_B):
                s.add(Snapshot(workspace_id=ws, sha256=sha, size=10, created_at=OLD - DAYS))
            await s.commit()
        for job_id in ("j-old", "j-served", "j-model", "j-new", "j-running", "j-requeued"):
            make_folder(settings.runs_dir, job_id, "log")
            make_folder(settings.checkpoints_dir, job_id, "model.pt")
        for sha in (SHA_A, SHA_B):
            path = snapshot_path(settings.blobs_dir, sha)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"tar.gz")
        outside = settings.runs_dir / "not-a-job"
        outside.mkdir()

        loop = Retention(
            db,
            settings.runs_dir,
            settings.checkpoints_dir,
            settings.blobs_dir,
            DAYS.total_seconds(),
            3600,
            clock=lambda: now,
        )
        assert await loop.run_once() is False

        runs = {p.name for p in settings.runs_dir.iterdir()}
        assert runs == {"j-new", "j-running", "j-requeued", "not-a-job"}
        checkpoints = {p.name for p in settings.checkpoints_dir.iterdir()}
        assert checkpoints == {"j-served", "j-model", "j-new", "j-running", "j-requeued"}
        assert not snapshot_path(settings.blobs_dir, SHA_A).exists()
        assert snapshot_path(settings.blobs_dir, SHA_B).exists()  # j-new has not expired
        async with db.session() as s:
            kept = set((await s.execute(select(Snapshot.sha256))).scalars())
            metrics = list((await s.execute(select(Metric.name))).scalars())
            jobs = set((await s.execute(select(Job.id))).scalars())
        assert kept == {SHA_B}
        assert metrics == ["loss"]  # a job's reported metrics and its row stay
        assert "j-old" in jobs

        now = RECENT + DAYS + timedelta(seconds=2)  # j-new's turn
        assert await loop.run_once() is False
        runs = {p.name for p in settings.runs_dir.iterdir()}
        assert runs == {"j-running", "j-requeued", "not-a-job"}
        assert not snapshot_path(settings.blobs_dir, SHA_B).exists()
        checkpoints = {p.name for p in settings.checkpoints_dir.iterdir()}
        assert checkpoints == {"j-served", "j-model", "j-running", "j-requeued"}  # held ones

    async def test_a_snapshot_another_workspace_holds_keeps_its_file(
        self, make_plane: PlaneFactory
    ) -> None:
        plane = await make_plane()
        settings, db = plane.settings, plane.db
        async with db.session() as s:
            ws = await ensure_default_workspace(s)
            s.add(Workspace(id="w-other", name="other"))
            await s.flush()
            s.add(Snapshot(workspace_id=ws, sha256=SHA_A, size=10, created_at=OLD))
            s.add(Snapshot(workspace_id="w-other", sha256=SHA_A, size=10, created_at=NOW))
            await s.commit()
        path = snapshot_path(settings.blobs_dir, SHA_A)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"tar.gz")
        loop = Retention(
            db, settings.runs_dir, settings.checkpoints_dir, settings.blobs_dir, 30 * 86400, 60
        )
        loop.clock = lambda: NOW
        await loop.run_once()
        async with db.session() as s:
            rows = set((await s.execute(select(Snapshot.workspace_id))).scalars())
        assert rows == {"w-other"}
        assert path.exists()


class TestARealJob:
    def test_logs_readable_until_the_run_folder_goes(
        self, server: RunningServer, client: Client, tmp_path: Path
    ) -> None:
        code = tmp_path / "code"
        code.mkdir()
        (code / "main.py").write_text("print('retained-output')\n")
        job = client.jobs.submit([sys.executable, "main.py"], workdir=code, cpu=0.5)
        assert client.jobs.wait(job.id, timeout=60).status is JobStatus.SUCCEEDED
        assert "retained-output" in client.jobs.logs(job.id)
        settings = server.settings
        assert (settings.runs_dir / job.id).is_dir()
        assert client.storage()["snapshots"] > 0

        async def age_and_sweep() -> bool:
            db = Database(settings.database_url)
            try:
                async with db.session() as s:
                    past = datetime.now(UTC) - timedelta(days=31)
                    await s.execute(update(Job).where(Job.id == job.id).values(finished_at=past))
                    await s.execute(update(Snapshot).values(created_at=past))
                    await s.commit()
                loop = Retention(
                    db,
                    settings.runs_dir,
                    settings.checkpoints_dir,
                    settings.blobs_dir,
                    30 * 86400,
                    60,
                )
                return await loop.run_once()
            finally:
                await db.dispose()

        assert asyncio.run(age_and_sweep()) is False
        assert not (settings.runs_dir / job.id).exists()
        assert client.storage()["snapshots"] == 0  # the room it took is free again
        assert client.jobs.get(job.id).status is JobStatus.SUCCEEDED  # the record stays
        assert "retained-output" not in client.jobs.logs(job.id)
