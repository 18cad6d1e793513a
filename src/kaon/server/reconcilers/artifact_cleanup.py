"""The artifact clean-up loop: collects what nothing references any more. Blob rows no
version names (an interrupted push), stored values no row vouches for (a deleted
workspace's, a released model's), and this node's cache of materialised versions past its
size bound, least recently used first.

What goes is decided by the pure rules of `kaon.server.storage.cleanup` (grace periods,
what is in use); this module only lists and deletes. It wakes rarely
(``artifact_cleanup_interval_s``); each deletion re-checks its row just before it acts, so
a version created, or an upload finished, while the pass ran is never collected under it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.jobs import JobStatus
from kaon.server.db.models import Artifact, ArtifactBlob, Blob, Deployment, Job, utcnow
from kaon.server.db.session import Database
from kaon.server.reconcilers.loop import Loop
from kaon.server.services.artifacts import blob_key, evict_copy, store_for
from kaon.server.services.pool import stored_spec
from kaon.server.storage.cleanup import (
    BlobRow,
    CachedCopy,
    StoredValue,
    cache_evictions,
    looks_like_another_database,
    orphan_values,
    unreferenced_blobs,
)

logger = logging.getLogger("kaon.reconciler.artifact-cleanup")
MIN_IDLE = timedelta(minutes=10)  # a copy used this recently may be on its way to a job
_ENDED = [s.value for s in JobStatus if s.is_terminal()]


class ArtifactCleanup(Loop):
    """One pass: unreferenced blob rows, then values without rows, then the node cache."""

    name = "artifact-cleanup"

    def __init__(
        self,
        db: Database,
        *,
        grace_s: float,
        cache_limit: int,
        interval_s: float,
        min_idle: timedelta = MIN_IDLE,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__()
        self.db = db
        self.grace = timedelta(seconds=grace_s)
        self.cache_limit = cache_limit
        self.interval_s = interval_s
        self.min_idle = min_idle
        self.clock = clock

    async def run_once(self) -> bool:
        now = self.clock()
        await self.collect_blobs(now)
        await self.collect_values(now)
        await self.evict_cache(now)
        return False

    # --- blob rows no version names ------------------------------------------------------

    async def collect_blobs(self, now: datetime) -> list[tuple[str, str]]:
        """Delete blob rows (and their values) no version has named for `grace`."""
        async with self.db.session() as s:
            rows = [
                BlobRow(w, sha, created)
                for w, sha, created in (
                    await s.execute(
                        select(Blob.workspace_id, Blob.sha256, Blob.created_at).where(
                            Blob.created_at <= now - self.grace
                        )
                    )
                ).tuples()
            ]
            named = set(
                (
                    await s.execute(
                        select(ArtifactBlob.workspace_id, ArtifactBlob.sha256).distinct()
                    )
                ).tuples()
            )
        gone: list[tuple[str, str]] = []
        for workspace_id, sha in unreferenced_blobs(rows, named, now, self.grace):
            async with self.db.session() as s:
                if await _drop_unnamed_blob(s, workspace_id, sha):
                    await s.commit()
                    gone.append((workspace_id, sha))
        store = store_for(self.db).blobs
        for workspace_id, sha in gone:
            await asyncio.to_thread(store.delete, blob_key(workspace_id, sha))
        return gone

    # --- stored values without rows ------------------------------------------------------

    async def collect_values(self, now: datetime) -> list[str]:
        """Delete stored values no blob row has vouched for during `grace` (a deleted
        workspace's, a released blob's), unless that would be most of the store."""
        store = store_for(self.db).blobs
        values = await asyncio.to_thread(lambda: [StoredValue(k, m) for k, m in store.entries()])
        async with self.db.session() as s:
            pairs = await s.execute(select(Blob.workspace_id, Blob.sha256))
            rows = {blob_key(w, sha) for w, sha in pairs.tuples()}
        collect = orphan_values(values, rows, now, self.grace)
        if looks_like_another_database(len(collect), len(values)):
            logger.error(
                "artifact clean-up: %d of %d stored values have no row in this database; "
                "collecting none (is KAON_DATABASE_URL the database of this artifact store?)",
                len(collect),
                len(values),
            )
            return []
        gone: list[str] = []
        for key in collect:
            if await self._still_orphan(key, now):
                await asyncio.to_thread(store.delete, key)
                gone.append(key)
        return gone

    async def _still_orphan(self, key: str, now: datetime) -> bool:
        """Re-checked just before the delete: still no row, and not rewritten meanwhile by
        an upload of the same blob (which would be within the grace period again)."""
        workspace_id, sha = key.split("/", 1)
        async with self.db.session() as s:
            if await s.get(Blob, (workspace_id, sha)) is not None:
                return False
        store = store_for(self.db).blobs
        again = await asyncio.to_thread(lambda: [StoredValue(k, m) for k, m in store.entries(key)])
        return bool(orphan_values(again, set(), now, self.grace))

    # --- the node cache ------------------------------------------------------------------

    async def evict_cache(self, now: datetime) -> list[str]:
        """Evict copies, least recently used first, until the cache is within its bound."""
        cache_dir = store_for(self.db).cache_dir
        copies = await asyncio.to_thread(cached_copies, cache_dir)
        async with self.db.session() as s:
            in_use = await copies_in_use(s, cache_dir)
        gone = cache_evictions(copies, in_use, self.cache_limit, now, self.min_idle)
        for digest in gone:
            await asyncio.to_thread(evict_copy, cache_dir, digest)
        return gone


async def _drop_unnamed_blob(session: AsyncSession, workspace_id: str, sha: str) -> bool:
    """Delete the blob's row if no version names it, its row locked first so a version
    being created (which holds its blobs' rows shared) is ordered with this delete."""
    held = await session.scalar(
        select(Blob.sha256)
        .where(Blob.workspace_id == workspace_id, Blob.sha256 == sha)
        .with_for_update()
    )
    if held is None:
        return False
    named = await session.scalar(
        select(
            exists().where(ArtifactBlob.workspace_id == workspace_id, ArtifactBlob.sha256 == sha)
        )
    )
    if named:
        return False
    await session.execute(
        delete(Blob).where(Blob.workspace_id == workspace_id, Blob.sha256 == sha)
    )
    return True


def cached_copies(cache_dir: Path) -> list[CachedCopy]:
    """Each whole copy in the cache (folders being built or evicted start with a dot),
    with its bytes and its last use (the folder's mtime, touched on every reuse)."""
    if not cache_dir.is_dir():
        return []
    out: list[CachedCopy] = []
    for entry in sorted(cache_dir.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        size = 0
        for folder, _, names in os.walk(entry):
            for name in names:
                size += os.lstat(os.path.join(folder, name)).st_size
        used = datetime.fromtimestamp(entry.stat().st_mtime, UTC)
        out.append(CachedCopy(entry.name, size, used))
    return out


async def copies_in_use(session: AsyncSession, cache_dir: Path) -> set[str]:
    """Digests of the copies that must stay: every input of a job not yet ended (queued
    ones too: they will link it when they start) and every deployment's model folder."""
    digests: set[str] = set()
    jobs = await session.scalars(select(Job).where(Job.status.not_in(_ENDED)))
    refs = {
        (j.workspace_id, i.artifact)
        for j in jobs
        if j.spec.get("inputs")
        for i in stored_spec(j).inputs
    }
    for workspace_id, ref in sorted(refs):
        name, _, version = ref.partition(":")
        digest = await session.scalar(
            select(Artifact.digest).where(
                Artifact.workspace_id == workspace_id,
                Artifact.name == name,
                Artifact.version == int(version or 0),
            )
        )
        if digest is not None:
            digests.add(digest)
    for model_dir in await session.scalars(
        select(Deployment.model_dir).where(Deployment.model_dir.is_not(None))
    ):
        if model_dir and Path(model_dir).parent == cache_dir:
            digests.add(Path(model_dir).name)
    return digests
