"""The backup file format, and every decision about a backup that needs no I/O.

```
 file    = MAGIC (8) || header length (u32) || header JSON, padded to HEADER_SPACE || body
 body    = chunk(0) || chunk(1) || ... || chunk(n-1)                      (n >= 1)
 chunk   = length (u32) || nonce (12) || AES-256-GCM(backup key, plaintext part) || tag (16)
 aad(i)  = "kaon-backup:v1:" backup id ":" i ":" last
 plain   = record || record || ... || end record
 record  = head length (u32) || head JSON || segment || ... || u32 0
 segment = length (u32, > 0) || bytes
```

The header is plaintext, so `verify` can say what a file is (format, schema revision,
master key id, sizes) before it holds any key, and refuse a newer one without trying. It
carries the backup key wrapped by the master key, a sha256 of the body (a truncated or
altered file is named as such before anything is decrypted) and an HMAC under the backup
key over all of its fields, so none can be changed unnoticed. Each chunk's associated
data binds it to its backup, its place and whether it is the last: chunks swapped,
dropped or cut off the end fail to open.

The plaintext is a stream of records (a table and its rows, a file of the home, a value
of the artifact store), each's data in segments, so neither side needs a size up front
(a log grows while it is copied). Rows are JSON in one logical format that restores into
SQLite or PostgreSQL alike: each column carries a kind that says how its values are
written (bytes as base64, datetimes as ISO 8601 with their UTC offset, JSON as itself).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, LargeBinary
from sqlalchemy.types import TypeEngine

from kaon.core.errors import KaonError

MAGIC = b"KAONBAK1"
FORMAT_VERSION = 1
HEADER_SPACE = 16 * 1024  # bytes the header may take: it is written last, in place
CHUNK = 4 * 2**20  # plaintext bytes per chunk
NONCE = 12
TAG = 16
U32 = struct.Struct(">I")
SEGMENT = 1 << 20  # bytes of a file or a blob per segment
ROWS_PER_SEGMENT = 1000

# The record kinds, in the order a backup writes them: the database first (its snapshot
# is the backup's point in time), then files and blobs, which are only ever added before
# the row that names them, so every row's file or blob is in the backup.
TABLE, FILE, BLOB, END = "table", "file", "blob", "end"

# How a column's values are written: the few types JSON does not carry as themselves.
BYTES, DATETIME, JSON_KIND, PLAIN = "bytes", "datetime", "json", "plain"


class BackupRefusedError(KaonError):
    """A backup cannot be made, verified or restored: the reason, for a person. Raised
    before anything is written to the target."""

    status_code = 400


@dataclass(frozen=True)
class Header:
    """What the plaintext header of a backup says."""

    format: int
    kaon_version: str
    created_at: str
    schema_revision: str
    source_database: str
    master_key_id: str
    wrapped_key: str  # base64 of the backup key, wrapped by the master key
    backup_id: str
    chunk_size: int = CHUNK
    chunks: int = 0
    plaintext_bytes: int = 0
    body_bytes: int = 0
    body_sha256: str = ""
    contents: dict[str, Any] = field(default_factory=dict)
    source_home: str = ""  # KAON_HOME where the backup was made (paths in rows name it)
    mac: str = ""

    def key_context(self) -> bytes:
        """The associated data the backup key is wrapped with: its backup's id."""
        return f"kaon-backup:{self.backup_id}".encode()


def _signed_part(header: Header) -> bytes:
    values = asdict(header)
    values.pop("mac")
    return json.dumps(values, sort_keys=True, separators=(",", ":")).encode()


def sign(header: Header, key: bytes) -> Header:
    mac = hmac.new(key, b"kaon-backup-header\0" + _signed_part(header), hashlib.sha256)
    return Header(**{**asdict(header), "mac": mac.hexdigest()})


def check_signature(header: Header, key: bytes) -> None:
    expected = sign(header, key).mac
    if not hmac.compare_digest(expected, header.mac):
        raise BackupRefusedError("the backup's header was altered (its signature does not match)")


def encode_header(header: Header) -> bytes:
    """The header as it starts a file: magic, length, JSON padded to HEADER_SPACE."""
    raw = json.dumps(asdict(header), sort_keys=True).encode()
    if len(raw) > HEADER_SPACE:
        raise BackupRefusedError(f"the backup's header is {len(raw)} bytes, over {HEADER_SPACE}")
    return MAGIC + U32.pack(len(raw)) + raw + b" " * (HEADER_SPACE - len(raw))


