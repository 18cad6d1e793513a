"""The retention loop: removes what finished work left on disk once it is older than the
server keeps it (``KAON_RETENTION_DAYS``, 30 by default).

What goes, and when (decided by `decide`, a pure function of what is on disk and what
the database says):

- a job's **run folder** (its logs, launch files, code copy, outputs folder), once the
  job ended longer ago than the retention. Its logs are readable until then; the job's
  row, its reported metrics and the artifacts it kept stay;
- a job's **checkpoints**, at the same time, unless a deployment serves them
  (``from_job``, or a model folder inside them) or a registered model version was made
  from them: those are never removed;
- a workspace's **code snapshot**, once it was uploaded longer ago than the retention and
  no job that has not expired, no deployment and no model version names it. The file
  goes when no workspace holds it any more.

Folders with no job row (a job of a deleted workspace) are left alone, and so is anything
not named like a job. Each pass does at most `BATCH` removals and answers "more to do"
when it had more; the loop otherwise wakes rarely (``retention_interval_s``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.jobs import JobStatus
from kaon.server.db.models import Deployment, Job, Model, ModelVersion, Snapshot, utcnow
from kaon.server.db.session import Database
from kaon.server.reconcilers.loop import Loop
from kaon.server.services.snapshots import snapshot_path

BATCH = 200  # removals per pass: a pass stays short however much expired at once
QUERY_CHUNK = 500  # ids per IN (...) query
FINAL = tuple(s.value for s in JobStatus if s.is_terminal())
logger = logging.getLogger("kaon.retention")


@dataclass(frozen=True)
class JobFacts:
    """What retention needs to know of one job."""

    id: str
    workspace_id: str
    finished_at: datetime | None  # None while it has not ended
    snapshot: str | None = None


@dataclass(frozen=True)
class SnapshotFacts:
    workspace_id: str
    sha256: str
    created_at: datetime


@dataclass(frozen=True)
class Holds:
    """What must stay whatever its age: checkpoints (by job id) a deployment or a model
    version uses, snapshots (workspace id, sha256) a deployment or model version names."""

    checkpoints: frozenset[str] = frozenset()
    snapshots: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Sweep:
    """What one pass removes."""

    run_folders: tuple[str, ...] = ()
    checkpoints: tuple[str, ...] = ()
    snapshots: tuple[tuple[str, str], ...] = ()
    more: bool = False  # past the batch: another pass is due at once

    @property
    def empty(self) -> bool:
        return not (self.run_folders or self.checkpoints or self.snapshots)


@dataclass(frozen=True)
class Disk:
    """Job ids that have a run folder, and a checkpoint folder, on this machine."""

    runs: frozenset[str] = field(default_factory=frozenset)
    checkpoints: frozenset[str] = field(default_factory=frozenset)


def expired(finished_at: datetime | None, now: datetime, retention: timedelta) -> bool:
    """Whether work that ended at `finished_at` is past the retention (never while it
    has not ended)."""
    return finished_at is not None and now - _aware(finished_at) > retention


def decide(
    now: datetime,
    retention: timedelta,
    disk: Disk,
    jobs: Mapping[str, JobFacts],
    snapshots: Iterable[SnapshotFacts],
    holds: Holds,
    batch: int = BATCH,
) -> Sweep:
    """What goes now. `jobs` holds every job with a folder on disk and every job that has
    not expired and names a snapshot (those keep their snapshots)."""
    gone = {j.id for j in jobs.values() if expired(j.finished_at, now, retention)}
    runs = sorted(disk.runs & gone)
    checkpoints = sorted((disk.checkpoints & gone) - holds.checkpoints)
    in_use = {
        (j.workspace_id, j.snapshot) for j in jobs.values() if j.snapshot and j.id not in gone
    }
    old = sorted(
        (s.workspace_id, s.sha256)
        for s in snapshots
        if now - _aware(s.created_at) > retention
        and (s.workspace_id, s.sha256) not in in_use
        and (s.workspace_id, s.sha256) not in holds.snapshots
    )
    return Sweep(
        run_folders=tuple(runs[:batch]),
        checkpoints=tuple(checkpoints[:batch]),
        snapshots=tuple(old[:batch]),
        more=max(len(runs), len(checkpoints), len(old)) > batch,
    )


def _aware(t: datetime) -> datetime:
    """SQLite gives back naive UTC times, PostgreSQL aware ones."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


