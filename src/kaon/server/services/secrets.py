"""Secrets: set, list and delete them per workspace; hand their values to the workers
that reference them; mask them in the logs those workers write; rotate the master key.

A value is sealed with its workspace's data key the moment it arrives and is opened in
exactly one place: `resolve_for_worker`, which a worker's supervisor calls with its job
token just before it starts the worker (the launch file names only the variables, see
`kaon.core.secrets.SECRET_ENV_MARKER`). So a value reaches the worker's process and
nothing on the way: not the job's spec, not its launch file, not the audit log. A read of
a job's log replaces each value the job references with ``***`` (`mask_log`).
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import AsyncIterator, Mapping

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import AuthError, InvalidSpecError, NotFoundError
from kaon.core.jobs import JobStatus
from kaon.core.secrets import (
    MASK,
    EnvValue,
    RotationResult,
    SecretView,
    check_secret_name,
    secret_refs,
)
from kaon.core.tokens import hash_token
from kaon.executors.base import Executor
from kaon.server.db.models import Job, Secret, WorkspaceKey, utcnow
from kaon.server.db.session import Database
from kaon.server.security.keys import KeyRing, SupportsNewKey, WrappedKey, seal, unseal
from kaon.server.security.principal import Principal
from kaon.server.security.tokens import new_id
from kaon.server.services.pool import stored_spec

_RINGS: weakref.WeakKeyDictionary[Database, KeyRing] = weakref.WeakKeyDictionary()
REWRAP_BATCH = 100


def attach_keys(db: Database, ring: KeyRing) -> None:
    """Make `ring` the key ring of the control plane that owns `db` (done once, by
    `build_plane`), so every path that holds the database can decrypt."""
    _RINGS[db] = ring


def ring_for(db: Database) -> KeyRing:
    return _RINGS[db]


def _aad(workspace_id: str, name: str, version: int) -> bytes:
    """What a sealed value is bound to: a copy in another row does not decrypt."""
    return f"secret:{workspace_id}:{name}:{version}".encode()


def _view(row: Secret, workspace: str) -> SecretView:
    return SecretView(
        name=row.name,
        workspace=workspace,
        version=row.version,
        created_by=row.created_by,
        updated_by=row.updated_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def _data_key(session: AsyncSession, ring: KeyRing, workspace_id: str) -> WorkspaceKey:
    """The workspace's data key row, made (and wrapped) on its first secret."""
    found = await session.scalar(
        select(WorkspaceKey).where(WorkspaceKey.workspace_id == workspace_id)
    )
    if found is not None:
        return found
    wrapped = ring.new_wrapped_key(workspace_id)
    row = WorkspaceKey(
        id=new_id("dk"),
        workspace_id=workspace_id,
        master_key_id=wrapped.key_id,
        wrapped=wrapped.blob,
    )
    try:
        async with session.begin_nested():
            session.add(row)
    except IntegrityError:  # another request made it first
        found = await session.scalar(
            select(WorkspaceKey).where(WorkspaceKey.workspace_id == workspace_id)
        )
        assert found is not None
        return found
    return row


def _open_key(ring: KeyRing, key: WorkspaceKey) -> bytes:
    return ring.data_key(WrappedKey(key.master_key_id, key.wrapped), key.workspace_id)


async def workspace_data_key(session: AsyncSession, ring: KeyRing, workspace_id: str) -> bytes:
    """The workspace's data key in the clear (made on first use; the caller commits), for
    the other things sealed with it: artifact blobs."""
    return _open_key(ring, await _data_key(session, ring, workspace_id))


async def put_secret(
    session: AsyncSession,
    ring: KeyRing,
    caller: Principal,
    workspace: str,
    name: str,
    value: str,
) -> SecretView:
    """Create a secret, or replace its value with a new version."""
    try:
        check_secret_name(name)
    except ValueError as e:
        raise InvalidSpecError(str(e), field="name") from None
    workspace_id = caller.workspace_id(workspace)
    key = await _data_key(session, ring, workspace_id)
    data_key = _open_key(ring, key)
    now = utcnow()
    row = await session.scalar(
        select(Secret).where(Secret.workspace_id == workspace_id, Secret.name == name)
    )
    if row is None:
        row = Secret(
            id=new_id("sec"),
            workspace_id=workspace_id,
            name=name,
            version=1,
            created_by=caller.name,
            created_at=now,
        )
        session.add(row)
    else:
        row.version += 1
    row.key_id = key.id
    row.ciphertext = seal(data_key, value.encode(), _aad(workspace_id, name, row.version))
    row.updated_by = caller.name
    row.updated_at = now
    await session.commit()
    return _view(row, workspace)


