"""The audit log: an append-only, hash-chained record of every change and every refused
call (what gets recorded is decided by `kaon.server.security.audit`).

Each record carries the hash of the record before it, and its own hash covers all of its
fields and that link:

```
 hash(n) = sha256(canonical JSON of record n's fields, including prev_hash = hash(n-1))
```

so editing a record changes its hash (and no longer matches the next record's
``prev_hash``), deleting one leaves a gap in the sequence and a broken link, and swapping
two breaks both. A one-row head (`AuditHead`) holds the newest sequence number and hash:
an append updates it first, which orders appends on SQLite and PostgreSQL alike, and lets
`verify` see records cut off the end. Someone who can rewrite the whole table and the
head together can forge a consistent chain; keep the head's hash (``kaon audit verify``
prints it) somewhere else to catch that too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, TextClause, bindparam, event, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from kaon.core.errors import PermissionDeniedError
from kaon.core.secrets import AuditRecordView, AuditVerification
from kaon.server.db.models import AuditHead, AuditRecord, UTCDateTime, utcnow
from kaon.server.db.session import Database
from kaon.server.security.audit import AuditEntry, current, describe, wanted
from kaon.server.security.principal import Principal

GENESIS = "0" * 64  # the prev_hash of the first record
HEAD_ID = 1
PAGE = 1000
MAX_LIST = 10_000


def _stamp(time: datetime) -> str:
    """A time as hashed: UTC, microseconds, whatever the backend hands back."""
    return time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def chain_hash(seq: int, entry: AuditEntry, prev_hash: str) -> str:
    fields = {
        "seq": seq,
        "time": _stamp(entry.time),
        "principal": entry.principal,
        "token_name": entry.token_name,
        "workspace": entry.workspace,
        "action": entry.action,
        "resource": entry.resource,
        "outcome": entry.outcome,
        "status": entry.status,
        "source": entry.source,
        "prev_hash": prev_hash,
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def append(session: AsyncSession, entry: AuditEntry) -> tuple[int, str]:
    """Add `entry` to the chain in the session's transaction (the caller commits); its
    sequence number and hash. The head is written first (``UPDATE ... RETURNING``), so two appends
    never read the same head: the second waits for the first's lock."""
    row = (
        await session.execute(
            update(AuditHead)
            .where(AuditHead.id == HEAD_ID)
            .values(seq=AuditHead.seq + 1)
            .returning(AuditHead.seq, AuditHead.hash)
        )
    ).one()
    seq, prev = int(row[0]), str(row[1])
    digest = chain_hash(seq, entry, prev)
    session.add(AuditRecord(**_record_values(seq, entry, prev, digest)))
    await session.execute(update(AuditHead).where(AuditHead.id == HEAD_ID).values(hash=digest))
    return seq, digest


def _record_values(seq: int, entry: AuditEntry, prev: str, digest: str) -> dict[str, Any]:
    return {
        "seq": seq,
        "time": entry.time,
        "principal": entry.principal,
        "token_name": entry.token_name,
        "workspace": entry.workspace,
        "action": entry.action,
        "resource": entry.resource,
        "outcome": entry.outcome,
        "status": entry.status,
        "source": entry.source,
        "prev_hash": prev,
        "hash": digest,
    }


# --- records that commit with the change --------------------------------------------------

RESOURCE_TABLES = frozenset({"jobs", "tokens", "workspaces", "deployments", "pools", "snapshots"})
_hooked = False


def record_in_transactions() -> None:
    """Make every request's first commit carry its audit record (session events on every
    session; they act only inside a request the `AuditTrail` middleware watches)."""
    global _hooked
    if _hooked:
        return
    event.listen(Session, "after_flush", _note_created)
    event.listen(Session, "before_commit", _append_in_transaction)
    event.listen(Session, "after_commit", _committed)
    event.listen(Session, "after_rollback", _rolled_back)
    _hooked = True


def _note_created(session: Session, _context: Any) -> None:
    """Remember the first resource a request inserts: a create's resource."""
    ctx = current()
    if ctx is None or ctx.created is not None:
        return
    for obj in session.new:
        if getattr(obj, "__tablename__", None) in RESOURCE_TABLES:
            ident = getattr(obj, "id", None) or getattr(obj, "sha256", None)
            ctx.created = str(ident) if ident else None
            return


