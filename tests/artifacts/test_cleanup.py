"""The artifact clean-up: its pure rules as tables, then the loop itself against a real
control plane (SQLite and PostgreSQL, the local blob store, real files), stepped with
`run_once()` and a clock moved past the grace period."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import select

from kaon.core.errors import ConflictError
from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from kaon.server.db.models import Artifact
from kaon.server.db.session import Database
from kaon.server.reconcilers.artifact_cleanup import ArtifactCleanup
from kaon.server.security.keys import KeyRing, load_master_keys
from kaon.server.services import secrets as secret_store
from kaon.server.services.artifacts import attach_store, materialise
from kaon.server.storage.blobstore import LocalBlobStore
from kaon.server.storage.cleanup import (
    BlobRow,
    CachedCopy,
    StoredValue,
    cache_evictions,
    looks_like_another_database,
    orphan_values,
    unreferenced_blobs,
)
from tests.conftest import RunningServer

PY = sys.executable
T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
GRACE = timedelta(hours=24)
H = timedelta(hours=1)
MARKER = b"KAON-CLEANUP-MARKER-"

# --- the rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("created", "named", "goes"),
    [
        (T0 - 25 * H, False, True),  # nothing names it, past the grace: collected
        (T0 - 23 * H, False, False),  # an upload whose version may still come
        (T0 - GRACE, False, True),  # exactly the grace
        (T0 - 999 * H, True, False),  # a version names it, however old
    ],
)
def test_unreferenced_blobs(created: datetime, named: bool, goes: bool) -> None:
    rows = [BlobRow("ws-a", "a" * 64, created)]
    names = {("ws-a", "a" * 64)} if named else set()
    assert unreferenced_blobs(rows, names, T0, GRACE) == ([("ws-a", "a" * 64)] if goes else [])


def cancel(client: Client, job_id: str) -> None:
    """Cancel, again while the API says the job changed meanwhile (its launch moved it)."""
    for _ in range(50):
        try:
            client.jobs.cancel(job_id)
            return
        except ConflictError:
            continue
    client.jobs.cancel(job_id)


def test_a_blob_of_another_workspace_with_the_same_name_does_not_keep_it() -> None:
    rows = [BlobRow("ws-a", "a" * 64, T0 - 48 * H)]
    assert unreferenced_blobs(rows, {("ws-b", "a" * 64)}, T0, GRACE) == [("ws-a", "a" * 64)]


@pytest.mark.parametrize(
    ("modified", "has_row", "goes"),
    [
        (T0 - 48 * H, False, True),  # no row, past the grace (a deleted workspace's too)
        (T0 - 1 * H, False, False),  # no row yet: an upload writes its value first
        (T0 - 48 * H, True, False),  # a row vouches for it
    ],
)
def test_orphan_values(modified: datetime, has_row: bool, goes: bool) -> None:
    key = "ws-a/" + "a" * 64
    rows = {key} if has_row else set()
    got = orphan_values([StoredValue(key, modified)], rows, T0, GRACE)
    assert got == ([key] if goes else [])


@pytest.mark.parametrize(
    ("collect", "stored", "refused"),
    [
        (3, 4, False),  # a small store: ordinary deletes
        (16, 100, False),
        (51, 100, True),  # most of the store: the wrong database, not deletes
        (1000, 1000, True),  # an empty database: no row names any value
    ],
)
def test_a_pass_never_empties_the_store(collect: int, stored: int, refused: bool) -> None:
    assert looks_like_another_database(collect, stored) is refused


@pytest.mark.parametrize(
    ("limit", "in_use", "expected"),
    [
        (1000, set(), []),  # within the bound: nothing goes
        (700, set(), ["old"]),  # the least recently used first, only as many as needed
        (300, set(), ["old", "mid"]),
        (300, {"old"}, ["mid", "new"]),  # in use: skipped, the next goes instead
        (0, {"old", "mid", "new"}, []),  # all in use: the cache stays over its bound
    ],
)
def test_cache_evictions(limit: int, in_use: set[str], expected: list[str]) -> None:
    copies = [
        CachedCopy("new", 300, T0 - 2 * H),
        CachedCopy("old", 300, T0 - 9 * H),
        CachedCopy("mid", 300, T0 - 5 * H),
    ]
    assert cache_evictions(copies, in_use, limit, T0, timedelta(minutes=10)) == expected


def test_a_copy_used_a_moment_ago_is_not_evicted() -> None:
    copies = [CachedCopy("fresh", 500, T0 - timedelta(minutes=1))]
    assert cache_evictions(copies, set(), 0, T0, timedelta(minutes=10)) == []


# --- the loop, on a real control plane --------------------------------------------------------


T = TypeVar("T")


def step(server: RunningServer, fn: Callable[[Database], Awaitable[T]]) -> T:
    """Run `fn` on a second handle of the running server's database and blob store, in
    an event loop of its own (opened and closed here: connections belong to one loop)."""

    async def go() -> T:
        db = Database(server.settings.database_url)
        secret_store.attach_keys(db, KeyRing(load_master_keys(server.settings.home)))
        attach_store(
            db, LocalBlobStore(server.settings.artifacts_dir), server.settings.artifact_cache_dir
        )
        try:
            return await fn(db)
        finally:
            await db.dispose()

    return asyncio.run(go())


def loop_at(db: Database, now: datetime, cache_limit: int = 2**40) -> ArtifactCleanup:
    return ArtifactCleanup(
        db,
        grace_s=GRACE.total_seconds(),
        cache_limit=cache_limit,
        interval_s=600,
        min_idle=timedelta(0),
        clock=lambda: now,
    )


def stored(server: RunningServer) -> set[str]:
    root = server.settings.artifacts_dir
    return {p.name for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


def one_file(tmp_path: Path, name: str, size: int = 1000) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "data.bin").write_bytes(MARKER + name.encode() + os.urandom(size))
    return folder


def test_an_upload_never_made_a_version_is_collected_after_the_grace(
    server: RunningServer, client: Client, tmp_path: Path
) -> None:
    kept = client.artifacts.push("kept", one_file(tmp_path, "kept"))
    stray = tmp_path / "stray.bin"
    stray.write_bytes(MARKER + os.urandom(5000))
    sha = hashlib.sha256(stray.read_bytes()).hexdigest()
    client.artifacts.upload_blob(stray, sha)  # a push cut off before its version
    assert client.artifacts.has_blob(sha) and sha in stored(server)

    now = datetime.now(UTC)
    assert step(server, lambda db: loop_at(db, now).collect_blobs(now)) == []  # within the grace
    assert client.artifacts.has_blob(sha)

    later = now + GRACE + H
    assert step(server, lambda db: loop_at(db, later).run_once()) is False
    assert not client.artifacts.has_blob(sha)
    assert sha not in stored(server)
    client.artifacts.download(kept.ref, tmp_path / "out")  # what a version names stays
    assert (tmp_path / "out" / "data.bin").read_bytes() == (
        tmp_path / "kept" / "data.bin"
    ).read_bytes()


def test_values_no_row_vouches_for_are_collected(
    server: RunningServer, client: Client, tmp_path: Path
) -> None:
    v1 = client.models.push("churn", one_file(tmp_path, "weights"))
    [entry] = client.artifacts.get(v1.artifact).files or []
    client.models.delete("churn:1")  # releases its artifact: rows now, the value later
    assert entry.sha256 in stored(server)
    gone_ws = server.settings.artifacts_dir / "ws-deleted00" / "ab"
    gone_ws.mkdir(parents=True)
    (gone_ws / ("ab" + "0" * 62)).write_bytes(b"sealed bytes of a deleted workspace")
    kept = client.artifacts.push("kept", one_file(tmp_path, "kept"))
    [kept_entry] = client.artifacts.get(kept.ref).files or []

    now = datetime.now(UTC)
    assert step(server, lambda db: loop_at(db, now).collect_values(now)) == []  # in the grace
    assert entry.sha256 in stored(server)

    later = now + GRACE + H
    gone = step(server, lambda db: loop_at(db, later).collect_values(later))
    assert sorted(key.split("/")[1] for key in gone) == sorted([entry.sha256, "ab" + "0" * 62])
    assert entry.sha256 not in stored(server) and "ab" + "0" * 62 not in stored(server)
    assert kept_entry.sha256 in stored(server)


def test_the_cache_evicts_the_least_recently_used_but_never_one_in_use(
    server: RunningServer, client: Client, tmp_path: Path
) -> None:
    refs = [
        client.artifacts.push(name, one_file(tmp_path, name, 100_000)).ref
        for name in ("a", "b", "c")
    ]
    spec = {
        "command": [PY, "-c", "import time; time.sleep(120)"],
        "inputs": [{"artifact": refs[0], "path": "data"}],  # "a", the oldest: in use
        "resources": {"cpu": 0.5},
    }
    job = client.jobs.submit(spec=spec)

    async def copies(db: Database) -> list[Path]:
        out = []
        async with db.session() as s:
            for ref in refs:
                name, version = ref.split(":")
                row = await s.scalar(
                    select(Artifact).where(Artifact.name == name, Artifact.version == int(version))
                )
                assert row is not None
                out.append(await materialise(db, row))
        return out

    paths = step(server, copies)
    base = time.time() - 3600
    for i, path in enumerate(paths):  # last used: a, then b, then c
        os.utime(path, (base + i * 60, base + i * 60))
    now = datetime.now(UTC)
    # room for one copy: "a" is in use (skipped), "b" goes, and "c" must go too
    gone = step(server, lambda db: loop_at(db, now, cache_limit=150_000).evict_cache(now))
    assert gone == [paths[1].name, paths[2].name]
    assert paths[0].is_dir() and not paths[1].exists() and not paths[2].exists()
    cache = server.settings.artifact_cache_dir
    assert [p.name for p in cache.iterdir()] == [paths[0].name]  # nothing half-removed left

    cancel(client, job.id)
    assert client.jobs.wait(job.id, timeout=60).status is JobStatus.CANCELLED
    later = datetime.now(UTC) + H  # past the job's own use of it at its start
    assert step(server, lambda db: loop_at(db, later, cache_limit=0).evict_cache(later)) == [
        paths[0].name
    ]  # no longer in use
    assert step(server, copies)[1].is_dir()  # evicted copies are made again on demand
