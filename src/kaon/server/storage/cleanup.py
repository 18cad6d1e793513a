"""What the artifact clean-up collects: pure decisions over what was listed, so each rule
is a table test (`kaon.server.reconcilers.artifact_cleanup` lists and deletes).

Three kinds of leftovers, each with the rule that keeps work in progress safe:

- **Blob rows no version names** (an upload whose push never created its version): only
  once older than a grace period, so an upload in progress, whose version comes after its
  blobs, is never collected under it.
- **Stored values no row vouches for** (a deleted workspace's, a released model's, an
  upload refused or cut off after its value was written): only past the grace period,
  since an upload writes its value a moment before its row; and never most of the store
  at once (`looks_like_another_database`), which is what a control plane started on the
  wrong database would otherwise do.
- **The node cache of materialised versions**: bounded in bytes, least recently used
  first, never a copy a job not yet ended or a deployment uses, nor one used within
  `min_idle` (it may be on its way to a job that is starting now).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class BlobRow:
    workspace_id: str
    sha256: str
    created_at: datetime


@dataclass(frozen=True)
class StoredValue:
    key: str  # <workspace id>/<sha256>
    modified: datetime


@dataclass(frozen=True)
class CachedCopy:
    digest: str
    size: int
    last_used: datetime


def unreferenced_blobs(
    rows: Iterable[BlobRow],
    named: set[tuple[str, str]],
    now: datetime,
    grace: timedelta,
) -> list[tuple[str, str]]:
    """(workspace id, sha256) of the blob rows no version names, older than `grace`."""
    return sorted(
        (r.workspace_id, r.sha256)
        for r in rows
        if (r.workspace_id, r.sha256) not in named and now - r.created_at >= grace
    )


def orphan_values(
    values: Iterable[StoredValue], rows: set[str], now: datetime, grace: timedelta
) -> list[str]:
    """Keys of stored values without a blob row (`rows` holds the keys that have one),
    once older than `grace`: a deleted workspace's, a released blob's, a refused upload's."""
    return sorted(v.key for v in values if v.key not in rows and now - v.modified >= grace)


SAFETY_SHARE = 0.5
SAFETY_MIN = 16


def looks_like_another_database(collect: int, stored: int) -> bool:
    """True when a pass would collect most of the store (over half of at least
    SAFETY_MIN values): the sign of a control plane started on the wrong or an empty
    database (whose rows name none of the values), not of ordinary deletes. The pass then
    collects no value and says so, rather than empty the store."""
    return collect >= SAFETY_MIN and collect > SAFETY_SHARE * stored


def cache_evictions(
    copies: Iterable[CachedCopy],
    in_use: set[str],
    limit: int,
    now: datetime,
    min_idle: timedelta,
) -> list[str]:
    """Digests to evict, least recently used first, until the cache's total is at most
    `limit` bytes; copies in use or used within `min_idle` stay even when that leaves the
    cache over its limit."""
    ordered = sorted(copies, key=lambda c: (c.last_used, c.digest))
    total = sum(c.size for c in ordered)
    out: list[str] = []
    for copy in ordered:
        if total <= limit:
            break
        if copy.digest in in_use or now - copy.last_used < min_idle:
            continue
        out.append(copy.digest)
        total -= copy.size
    return out