def _append_in_transaction(session: Session) -> None:
    ctx = current()
    if (
        ctx is None
        or ctx.principal is None  # authentication's own bookkeeping, before the call
        or ctx.recorded
        or ctx.pending
        or session.in_nested_transaction()
        or not wanted(ctx.scope, 200)
    ):
        return
    session.flush()  # the change first: its new rows name the resource
    action, workspace, resource = describe(ctx.scope, None, ctx.created)
    route = ctx.scope.get("route")
    entry = AuditEntry(
        time=utcnow(),
        principal=ctx.principal,
        token_name=ctx.token_name,
        workspace=workspace,
        action=action,
        resource=resource,
        outcome="ok",
        status=int(getattr(route, "status_code", None) or 200),
        source=ctx.source,
    )
    engine = session.get_bind()
    seq, prev, digest = _advance_head(session, _heads.get(engine), entry)
    ctx.pending = True
    _pending_heads[id(ctx)] = (engine, seq, digest)


_HEAD = cast(Table, AuditHead.__table__)  # Core statements: no ORM bookkeeping per append
_RECORDS = cast(Table, AuditRecord.__table__)
_heads: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()
_pending_heads: dict[int, tuple[Any, int, str]] = {}


def _advance_head(
    session: Session, cached: tuple[int, str] | None, entry: AuditEntry
) -> tuple[int, str, str]:
    """Append `entry` after the head: (seq, prev_hash, hash). With the head this process
    wrote last in memory, one statement does it (`_ONE_STATEMENT`): it inserts only if
    the head is still the one remembered, and moves the head with it. When another
    writer moved the head meanwhile, it inserts nothing, and the head is read under its
    lock and the record inserted after it."""
    if cached is not None:
        seq, prev = cached[0] + 1, cached[1]
        digest = chain_hash(seq, entry, prev)
        values = {**_record_values(seq, entry, prev, digest), "after": seq - 1}
        dialect = session.get_bind().dialect.name
        done = session.execute(_ONE_STATEMENT[dialect], values)
        if getattr(done, "rowcount", 0) == 1:
            return seq, prev, digest
    row = session.execute(
        update(_HEAD)
        .where(_HEAD.c.id == HEAD_ID)
        .values(seq=_HEAD.c.seq + 1)
        .returning(_HEAD.c.seq, _HEAD.c.hash)
    ).one()
    seq, prev = int(row[0]), str(row[1])
    digest = chain_hash(seq, entry, prev)
    session.execute(insert(_RECORDS).values(_record_values(seq, entry, prev, digest)))
    session.execute(update(_HEAD).where(_HEAD.c.id == HEAD_ID).values(hash=digest))
    return seq, prev, digest


_COLUMNS = (
    "seq", "time", "principal", "token_name", "workspace", "action", "resource", "outcome",
    "status", "source", "prev_hash", "hash",
)  # fmt: skip
_PG_TYPES = {"seq": "BIGINT", "time": "TIMESTAMPTZ", "status": "INTEGER"}


def _one_statement(dialect: str) -> TextClause:
    """The fast append as one statement. PostgreSQL moves the head first in a CTE (its row
    lock orders concurrent appends; a second one waits, then matches nothing) and inserts
    only if it moved. SQLite, whose writers take turns anyway, inserts only if the head is
    as remembered, and a trigger (migration 0005) moves the head with every insert."""
    cols = ", ".join(_COLUMNS)
    if dialect == "postgresql":
        vals = ", ".join(f"CAST(:{c} AS {_PG_TYPES.get(c, 'VARCHAR')})" for c in _COLUMNS)
        sql = (
            f"WITH h AS (UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = {HEAD_ID}"
            " AND seq = :after AND hash = :prev_hash RETURNING id)"
            f" INSERT INTO audit_log ({cols}) SELECT {vals} FROM h"
        )
    else:
        vals = ", ".join(f":{c}" for c in _COLUMNS)
        sql = (
            f"INSERT INTO audit_log ({cols}) SELECT {vals} WHERE EXISTS (SELECT 1 FROM"
            f" audit_head WHERE id = {HEAD_ID} AND seq = :after AND hash = :prev_hash)"
        )
    return text(sql).bindparams(bindparam("time", type_=UTCDateTime()))


_ONE_STATEMENT = {d: _one_statement(d) for d in ("postgresql", "sqlite")}


