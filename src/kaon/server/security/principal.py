"""The caller of a request: a token, the user it acts for, and its role in each workspace.

A request for a workspace the token is not a member of fails exactly like a request for a
workspace that does not exist (404), so a token cannot learn what other teams call
their workspaces. In a workspace it sees, a request that needs more than the token's role
there is 403 (`security.roles`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, and_, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from kaon.core.errors import AuthError, NotFoundError, PermissionDeniedError
from kaon.core.tokens import hash_token
from kaon.server.db.models import Membership, Token, TokenWorkspace, User, Workspace, utcnow
from kaon.server.security.ratelimit import note_auth_failure
from kaon.server.security.roles import (
    ADMIN,
    AUDIT_ROUTES,
    GATEWAY,
    MEMBER,
    VIEWER,
    at_least,
    effective_role,
    gateway_may,
    instance_admin,
    needed_role,
)

_LAST_USED_EVERY = timedelta(minutes=1)  # one write a minute per token, not per request


@dataclass(frozen=True)
class Principal:
    """Who calls: a token, the workspaces it may see and its role in each."""

    token_id: str
    name: str
    role: str  # the token's own role: its cap in every workspace, or "gateway"
    workspaces: dict[str, str] = field(default_factory=dict)  # name -> id
    expires_at: datetime | None = None  # what it mints cannot outlive it
    roles: dict[str, str] = field(default_factory=dict)  # workspace name -> its role there
    user_id: str | None = None  # None: a system token (the gateway's)
    instance_admin: bool = False

    @property
    def is_admin(self) -> bool:
        """The instance's administrator: every workspace, quota, pool and user."""
        return self.instance_admin

    def workspace_id(self, name: str) -> str:
        try:
            return self.workspaces[name]
        except KeyError:
            raise NotFoundError(f"workspace {name!r} not found") from None

    def role_in(self, workspace: str) -> str:
        """The token's role in `workspace`; 404 for one it does not see."""
        self.workspace_id(workspace)
        return self.roles.get(workspace, VIEWER)

    def require(self, workspace: str, role: str) -> str:
        """The workspace's id, if the token holds at least `role` there: 404 for a
        workspace it does not see, 403 naming the role for one where it holds less."""
        workspace_id = self.workspace_id(workspace)
        if not at_least(self.role_in(workspace), role):
            raise PermissionDeniedError(f"this needs the {role} role in workspace {workspace}")
        return workspace_id

    def only(self, role: str) -> Principal:
        """The same caller, seeing only the workspaces where it holds at least `role`."""
        kept = {n: i for n, i in self.workspaces.items() if at_least(self.role_in(n), role)}
        return replace(self, workspaces=kept, roles={n: self.roles[n] for n in kept})

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDeniedError("this needs an admin token")

    def require_gateway(self) -> None:
        """The route table holds every workspace's deployments, their callers' token
        hashes and the replicas' credentials: a gateway's token or the instance admin's
        only, never a workspace admin's."""
        if self.role != GATEWAY and not self.is_admin:
            raise PermissionDeniedError("this needs a gateway token or the instance admin")


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
    rows = (await session.execute(_lookup(hash_token(token)))).tuples().all()
    row = rows[0][0] if rows else None
    user_is_admin = rows[0][1] if rows else None
    if row is None or row.revoked_at is not None or (row.user_id and user_is_admin is None):
        note_auth_failure()  # a token whose user is gone is dead, however it got there
        raise AuthError("invalid or revoked token")
    if rows[0][2] is not None:
        note_auth_failure()
        raise AuthError("the user this token acts for is disabled; an admin can enable it")
    now = utcnow()
    if expired(row.expires_at, now):
        note_auth_failure()
        raise AuthError("token expired")
    has_user, is_admin_user = row.user_id is not None, bool(user_is_admin)
    roles: dict[str, str] = {}
    workspaces: dict[str, str] = {}
    for _, _, _, name, workspace_id, membership in rows:
        role = effective_role(row.role, has_user, is_admin_user, membership)
        if name is not None and workspace_id is not None and role is not None:
            workspaces[name], roles[name] = workspace_id, role
    principal = Principal(
        row.id,
        row.name,
        row.role,
        workspaces,
        row.expires_at,
        roles,
        row.user_id,
        instance_admin(row.role, has_user, is_admin_user),
    )
    if row.last_used_at is None or now - row.last_used_at > _LAST_USED_EVERY:
        await session.execute(update(Token).where(Token.id == row.id).values(last_used_at=now))
        await session.commit()
    return principal


def _lookup(
    token_hash: str,
) -> Select[Token, bool | None, datetime | None, str | None, str | None, str | None]:
    """One query: the token (by its hash's unique index), whether its user is the
    instance's admin and since when it is disabled, and each of its workspaces with its
    user's role there. A removed membership or a disabled user therefore counts from the
    next request on, and no chain of parents or users is walked."""
    return (
        select(
            Token,
            User.is_admin,
            User.disabled_at,
            Workspace.name,
            Workspace.id,
            Membership.role,
        )
        .outerjoin(User, User.id == Token.user_id)
        .outerjoin(TokenWorkspace, TokenWorkspace.token_id == Token.id)
        .outerjoin(Workspace, Workspace.id == TokenWorkspace.workspace_id)
        .outerjoin(
            Membership,
            and_(
                Membership.user_id == Token.user_id,
                Membership.workspace_id == TokenWorkspace.workspace_id,
            ),
        )
        .where(Token.hash == token_hash)
    )


def authorize(caller: Principal, request: Request) -> Principal:
    """Check the role the request's route needs in its workspace (`roles.needed_role`):
    the one place roles are enforced, so a route cannot forget it. The audit log is its
    workspaces' admins': for the others the caller is narrowed to those workspaces."""
    template = str(getattr(request.scope.get("route"), "path", ""))
    if caller.role == GATEWAY and not gateway_may(template):
        raise PermissionDeniedError("a gateway token reads the route table and posts reports only")
    workspace = request.path_params.get("workspace")
    needed = needed_role(request.method, template)
    if needed is not None and isinstance(workspace, str):
        caller.require(workspace, needed)
    if template.startswith(AUDIT_ROUTES) and not caller.is_admin:
        asked = request.query_params.get("workspace")
        if asked is not None:
            caller.require(asked, ADMIN)
        return caller.only(ADMIN)
    return caller


def may_call_deployments() -> ColumnElement[bool]:
    """Which tokens, joined with `TokenWorkspace`, may call that workspace's deployments
    through the gateway: a member's or admin's, capped by its user's role there (viewers
    only read). Tokens of no user (from before users) keep their role."""
    member_there = exists().where(
        Membership.user_id == Token.user_id,
        Membership.workspace_id == TokenWorkspace.workspace_id,
        Membership.role.in_((MEMBER, ADMIN)),
    )
    admin_user = exists().where(User.id == Token.user_id, User.is_admin.is_(True))
    return and_(
        Token.role.in_((MEMBER, ADMIN)),
        or_(Token.user_id.is_(None), admin_user, member_there),
    )


def live_tokens() -> ColumnElement[bool]:
    """Which tokens `authenticate` would accept now, as a condition for the gateway's
    route table: not revoked, not expired, and acting for no user or for one that is not
    disabled."""
    disabled = exists().where(User.id == Token.user_id, User.disabled_at.is_not(None))
    return and_(
        Token.revoked_at.is_(None),
        or_(Token.expires_at.is_(None), Token.expires_at > utcnow()),
        ~disabled,
    )
