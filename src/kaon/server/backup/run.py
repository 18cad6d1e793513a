"""Create, verify and restore a backup: the steps in order.

A restore checks everything it can before it writes anything: the header (format,
schema revision), the master key, that the target home and database are empty, the
body's size and sha256, and then every chunk and record, decrypted once in full. Only
then does it write: rows in one transaction, files into a folder of the home that is
moved into place at the end. A refused restore leaves the target as it was.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kaon._version import __version__
from kaon.server.backup.archive import (
    ArchiveWriter,
    Progress,
    body_digest,
    plaintext,
    read_header,
)
from kaon.server.backup.database import (
    Loader,
    dump,
    existing_tables,
    is_sqlite,
    known_revisions,
    sqlite_path,
    sqlite_snapshot,
)
from kaon.server.backup.format import (
    ALLOWED_IN_EMPTY_HOME,
    BLOB,
    END,
    FILE,
    FORMAT_VERSION,
    TABLE,
    BackupRefusedError,
    Header,
    Record,
    check_digest,
    check_revision,
    check_signature,
    check_sizes,
    decode_rows,
    home_leftovers,
    pack_key,
    record,
    records,
    refuse_nonempty,
    safe_path,
    unpack_key,
)
from kaon.server.backup.home import Staging, artifact_store, open_segments, state_files
from kaon.server.config import Settings
from kaon.server.security.keys import (
    ENV_KMS_PLUGIN,
    ENV_MASTER_KEY,
    MASTER_KEY_FILE,
    KeyUnavailableError,
    KeyWrapper,
    WrappedKey,
    load_master_keys,
    new_data_key,
)
from kaon.server.storage.blobstore import check_key


def master_keys(home: Path) -> KeyWrapper:
    """The master key, as the server would load it, but never a new one: a home without
    a key file would otherwise get a fresh key that opens nothing."""
    env = os.environ
    if not (env.get(ENV_KMS_PLUGIN) or env.get(ENV_MASTER_KEY)):
        if not (home / MASTER_KEY_FILE).exists():
            raise BackupRefusedError(
                f"no master key: put the master key file at {home / MASTER_KEY_FILE} "
                f"(or set {ENV_MASTER_KEY}); a backup never holds it"
            )
    try:
        return load_master_keys(home)
    except KeyUnavailableError as e:
        raise BackupRefusedError(str(e)) from e


def open_key(keys: KeyWrapper, header: Header) -> bytes:
    wrapped = WrappedKey(header.master_key_id, unpack_key(header.wrapped_key))
    try:
        key = keys.unwrap(wrapped, header.key_context())
    except KeyUnavailableError:
        raise BackupRefusedError(
            f"the backup was made under master key {header.master_key_id}, which this Kaon "
            f"does not hold (its master key is {keys.current_key_id()}): use the master key "
            "of the control plane the backup was made on"
        ) from None
    check_signature(header, key)
    return key


# --- create --------------------------------------------------------------------------


def create(settings: Settings, path: Path, progress: Progress) -> dict[str, Any]:
    """Write a backup of the control plane of `settings` to `path` (which must not exist)."""
    if path.exists():
        raise BackupRefusedError(f"{path} exists already; name a new file")
    if not path.parent.is_dir():
        raise BackupRefusedError(f"no such folder: {path.parent}")
    keys = master_keys(settings.home)
    key = new_data_key()
    header = Header(
        format=FORMAT_VERSION,
        kaon_version=__version__,
        created_at=datetime.now(UTC).isoformat(),
        schema_revision="",
        source_database="sqlite" if is_sqlite(settings.database_url) else "postgresql",
        master_key_id=keys.current_key_id(),
        wrapped_key="",
        backup_id=secrets.token_hex(16),
        source_home=str(settings.home.resolve()),
    )
    wrapped = keys.wrap(key, header.key_context())
    header = Header(
        **{
            **header.__dict__,
            "master_key_id": wrapped.key_id,
            "wrapped_key": pack_key(wrapped.blob),
        }
    )
    writer = ArchiveWriter(path, header, key)
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".kaon-backup-") as tmp:
            url = settings.database_url
            if is_sqlite(url):
                url = sqlite_snapshot(url, Path(tmp) / "snapshot.db", progress)
            revision, tables = asyncio.run(dump(url, writer.write, progress))
        contents: dict[str, Any] = {"tables": tables, **_copy_files(settings, writer, progress)}
        writer.write_all(record(END, contents, []))
        done = writer.close(contents, revision)
    except BaseException:
        writer.abort()
        raise
    return _summary(path, done)


def _copy_files(settings: Settings, writer: ArchiveWriter, progress: Progress) -> dict[str, int]:
    files = list(state_files(settings.home))
    total = sum(f.size for f in files)
    count, size = 0, 0
    for f in files:
        segments = open_segments(f.path)
        if segments is None:
            continue
        for piece in record(FILE, {"path": f.relative, "mode": f.mode}, segments):
            writer.write(piece)
            size += len(piece)
        count += 1
        progress("files", min(size, total), total)
    store = artifact_store(settings)
    keys = list(store.keys())
    blobs, blob_bytes = 0, 0
    for key in keys:
        try:
            chunks = store.get(key)
        except KeyError:
            continue  # deleted since it was listed
        for piece in record(BLOB, {"key": key}, chunks):
            writer.write(piece)
            blob_bytes += len(piece)
        blobs += 1
        progress("artifacts", blobs, len(keys))
    return {"files": count, "artifacts": blobs}


def _summary(path: Path, header: Header) -> dict[str, Any]:
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "format": header.format,
        "kaon_version": header.kaon_version,
        "created_at": header.created_at,
        "schema_revision": header.schema_revision,
        "source_database": header.source_database,
        "master_key_id": header.master_key_id,
        "sha256": header.body_sha256,
        "contents": header.contents,
    }


# --- verify --------------------------------------------------------------------------


def _open(settings: Settings, path: Path) -> tuple[Header, bytes]:
    """The header and the backup key, after every check that reads no body."""
    header = read_header(path)
    check_revision(header, known_revisions())
    key = open_key(master_keys(settings.home), header)
    check_sizes(header, path.stat().st_size)
    return header, key


def _check_body(path: Path, header: Header, key: bytes, progress: Progress) -> None:
    """Read and decrypt the whole body; refuse anything that does not add up."""
    check_digest(header, body_digest(path, header, progress))
    tables: dict[str, int] = {}
    files = artifacts = 0
    end: dict[str, Any] | None = None
    for rec in _records(path, header, key, progress):
        if rec.kind == TABLE:
            columns = [str(c) for c, _ in rec.meta["columns"]]
            kinds = [str(k) for _, k in rec.meta["columns"]]
            rows = sum(len(decode_rows(columns, kinds, s)) for s in rec.segments())
            tables[str(rec.meta["name"])] = rows
        elif rec.kind == FILE:
            safe_path(str(rec.meta["path"]))
            files += 1
        elif rec.kind == BLOB:
            _blob_key(str(rec.meta["key"]))
            artifacts += 1
        elif rec.kind == END:
            end = rec.meta
        else:
            raise BackupRefusedError(f"the backup holds a record of unknown kind {rec.kind!r}")
    counted = {"tables": tables, "files": files, "artifacts": artifacts}
    if end != counted or header.contents != counted:
        raise BackupRefusedError("the backup's contents do not match what its header lists")


def _records(path: Path, header: Header, key: bytes, progress: Progress) -> Iterator[Record]:
    return records(plaintext(path, header, key, progress))


def _blob_key(key: str) -> str:
    try:
        return check_key(key)
    except ValueError as e:
        raise BackupRefusedError(f"the backup names a bad artifact key {key!r}") from e


def verify(settings: Settings, path: Path, progress: Progress) -> dict[str, Any]:
    """Check a backup end to end against this Kaon and its master key; write nothing."""
    header, key = _open(settings, path)
    _check_body(path, header, key, progress)
    return _summary(path, header)


# --- restore -------------------------------------------------------------------------


def restore(settings: Settings, path: Path, progress: Progress) -> dict[str, Any]:
    """Restore a backup into the empty home and database of `settings`."""
    header, key = _open(settings, path)
    asyncio.run(_check_empty(settings))
    _check_body(path, header, key, progress)
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)

    def writing(phase: str, done: int, total: int) -> None:
        progress("writing" if phase == "reading" else phase, done, total)

    asyncio.run(_restore(settings, path, header, key, writing))
    return _summary(path, header)


def _home_allowed(settings: Settings) -> frozenset[str]:
    allowed = set(ALLOWED_IN_EMPTY_HOME)
    if is_sqlite(settings.database_url):
        db = sqlite_path(settings.database_url)
        if db.parent.resolve() == settings.home.resolve():
            allowed |= {db.name + suffix for suffix in ("", "-wal", "-shm", "-journal")}
    return frozenset(allowed)


async def _check_empty(settings: Settings) -> None:
    home = settings.home
    if home.exists():
        if not home.is_dir():
            raise BackupRefusedError(f"{home} is not a folder")
        refuse_nonempty(
            f"home ({home})", home_leftovers(os.listdir(home), _home_allowed(settings))
        )
    refuse_nonempty("database", await existing_tables(settings.database_url))
    store = artifact_store(settings)
    refuse_nonempty("artifact store", list(_first(store.keys(), 8)))


def _first(keys: Iterable[str], n: int) -> list[str]:
    out: list[str] = []
    for key in keys:
        out.append(str(key))
        if len(out) >= n:
            break
    return out


async def _restore(
    settings: Settings, path: Path, header: Header, key: bytes, progress: Progress
) -> None:
    new_home = str(settings.home.resolve())
    moved = (header.source_home, new_home) if header.source_home not in ("", new_home) else None
    loader = Loader(settings.database_url, header.schema_revision, moved)
    staging = Staging(settings.home, f".restore-{header.backup_id[:12]}")
    store = artifact_store(settings)
    committed = False
    try:
        await loader.begin()
        for rec in _records(path, header, key, progress):
            if rec.kind == TABLE:
                await loader.load_table(rec.meta, rec.segments())
                continue
            if not committed:
                await loader.commit()
                committed = True
            if rec.kind == FILE:
                staging.write(str(rec.meta["path"]), int(rec.meta["mode"]), rec.segments())
            elif rec.kind == BLOB:
                store.put(_blob_key(str(rec.meta["key"])), rec.segments())
        staging.commit()
    except BaseException:
        staging.discard()
        if not committed:
            await loader.discard()
        raise
    finally:
        await loader.close()