class Retention(Loop):
    """Removes expired run folders, checkpoints and snapshots, one batch per pass."""

    name = "retention"

    def __init__(
        self,
        db: Database,
        runs_dir: Path,
        checkpoints_dir: Path,
        blobs_dir: Path,
        retention_s: float,
        interval_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__()
        self.db = db
        self.runs_dir, self.checkpoints_dir, self.blobs_dir = runs_dir, checkpoints_dir, blobs_dir
        self.retention = timedelta(seconds=retention_s)
        self.interval_s = interval_s
        self.clock = clock

    async def run_once(self) -> bool:
        now = self.clock()
        disk = await asyncio.to_thread(self._scan)
        cutoff = now - self.retention
        async with self.db.session() as s:
            snapshots = [
                SnapshotFacts(w, sha, t)
                for w, sha, t in (
                    await s.execute(
                        select(Snapshot.workspace_id, Snapshot.sha256, Snapshot.created_at).where(
                            Snapshot.created_at < cutoff
                        )
                    )
                ).tuples()
            ]
            jobs = await _job_facts(s, disk.runs | disk.checkpoints, cutoff, bool(snapshots))
            holds = await _holds(s, self.checkpoints_dir)
        sweep = decide(now, self.retention, disk, jobs, snapshots, holds)
        if not sweep.empty:
            await self._remove(sweep)
        return sweep.more

    def _scan(self) -> Disk:
        return Disk(
            runs=_job_folders(self.runs_dir), checkpoints=_job_folders(self.checkpoints_dir)
        )

    async def _remove(self, sweep: Sweep) -> None:
        for job_id in sweep.run_folders:
            await asyncio.to_thread(_remove_tree, self.runs_dir / job_id)
        for job_id in sweep.checkpoints:
            await asyncio.to_thread(_remove_tree, self.checkpoints_dir / job_id)
        for workspace_id, sha in sweep.snapshots:
            async with self.db.session() as s:
                await s.execute(
                    delete(Snapshot).where(
                        Snapshot.workspace_id == workspace_id, Snapshot.sha256 == sha
                    )
                )
                held = await s.scalar(select(Snapshot.sha256).where(Snapshot.sha256 == sha))
                await s.commit()
            if held is None:  # no workspace holds it any more
                snapshot_path(self.blobs_dir, sha).unlink(missing_ok=True)
        logger.info(
            "retention removed %d run folders, %d checkpoint folders, %d snapshots",
            len(sweep.run_folders),
            len(sweep.checkpoints),
            len(sweep.snapshots),
        )


def _job_folders(root: Path) -> frozenset[str]:
    """Names of the folders directly in `root` that are named like jobs (``j-...``)."""
    try:
        with os.scandir(root) as entries:
            return frozenset(
                e.name
                for e in entries
                if e.name.startswith("j-") and e.is_dir(follow_symlinks=False)
            )
    except FileNotFoundError:
        return frozenset()


def _remove_tree(path: Path) -> None:
    """Remove a folder and what is in it, never following a link out of it."""
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


async def _job_facts(
    session: AsyncSession, on_disk: Iterable[str], cutoff: datetime, with_snapshots: bool
) -> dict[str, JobFacts]:
    """Jobs with a folder on disk, and (when old snapshots are candidates) every job
    that has not expired, with the snapshot it names."""
    columns = (Job.id, Job.workspace_id, Job.status, Job.finished_at, Job.spec)
    found: dict[str, JobFacts] = {}
    ids = sorted(on_disk)
    for i in range(0, len(ids), QUERY_CHUNK):
        rows = await session.execute(select(*columns).where(Job.id.in_(ids[i : i + QUERY_CHUNK])))
        found.update({r[0]: _facts(*r) for r in rows.tuples()})
    if with_snapshots:
        live = or_(Job.finished_at.is_(None), Job.finished_at >= cutoff, Job.status.not_in(FINAL))
        rows = await session.execute(select(*columns).where(live))
        found.update({r[0]: _facts(*r) for r in rows.tuples()})
    return found


def _facts(
    job_id: str, workspace_id: str, status: str, finished_at: datetime | None, spec: object
) -> JobFacts:
    """A job's facts; one not in a final state has not ended, whatever its `finished_at`
    says (a job queued again to resume)."""
    if status not in FINAL:
        finished_at = None
    snapshot = spec.get("snapshot") if isinstance(spec, dict) else None
    return JobFacts(
        job_id, workspace_id, finished_at, snapshot if isinstance(snapshot, str) else None
    )


async def _holds(session: AsyncSession, checkpoints_dir: Path) -> Holds:
    """Checkpoints and snapshots deployments and model versions use."""
    checkpoints: set[str] = set()
    snapshots: set[tuple[str, str]] = set()
    rows = await session.execute(
        select(Deployment.workspace_id, Deployment.spec, Deployment.model_dir)
    )
    for workspace_id, spec, model_dir in rows.tuples():
        spec = spec if isinstance(spec, dict) else {}
        if isinstance(spec.get("from_job"), str):
            checkpoints.add(spec["from_job"])
        if isinstance(spec.get("snapshot"), str):
            snapshots.add((workspace_id, spec["snapshot"]))
        if model_dir:
            inside = _job_of(Path(model_dir), checkpoints_dir)
            if inside is not None:
                checkpoints.add(inside)
    versions = await session.execute(
        select(ModelVersion.source_job_id, ModelVersion.snapshot, Model.workspace_id).join(
            Model, Model.id == ModelVersion.model_id
        )
    )
    for source, snapshot, workspace_id in versions.tuples():
        if source:
            checkpoints.add(source)
        if snapshot:
            snapshots.add((workspace_id, snapshot))
    return Holds(frozenset(checkpoints), frozenset(snapshots))


def _job_of(folder: Path, checkpoints_dir: Path) -> str | None:
    """The job whose checkpoint folder holds `folder`, if it is in one."""
    try:
        return folder.relative_to(checkpoints_dir).parts[0]
    except (ValueError, IndexError):
        return None
