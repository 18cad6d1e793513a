"""What a token may mint: its role, its workspaces and its lifetime bound the child's.

Pure decisions, no database: `services.auth` asks them before it stores a token. A token
never mints one that can do more than itself (a role above its own, a workspace it is not
in) or that outlives it, so revoking or waiting out a token is enough to end everything
that descends from it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from kaon.core.auth import MAX_TOKEN_LIFETIME_S
from kaon.core.errors import InvalidSpecError, PermissionDeniedError

MINTS: dict[str, frozenset[str]] = {
    "admin": frozenset({"admin", "member", "viewer", "gateway"}),
    "member": frozenset({"member", "viewer"}),
    "viewer": frozenset({"viewer"}),
    "gateway": frozenset(),  # the gateway reads routes and posts reports, nothing more
}
"""Parent role -> the roles it may give a token it creates."""


def check_role(parent: str, child: str) -> None:
    """PermissionDeniedError (403) unless a `parent` token may mint a `child` one."""
    if child not in MINTS.get(parent, frozenset()):
        if parent == "gateway":
            raise PermissionDeniedError("a gateway token cannot create tokens")
        article = "an" if child[:1] in "aeiou" else "a"
        raise PermissionDeniedError(f"a {parent} token cannot create {article} {child} token")


def child_expiry(
    parent: datetime | None,
    expires_at: datetime | None,
    expires_in: float | None,
    now: datetime,
) -> datetime | None:
    """When a new token stops working: as asked (a moment, or seconds from `now`), else
    when its parent does (None: never). Asking for a moment already past, or later than
    the parent's end, is a 422 naming ``expires_at``: silently shortening it would hand
    out a token that dies sooner than its holder was told."""
    asked = expires_at
    if expires_in is not None:
        asked = now + timedelta(seconds=expires_in)
    if asked is None:
        return parent
    if asked <= now:
        raise InvalidSpecError("expires_at: must be in the future", field="expires_at")
    if asked > now + timedelta(seconds=MAX_TOKEN_LIFETIME_S):
        raise InvalidSpecError("expires_at: at most ten years from now", field="expires_at")
    if parent is not None and asked > parent:
        raise InvalidSpecError(
            f"expires_at: must not be later than the creating token's own end "
            f"({parent.isoformat()})",
            field="expires_at",
        )
    return asked
