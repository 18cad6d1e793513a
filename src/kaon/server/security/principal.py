"""The caller of a request: a token, its role, and the workspaces it belongs to.

A request for a workspace the token is not a member of fails exactly like a request for a
workspace that does not exist (404), so a token cannot learn what other teams call
their workspaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import AuthError, NotFoundError, PermissionDeniedError
from kaon.core.tokens import hash_token
from kaon.server.db.models import Token, TokenWorkspace, Workspace, utcnow
from kaon.server.security.ratelimit import note_auth_failure

_LAST_USED_EVERY = timedelta(minutes=1)  # one write a minute per token, not per request


@dataclass(frozen=True)
class Principal:
    """Who calls: a token and the workspaces it may see."""

    token_id: str
    name: str
    role: str
    workspaces: dict[str, str] = field(default_factory=dict)  # name -> id
    expires_at: datetime | None = None  # what it mints cannot outlive it

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def workspace_id(self, name: str) -> str:
        try:
            return self.workspaces[name]
        except KeyError:
            raise NotFoundError(f"workspace {name!r} not found") from None

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDeniedError("this needs an admin token")

    def require_gateway(self) -> None:
        if self.role not in ("admin", "gateway"):
            raise PermissionDeniedError("this needs a gateway or admin token")


def expired(expires_at: datetime | None, now: datetime) -> bool:
    """Whether a token that stops working at `expires_at` (None: never) is dead `now`."""
    return expires_at is not None and expires_at <= now


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def authenticate(session: AsyncSession, token: str | None) -> Principal:
    """The caller holding `token`; AuthError (401) for none, an unknown, a revoked or an
    expired one. One lookup by the hash's unique index decides: revoking a token revokes
    the tokens it minted at that moment (`services.auth.revoke_token`), so no chain of
    parents is walked here. Commits its own bookkeeping (when the token was last used)."""
    if not token:
        note_auth_failure()
        raise AuthError("missing bearer token: pass 'Authorization: Bearer <token>'")
    row = await session.scalar(select(Token).where(Token.hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        note_auth_failure()
        raise AuthError("invalid or revoked token")
    now = utcnow()
    if expired(row.expires_at, now):
        note_auth_failure()
        raise AuthError("token expired")
    if row.last_used_at is None or now - row.last_used_at > _LAST_USED_EVERY:
        await session.execute(update(Token).where(Token.id == row.id).values(last_used_at=now))
        await session.commit()
    names = await session.execute(
        select(Workspace.name, Workspace.id)
        .join(TokenWorkspace, TokenWorkspace.workspace_id == Workspace.id)
        .where(TokenWorkspace.token_id == row.id)
    )
    return Principal(row.id, row.name, row.role, dict(names.tuples().all()), row.expires_at)
