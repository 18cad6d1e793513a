"""Which unprivileged user runs each workspace's workers (a control plane run as root).

Each workspace gets a uid of its own from the configured range (``KAON_WORKER_UIDS``,
e.g. ``20000-29999``), with the same number as its group: the uid its id hashes to, or
the next free one when an earlier workspace holds that. Workspaces are taken in the
order they were made, so adding one never moves another's uid, and the same database
always gives the same answer (no table needed). The uids need no entry in
``/etc/passwd``: the kernel checks numbers, and a worker's HOME is its own folder.

Pure: the launch step reads the workspaces and asks `workspace_uids`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

DEFAULT_WORKER_UIDS = (200000, 209999)
"""The range a control plane run as root uses when ``KAON_WORKER_UIDS`` is not set: high
enough to be no one's login uid on an ordinary machine (``useradd`` starts at 1000, and
the usual subordinate ranges of user namespaces at 100000 with 65536 each)."""

OFF = "off"  # KAON_WORKER_UIDS=off: workers run as the control plane's own user


def worker_uids_setting(value: str | None, euid: int) -> tuple[int, int] | None:
    """The uid range workers run in: the one given; off; or, left unset, the default
    range when the control plane runs as root (a root control plane never runs a job as
    root unless told ``off``) and none otherwise (an ordinary user cannot switch)."""
    if value is None or not value.strip():
        return DEFAULT_WORKER_UIDS if euid == 0 else None
    if value.strip().lower() == OFF:
        return None
    return parse_uid_range(value)


def parse_uid_range(text: str) -> tuple[int, int]:
    """``"20000-29999"`` -> (20000, 29999); ValueError for anything else, root's uid 0
    included (a worker must never run as root)."""
    first, sep, last = text.strip().partition("-")
    if not sep or not first.isdigit() or not last.isdigit():
        raise ValueError(f"KAON_WORKER_UIDS must look like 20000-29999, not {text!r}")
    low, high = int(first), int(last)
    if low < 1000 or high < low or high >= 2**31:
        raise ValueError(f"KAON_WORKER_UIDS {text!r} must be a range of uids from 1000 up")
    return low, high


def workspace_uids(workspace_ids: Sequence[str], uids: tuple[int, int]) -> dict[str, int]:
    """A distinct uid for each workspace, given in the order they were made. A range
    smaller than the number of workspaces cannot keep them apart: ValueError."""
    low, high = uids
    size = high - low + 1
    if len(workspace_ids) > size:
        raise ValueError(f"KAON_WORKER_UIDS holds {size} uids for {len(workspace_ids)} workspaces")
    taken: set[int] = set()
    out: dict[str, int] = {}
    for workspace_id in workspace_ids:
        slot = int.from_bytes(hashlib.sha256(workspace_id.encode()).digest()[:8], "big") % size
        while low + slot in taken:
            slot = (slot + 1) % size
        out[workspace_id] = low + slot
        taken.add(low + slot)
    return out