HEADER_BYTES = len(MAGIC) + U32.size + HEADER_SPACE  # where the body starts


def decode_header(start: bytes) -> Header:
    """The header of a file whose first HEADER_BYTES are `start`."""
    if not start.startswith(MAGIC):
        raise BackupRefusedError("this is not a Kaon backup (it does not start as one)")
    if len(start) < HEADER_BYTES:
        raise BackupRefusedError("the backup is truncated: its header is cut short")
    (size,) = U32.unpack_from(start, len(MAGIC))
    try:
        values = json.loads(start[len(MAGIC) + U32.size :][:size])
        fmt = int(values["format"])
    except (ValueError, KeyError, TypeError) as e:
        raise BackupRefusedError("the backup's header is damaged") from e
    if fmt > FORMAT_VERSION:
        raise BackupRefusedError(
            f"the backup is in format {fmt}, made by a newer Kaon ({values.get('kaon_version')});"
            f" this Kaon reads format {FORMAT_VERSION} and older: restore it with that version"
        )
    try:
        return Header(**values)
    except TypeError as e:
        raise BackupRefusedError("the backup's header is damaged") from e


def check_revision(header: Header, known: list[str]) -> None:
    """Refuse a backup of a schema this Kaon does not know (`known`: its migrations,
    oldest first): it was made by a newer Kaon, whose rows this one cannot place."""
    if header.schema_revision not in known:
        raise BackupRefusedError(
            f"the backup is of database schema revision {header.schema_revision}, newer than "
            f"this Kaon's ({known[-1] if known else 'none'}); restore it with Kaon "
            f"{header.kaon_version} or newer"
        )


def check_sizes(header: Header, file_bytes: int) -> None:
    expected = HEADER_BYTES + header.body_bytes
    if file_bytes < expected:
        raise BackupRefusedError(
            f"the backup is truncated: {file_bytes} bytes of {expected} (copy it again)"
        )
    if file_bytes > expected:
        raise BackupRefusedError(f"the backup has {file_bytes - expected} bytes too many")


def check_digest(header: Header, digest: str) -> None:
    if not hmac.compare_digest(digest, header.body_sha256):
        raise BackupRefusedError("the backup was altered: its sha256 does not match its header")


def chunk_aad(backup_id: str, index: int, last: bool) -> bytes:
    return f"kaon-backup:v1:{backup_id}:{index}:{int(last)}".encode()