async def list_secrets(
    session: AsyncSession, caller: Principal, workspace: str
) -> list[SecretView]:
    workspace_id = caller.workspace_id(workspace)
    rows = await session.execute(
        select(Secret).where(Secret.workspace_id == workspace_id).order_by(Secret.name)
    )
    return [_view(r, workspace) for r in rows.scalars()]


async def delete_secret(
    session: AsyncSession, caller: Principal, workspace: str, name: str
) -> SecretView:
    """Delete a secret. Jobs that reference it and start later fail with the reason."""
    workspace_id = caller.workspace_id(workspace)
    row = await session.scalar(
        select(Secret).where(Secret.workspace_id == workspace_id, Secret.name == name)
    )
    if row is None:
        raise NotFoundError(f"secret {name!r} not found")
    view = _view(row, workspace)
    await session.delete(row)
    await session.commit()
    return view


async def require_refs(
    session: AsyncSession, workspace_id: str, env: Mapping[str, EnvValue]
) -> None:
    """At submit: every secret a spec references exists (422 naming the first missing),
    so a typo fails now, not when the job starts."""
    wanted = secret_refs(env)
    if not wanted:
        return
    found = set(
        await session.scalars(
            select(Secret.name).where(
                Secret.workspace_id == workspace_id, Secret.name.in_(set(wanted.values()))
            )
        )
    )
    for var, name in sorted(wanted.items()):
        if name not in found:
            raise InvalidSpecError(
                f"env {var} references secret {name!r}, which this workspace does not have; "
                f"set it with 'kaon secret set {name}'",
                field=f"env.{var}",
            )


async def _values(
    session: AsyncSession, ring: KeyRing, workspace_id: str, names: set[str]
) -> dict[str, str]:
    """Secret name -> plaintext, for the names that exist."""
    rows = (
        await session.execute(
            select(Secret, WorkspaceKey)
            .join(WorkspaceKey, WorkspaceKey.id == Secret.key_id)
            .where(Secret.workspace_id == workspace_id, Secret.name.in_(names))
        )
    ).tuples()
    out: dict[str, str] = {}
    for secret, key in rows:
        aad = _aad(workspace_id, secret.name, secret.version)
        out[secret.name] = unseal(_open_key(ring, key), secret.ciphertext, aad).decode()
    return out


async def resolve_for_worker(
    session: AsyncSession, ring: KeyRing, job_id: str, bearer: str | None
) -> dict[str, str]:
    """Variable -> value for the secrets a job's spec references, for its supervisor to
    put into the worker's environment. Only the job's own token of its current attempt is
    accepted, and only while the job's workers may run."""
    job = await session.get(Job, job_id)
    if (
        job is None
        or bearer is None
        or job.job_token_hash is None
        or job.job_token_hash != hash_token(bearer)
        or not JobStatus(job.status).holds_resources()
    ):
        raise AuthError("invalid job token")
    refs = secret_refs(stored_spec(job).env)
    values = await _values(session, ring, job.workspace_id, set(refs.values()))
    missing = sorted(name for name in refs.values() if name not in values)
    if missing:
        raise NotFoundError(f"secret {missing[0]!r} not found in the job's workspace")
    return {var: values[name] for var, name in refs.items()}


# --- masking logs ---------------------------------------------------------------------------


