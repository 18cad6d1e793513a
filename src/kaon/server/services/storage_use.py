"""The bytes a workspace stores, and the limit on them: the workspace's own (its quota's
``storage``, `kaon quota set WS --storage 500Gi`), else the instance's default
(``KAON_WORKSPACE_STORAGE_LIMIT``).

A workspace stores artifact blobs (``blobs``, counted as sealed in the store) and code
snapshots (``snapshots``, as uploaded). One member's uploads must not fill the disk every
workspace shares, so an upload that would take a workspace past the limit is refused
with 413 naming the limit and the use: before its body is read when the use alone (or
the declared length) is past it, else once its size is known, keeping nothing. Two
uploads racing may each fit alone and pass it together by at most one upload's size.
Outputs a job leaves (kept by the control plane itself) are counted, never refused.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from kaon.core.errors import PayloadTooLargeError
from kaon.core.resources import describe_memory
from kaon.server.db.models import Blob, Quota, Snapshot
from kaon.server.db.session import Database

LIMIT_SETTING = "KAON_WORKSPACE_STORAGE_LIMIT"

# The limit of the control plane that owns each engine (set once by `build_plane`): the
# services that store bytes hold a session, whose engine names the plane.
_LIMITS: weakref.WeakKeyDictionary[AsyncEngine, int] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class StorageUse:
    blobs: int  # bytes of artifact blobs, as stored (sealed)
    snapshots: int  # bytes of code snapshots, as uploaded

    @property
    def total(self) -> int:
        return self.blobs + self.snapshots


def attach_limit(db: Database, limit: int) -> None:
    _LIMITS[db.engine] = limit


def default_limit(session: AsyncSession) -> int | None:
    """The default storage limit of the plane `session` belongs to (None: no plane set
    one)."""
    bind = session.bind
    return _LIMITS.get(bind) if isinstance(bind, AsyncEngine) else None


@dataclass(frozen=True)
class StorageLimit:
    bytes: int
    own: bool  # the workspace's quota sets it (not the instance's default)


async def limit_of(session: AsyncSession, workspace_id: str) -> StorageLimit | None:
    """The workspace's storage limit: its quota's, else the plane's default (None: no
    plane set one)."""
    own = await session.scalar(select(Quota.storage).where(Quota.workspace_id == workspace_id))
    if own is not None:
        return StorageLimit(own, own=True)
    default = default_limit(session)
    return None if default is None else StorageLimit(default, own=False)


async def stored(session: AsyncSession, workspace_id: str) -> StorageUse:
    blobs = await session.scalar(
        select(func.coalesce(func.sum(Blob.stored_size), 0)).where(
            Blob.workspace_id == workspace_id
        )
    )
    snapshots = await session.scalar(
        select(func.coalesce(func.sum(Snapshot.size), 0)).where(
            Snapshot.workspace_id == workspace_id
        )
    )
    return StorageUse(blobs=int(blobs or 0), snapshots=int(snapshots or 0))


def refusal(used: int, adding: int, limit: int, own: bool = False) -> str | None:
    """Why storing `adding` more bytes on top of `used` is refused, or None when it fits.
    Pure: the message names the limit, the use and what to do."""
    if used + adding <= limit:
        return None
    setting = "its quota's storage" if own else LIMIT_SETTING
    return (
        f"the workspace stores {describe_memory(used)} of its storage limit of "
        f"{describe_memory(limit)} ({setting}); this upload of "
        f"{describe_memory(adding)} would pass it. Delete artifact versions it no longer "
        "needs, or ask an administrator to raise the limit"
    )


async def check_room(session: AsyncSession, workspace_id: str, adding: int) -> None:
    """413 when `adding` bytes more would take the workspace past the limit."""
    limit = await limit_of(session, workspace_id)
    if limit is None:
        return
    use = await stored(session, workspace_id)
    message = refusal(use.total, adding, limit.bytes, limit.own)
    if message is not None:
        raise PayloadTooLargeError(message)