def _committed(session: Session) -> None:
    ctx = current()
    if ctx is not None and ctx.pending:
        ctx.pending, ctx.recorded = False, True
        engine, seq, digest = _pending_heads.pop(id(ctx))
        _heads[engine] = (seq, digest)


def _rolled_back(session: Session) -> None:
    ctx = current()
    if ctx is not None and ctx.pending:
        ctx.pending = False  # the record went with the change; the middleware writes one
        _pending_heads.pop(id(ctx), None)


class AuditAppender:
    """Appends each entry in a short transaction of its own (the middleware's writer)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def __call__(self, entry: AuditEntry) -> None:
        async with self.db.session() as s:
            seq, digest = await append(s, entry)
        _heads[self.db.engine.sync_engine] = (seq, digest)  # the next append's fast path


def _view(r: AuditRecord) -> AuditRecordView:
    """The record as the API shows it: what it says (`_entry`) and its place in the chain."""
    return AuditRecordView(
        seq=r.seq, prev_hash=r.prev_hash, hash=r.hash, **dataclasses.asdict(_entry(r))
    )


async def list_records(
    session: AsyncSession,
    caller: Principal,
    workspace: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
) -> list[AuditRecordView]:
    """Newest last. The instance admin sees every record; anyone else only the records
    of the workspaces it administers (`security.principal.authorize` narrows the caller
    to those)."""
    query = select(AuditRecord)
    if workspace is not None:
        if not caller.is_admin:
            caller.workspace_id(workspace)  # 404 for a workspace not the caller's
        query = query.where(AuditRecord.workspace == workspace)
    elif not caller.is_admin:
        query = query.where(AuditRecord.workspace.in_(sorted(caller.workspaces)))
    if since is not None:
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        query = query.where(AuditRecord.time >= since)
    query = query.order_by(AuditRecord.seq.desc()).limit(min(limit, MAX_LIST))
    rows = list((await session.execute(query)).scalars())
    return [_view(r) for r in reversed(rows)]


async def _pages(session: AsyncSession) -> AsyncIterator[AuditRecord]:
    after = 0
    while True:
        rows = list(
            await session.scalars(
                select(AuditRecord)
                .where(AuditRecord.seq > after)
                .order_by(AuditRecord.seq)
                .limit(PAGE)
            )
        )
        for row in rows:
            yield row
        if len(rows) < PAGE:
            return
        after = rows[-1].seq


def _entry(r: AuditRecord) -> AuditEntry:
    return AuditEntry(
        time=r.time,
        principal=r.principal,
        token_name=r.token_name,
        workspace=r.workspace,
        action=r.action,
        resource=r.resource,
        outcome=r.outcome,
        status=r.status,
        source=r.source,
    )


async def verify(session: AsyncSession, caller: Principal) -> AuditVerification:
    """Walk the whole chain (admins only: it covers every workspace). The first record
    that does not fit is named with why: a gap in the sequence (deleted), a link that
    does not match the record before (deleted or reordered), a hash that does not match
    the record's fields (edited), or a head the last record does not reach (cut off)."""
    if not caller.is_admin:
        raise PermissionDeniedError("verifying the audit log needs an admin token")
    prev, expected, checked = GENESIS, 1, 0
    async for r in _pages(session):
        problem = _check(r, expected, prev)
        if problem:
            bad = min(r.seq, expected)  # a gap names the first record missing
            return AuditVerification(ok=False, checked=checked, first_bad_seq=bad, problem=problem)
        prev, expected, checked = r.hash, r.seq + 1, checked + 1
    head = await session.get(AuditHead, HEAD_ID)
    if head is not None and (head.seq != expected - 1 or head.hash != prev):
        return AuditVerification(
            ok=False,
            checked=checked,
            first_bad_seq=expected,
            problem=f"the chain ends at {expected - 1} but its head says {head.seq}: "
            "records were removed from the end, or the head was changed",
        )
    return AuditVerification(ok=True, checked=checked, problem=None, head_hash=prev)


def _check(r: AuditRecord, expected: int, prev: str) -> str | None:
    if r.seq != expected:
        return f"record {expected} is missing (the next is {r.seq})"
    if r.prev_hash != prev:
        return f"record {r.seq} does not follow record {r.seq - 1} (deleted or reordered)"
    if chain_hash(r.seq, _entry(r), r.prev_hash) != r.hash:
        return f"record {r.seq} was changed after it was written"
    return None