class LogMasker:
    """Replaces every secret value in a byte stream with ``***``. The tail of a chunk that
    may begin a value is held back until the next chunk shows whether it does, so a value
    split across two reads is masked too (only such a tail: a followed log is not delayed
    by text that cannot be a value). Positions are the log's raw byte offsets: output
    starts at `emit_from`, and a value that begins before it still prints as ``***``
    (a read from the middle of a value shows no part of it)."""

    def __init__(self, values: list[str], start: int, emit_from: int) -> None:
        encoded = sorted({v.encode() for v in values if v}, key=len, reverse=True)
        self._values = encoded
        self._firsts = {v[0] for v in encoded}
        self._pattern = re.compile(b"|".join(re.escape(v) for v in encoded))
        self.holdback = max(len(v) for v in encoded) - 1  # most bytes that may start a value
        self._buf = b""
        self._at = start  # raw offset of _buf[0]
        self._emit_from = emit_from

    def feed(self, data: bytes, final: bool = False) -> bytes:
        buf = self._buf + data
        limit = len(buf) if final else len(buf) - self._partial(buf)
        out: list[bytes] = []
        i = 0
        for match in self._pattern.finditer(buf):
            if match.start() >= limit:
                break
            out.append(self._emit(buf, i, match.start()))
            if self._at + match.end() > self._emit_from:
                out.append(MASK.encode())
            i = match.end()
        cut = max(i, limit)
        out.append(self._emit(buf, i, cut))
        self._buf = buf[cut:]
        self._at += cut
        return b"".join(out)

    def _partial(self, buf: bytes) -> int:
        """The length of the longest end of `buf` that begins a value without ending it."""
        for n in range(min(self.holdback, len(buf)), 0, -1):
            if buf[-n] in self._firsts:
                tail = buf[-n:]
                if any(v.startswith(tail) for v in self._values):
                    return n
        return 0

    def _emit(self, buf: bytes, start: int, end: int) -> bytes:
        """buf[start:end] less what lies before `emit_from`."""
        start = max(start, self._emit_from - self._at)
        return buf[start:end] if start < end else b""


async def mask_log(
    db: Database,
    executor: Executor,
    job: Job,
    handle: str | None,
    offset: int,
    chunks: AsyncIterator[bytes],
) -> AsyncIterator[bytes]:
    """`chunks` with the values of the secrets `job` references masked; `chunks` itself
    when it references none (no cost for the jobs that use no secrets)."""
    refs = secret_refs(stored_spec(job).env)
    if not refs:
        return chunks
    async with db.unit_of_work() as s:
        found = await _values(s, ring_for(db), job.workspace_id, set(refs.values()))
    values = [v for v in found.values() if v]
    if not values:
        return chunks
    masker = LogMasker(values, offset, offset)
    start = max(0, offset - masker.holdback)
    if start < offset and handle:  # the bytes just before `offset` may start a value
        before = await asyncio.to_thread(executor.logs, handle, start)
        masker = LogMasker(values, start, offset)
        masker.feed(before[: offset - start])
    return _masked(masker, chunks)


async def _masked(masker: LogMasker, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for data in chunks:
        out = masker.feed(data)
        if out:
            yield out
    tail = masker.feed(b"", final=True)
    if tail:
        yield tail


# --- master key rotation --------------------------------------------------------------------


async def rotate_master_key(db: Database, ring: KeyRing, caller: Principal) -> RotationResult:
    """Re-wrap every data key under a new master key, while the server serves: a new key
    is made first (when the key source can make one), every unwrap accepts old and new
    alike meanwhile, and keys are re-wrapped in small transactions. The old keys are
    forgotten once no data key uses them. Safe to repeat after a crash half-way."""
    caller.require_admin()
    wrapper = ring.wrapper
    if isinstance(wrapper, SupportsNewKey):
        await asyncio.to_thread(wrapper.add_key)
    current = wrapper.current_key_id()
    count = 0
    while True:
        async with db.session() as s:
            rows = list(
                await s.scalars(
                    select(WorkspaceKey)
                    .where(WorkspaceKey.master_key_id != current)
                    .limit(REWRAP_BATCH)
                )
            )
            for row in rows:
                new = ring.rewrap(WrappedKey(row.master_key_id, row.wrapped), row.workspace_id)
                row.master_key_id, row.wrapped, row.rewrapped_at = new.key_id, new.blob, utcnow()
        count += len(rows)
        if len(rows) < REWRAP_BATCH:
            break
    retired: list[str] = []
    if isinstance(wrapper, SupportsNewKey):
        async with db.session() as s:
            in_use = set(await s.scalars(select(WorkspaceKey.master_key_id).distinct()))
        old = {i for i in _known_ids(wrapper) if i not in in_use and i != current}
        retired = await asyncio.to_thread(wrapper.retire, old)
    return RotationResult(master_key_id=current, rewrapped=count, retired=retired)


def _known_ids(wrapper: object) -> list[str]:
    ids = getattr(wrapper, "key_ids", None)
    return list(ids()) if callable(ids) else []