def pack_key(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def unpack_key(text: str) -> bytes:
    return base64.b64decode(text)


# --- records -------------------------------------------------------------------------


END_MARK = U32.pack(0)


def record_head(kind: str, meta: dict[str, Any]) -> bytes:
    head = json.dumps({"kind": kind, **meta}, separators=(",", ":")).encode()
    return U32.pack(len(head)) + head


def record(kind: str, meta: dict[str, Any], segments: Iterable[bytes]) -> Iterator[bytes]:
    """One record's bytes, in pieces: its head, each non-empty segment, the end mark."""
    yield record_head(kind, meta)
    for segment in segments:
        if segment:
            yield U32.pack(len(segment))
            yield segment
    yield END_MARK


def safe_path(relative: str) -> str:
    """A path of the home as a backup names it: relative, and never out of the home."""
    parts = relative.split("/")
    if not relative or relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise BackupRefusedError(f"the backup names a file outside the home: {relative!r}")
    return relative


class Exact:
    """Reads exact byte counts from an iterable of chunks of any size."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = bytearray()

    def take(self, n: int) -> bytes:
        while len(self._buf) < n:
            nxt = next(self._it, None)
            if nxt is None:
                raise BackupRefusedError("the backup's contents end in the middle of a record")
            self._buf += nxt
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def at_end(self) -> bool:
        while not self._buf:
            nxt = next(self._it, None)
            if nxt is None:
                return True
            self._buf += nxt
        return False


@dataclass
class Record:
    kind: str
    meta: dict[str, Any]
    _source: Exact
    _drained: bool = False

    def segments(self) -> Iterator[bytes]:
        """The record's data; read it all (or call `skip`) before the next record."""
        while True:
            (size,) = U32.unpack(self._source.take(U32.size))
            if size == 0:
                self._drained = True
                return
            yield self._source.take(size)

    def skip(self) -> int:
        return sum(len(s) for s in self.segments()) if not self._drained else 0


def records(plaintext: Iterable[bytes]) -> Iterator[Record]:
    """The records of a backup's plaintext, up to and including its end record; refuses a
    stream that stops before one or runs on after it."""
    source = Exact(plaintext)
    while True:
        (size,) = U32.unpack(source.take(U32.size))
        try:
            head = json.loads(source.take(size))
            kind = str(head.pop("kind"))
        except (ValueError, KeyError) as e:
            raise BackupRefusedError("the backup's contents are damaged") from e
        current = Record(kind, head, source)
        yield current
        if not current._drained:
            current.skip()
        if kind == END:
            if not source.at_end():
                raise BackupRefusedError("the backup's contents run on past their end")
            return


# --- rows ----------------------------------------------------------------------------


def column_kind(type_: TypeEngine[Any]) -> str:
    """How a column's values travel (a TypeDecorator is judged by what it stores)."""
    impl = getattr(type_, "impl", type_)
    if isinstance(impl, LargeBinary):
        return BYTES
    if isinstance(impl, DateTime):
        return DATETIME
    if isinstance(impl, JSON):
        return JSON_KIND
    return PLAIN


def encode_value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == BYTES:
        return base64.b64encode(bytes(value)).decode()
    if kind == DATETIME:
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise BackupRefusedError(f"a datetime without a time zone in the database: {value!r}")
        return value.isoformat()
    return value


def decode_value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == BYTES:
        return base64.b64decode(value)
    if kind == DATETIME:
        return datetime.fromisoformat(value)
    return value


def parents_first(rows: list[Any], key_at: int, parent_at: int) -> list[Any]:
    """Rows of a table that refers to itself (a token minted by a token), each after the
    row it names, so they insert where foreign keys are checked; otherwise in their order."""
    parent = {row[key_at]: row[parent_at] for row in rows}
    depth: dict[Any, int] = {}
    for key in parent:
        chain, at = [], key
        while at is not None and at in parent and at not in depth and at not in chain:
            chain.append(at)
            at = parent[at]
        base = depth.get(at, -1) if at is not None else -1
        for n, node in enumerate(reversed(chain)):
            depth[node] = base + 1 + n
    return sorted(rows, key=lambda row: depth[row[key_at]])


def rehome(value: Any, old: str, new: str) -> Any:
    """A value with paths under the old home moved to the new one (a deployment's model
    folder, say, names a checkpoint of the home); everything else as it is."""
    if isinstance(value, str):
        if value == old or value.startswith(old + "/"):
            return new + value[len(old) :]
        return value
    if isinstance(value, list):
        return [rehome(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: rehome(v, old, new) for k, v in value.items()}
    return value


def encode_rows(kinds: list[str], rows: Iterable[Iterable[Any]]) -> bytes:
    return json.dumps(
        [[encode_value(k, v) for k, v in zip(kinds, row, strict=True)] for row in rows],
        separators=(",", ":"),
    ).encode()


def decode_rows(columns: list[str], kinds: list[str], segment: bytes) -> list[dict[str, Any]]:
    return [
        {c: decode_value(k, v) for c, k, v in zip(columns, kinds, row, strict=True)}
        for row in json.loads(segment)
    ]


# --- restore targets -----------------------------------------------------------------

# What a home may already hold when a backup is restored into it: the master key (it
# must be there, or in the environment, for the restore to open the backup).
ALLOWED_IN_EMPTY_HOME = frozenset({"master.key"})


def home_leftovers(entries: Iterable[str], allowed: frozenset[str]) -> list[str]:
    return sorted(e for e in entries if e not in allowed)


def refuse_nonempty(what: str, found: list[str], limit: int = 8) -> None:
    if found:
        shown = ", ".join(found[:limit]) + (
            f" and {len(found) - limit} more" if len(found) > limit else ""
        )
        raise BackupRefusedError(
            f"restore needs an empty {what}; it already holds {shown}. "
            "Restore into a new one, or empty it first"
        )
