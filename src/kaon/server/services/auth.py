"""Users, their roles in workspaces, tokens and workspaces: creating, listing, removing.

A token is stored only as its SHA-256 and shown once, at creation; it acts for a user
(none for the gateway's) with a role no higher than the user's. Who the caller is and
what it may do (`Principal`) is `kaon.server.security`'s business: the roles a request
needs are checked there, once, before any service here runs.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, delete, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.auth import (
    CreatedToken,
    CreateToken,
    DeploymentTokenView,
    TokenView,
    WorkspaceView,
)
from kaon.core.errors import ConflictError, InvalidSpecError, NotFoundError, PermissionDeniedError
from kaon.core.tokens import hash_token
from kaon.core.users import MemberView, UserView
from kaon.server.db.models import (
    Deployment,
    DeploymentToken,
    Membership,
    Token,
    TokenWorkspace,
    User,
    Workspace,
    utcnow,
)
from kaon.server.security.lifetimes import check_role, child_expiry
from kaon.server.security.principal import Principal
from kaon.server.security.roles import ADMIN, GATEWAY, may_mint
from kaon.server.security.tokens import new_id, new_token

DEFAULT_WORKSPACE = "default"


async def ensure_default_workspace(session: AsyncSession) -> str:
    found = await session.scalar(select(Workspace.id).where(Workspace.name == DEFAULT_WORKSPACE))
    if found is not None:
        return found
    workspace = Workspace(id=new_id("ws"), name=DEFAULT_WORKSPACE)
    session.add(workspace)
    await session.flush()
    return workspace.id


async def bootstrap_admin(session: AsyncSession, token: str | None) -> str | None:
    """Create the first admin token if there is none yet. Returns the plaintext token when
    one was created (generated unless `token` is given), else None."""
    if await session.scalar(select(Token.id).where(Token.role == "admin").limit(1)) is not None:
        return None
    workspace_id = await ensure_default_workspace(session)
    secret = token or new_token()
    user_id = await _instance_admin_user(session)
    await _insert_token(session, "admin", "admin", secret, [workspace_id], user_id=user_id)
    return secret


async def _instance_admin_user(session: AsyncSession) -> str:
    """The instance-admin user the first admin token acts for: the oldest one, else a new
    one named "admin" (or "admin-<random>" where a user holds that name)."""
    found = await session.scalar(
        select(User.id).where(User.is_admin.is_(True)).order_by(User.created_at).limit(1)
    )
    if found is not None:
        return found
    name = "admin"
    if await session.scalar(select(User.id).where(User.name == name)) is not None:
        name = new_id("admin")
    user = User(id=new_id("usr"), name=name, is_admin=True, created_by="bootstrap")
    session.add(user)
    await session.flush()
    return user.id


async def _insert_token(
    session: AsyncSession,
    name: str,
    role: str,
    secret: str,
    workspace_ids: list[str],
    *,
    parent_id: str | None = None,
    expires_at: datetime | None = None,
    user_id: str | None = None,
) -> Token:
    token = Token(
        id=new_id("tok"),
        name=name,
        prefix=secret[:9],
        hash=hash_token(secret),
        role=role,
        parent_id=parent_id,
        expires_at=expires_at,
        user_id=user_id,
    )
    session.add(token)
    await session.flush()
    for wid in workspace_ids:
        session.add(TokenWorkspace(token_id=token.id, workspace_id=wid))
    await session.flush()
    return token


async def create_token(session: AsyncSession, caller: Principal, req: CreateToken) -> CreatedToken:
    """A token minted by the caller, which it records as its parent: never a role above
    the caller's (`security.lifetimes`) nor above its user's in any of its workspaces
    (`security.roles.may_mint`), a workspace the caller is not in, or a lifetime past the
    caller's. It acts for `req.user` (the caller's own user when none is named): a user
    mints for itself; a workspace admin for the members of the workspaces it administers;
    the instance admin for anyone. Gateway tokens act for no user."""
    check_role(caller.role, req.role)
    if req.role == GATEWAY and not caller.is_admin:
        raise PermissionDeniedError("a gateway token needs the instance's admin to create it")
    user_id, user_name, bounded = await _token_user(session, caller, req)
    ids: list[str] = []
    for name in req.workspaces:
        ids.append(caller.workspace_id(name))
        if user_id != caller.user_id and not caller.is_admin:
            caller.require(name, ADMIN)  # a token for someone else: its workspaces' admin
        bound = await _membership(session, user_id, ids[-1]) if bounded else None
        if bounded and bound is None:
            raise InvalidSpecError(
                f"user: {user_name!r} is not a member of workspace {name!r}", field="user"
            )
        why = may_mint(caller.role_in(name), bound, req.role)
        if why is not None:
            raise PermissionDeniedError(
                f"cannot create a {req.role} token in workspace {name}: {why}"
            )
    expires = child_expiry(caller.expires_at, req.expires_at, req.expires_in, utcnow())
    secret = new_token()
    token = await _insert_token(
        session,
        req.name,
        req.role,
        secret,
        ids,
        parent_id=caller.token_id,
        expires_at=expires,
        user_id=user_id,
    )
    await session.commit()
    view = _token_view(token, req.workspaces, user_name)
    return CreatedToken(**view.model_dump(), token=secret)


async def _token_user(
    session: AsyncSession, caller: Principal, req: CreateToken
) -> tuple[str | None, str | None, bool]:
    """The user a new token acts for (id, name) and whether its memberships bound the
    token's role (not for an instance admin, nor for a token of no user)."""
    if req.role == GATEWAY:
        return None, None, False
    if req.user is None:
        if caller.user_id is None:
            return None, None, False
        mine = await session.get(User, caller.user_id)
        assert mine is not None  # authentication refuses a token whose user is gone
        return mine.id, mine.name, not mine.is_admin
    user = await session.scalar(select(User).where(User.name == req.user))
    if user is None:
        raise NotFoundError(f"user {req.user!r} not found")
    if user.is_admin and user.id != caller.user_id and not caller.is_admin:
        raise PermissionDeniedError("only the instance admin creates tokens for an admin user")
    return user.id, user.name, not user.is_admin


async def _membership(session: AsyncSession, user_id: str | None, workspace_id: str) -> str | None:
    if user_id is None:
        return None
    found = await session.get(Membership, (user_id, workspace_id))
    return found.role if found is not None else None


def _token_view(token: Token, workspaces: list[str], user: str | None = None) -> TokenView:
    return TokenView(
        id=token.id,
        name=token.name,
        user=user,
        prefix=token.prefix,
        role=token.role,
        workspaces=sorted(workspaces),
        created_at=token.created_at,
        revoked_at=token.revoked_at,
        last_used_at=token.last_used_at,
        expires_at=token.expires_at,
        parent_id=token.parent_id,
    )


async def list_tokens(session: AsyncSession, caller: Principal) -> list[TokenView]:
    """The instance admin sees every token; others see their own, the ones they minted,
    and those of the workspaces they administer."""
    query = select(Token, User.name).outerjoin(User, User.id == Token.user_id)
    if not caller.is_admin:
        query = query.where(await _visible(session, caller))
    rows = (await session.execute(query.order_by(Token.created_at))).tuples().all()
    names = await _token_workspaces(session, [t.id for t, _ in rows])
    return [_token_view(t, names.get(t.id, []), user) for t, user in rows]


async def _visible(session: AsyncSession, caller: Principal) -> ColumnElement[bool]:
    """Which tokens a caller other than the instance admin may list and revoke."""
    mine = [caller.token_id, *await _descendants(session, [caller.token_id])]
    administered = list(caller.only(ADMIN).workspaces.values())
    in_administered = exists().where(
        TokenWorkspace.token_id == Token.id, TokenWorkspace.workspace_id.in_(administered)
    )
    return or_(Token.id.in_(mine), in_administered) if administered else Token.id.in_(mine)


async def _descendants(session: AsyncSession, roots: list[str]) -> list[str]:
    """Ids of every token minted by one of `roots`, transitively (one indexed query per
    generation; a cycle cannot happen, a parent is always older than its child)."""
    found: list[str] = []
    frontier = roots
    while frontier:
        minted = select(Token.id).where(Token.parent_id.in_(frontier))
        frontier = list((await session.execute(minted)).scalars())
        found.extend(frontier)
    return found


async def _token_workspaces(session: AsyncSession, ids: list[str]) -> dict[str, list[str]]:
    rows = await session.execute(
        select(TokenWorkspace.token_id, Workspace.name)
        .join(Workspace, Workspace.id == TokenWorkspace.workspace_id)
        .where(TokenWorkspace.token_id.in_(ids))
    )
    out: dict[str, list[str]] = {}
    for token_id, name in rows.tuples():
        out.setdefault(token_id, []).append(name)
    return out


async def revoke_token(session: AsyncSession, caller: Principal, ref: str) -> TokenView:
    """Revoke by id or by name, and with it every token it minted, transitively: the
    cascade happens here, once, so that authentication stays a single lookup. Members may
    revoke their own token and the ones it minted."""
    query = select(Token).where((Token.id == ref) | (Token.name == ref))
    if not caller.is_admin:
        query = query.where(await _visible(session, caller))
    tokens = [t for t in (await session.execute(query)).scalars() if t.revoked_at is None]
    if not tokens:
        raise NotFoundError(f"token {ref!r} not found")
    if len(tokens) > 1:
        raise ConflictError(f"{len(tokens)} tokens are named {ref!r}; revoke one by its id")
    token = tokens[0]
    await _revoke_with_descendants(session, [token.id])
    await session.commit()
    names = await _token_workspaces(session, [token.id])
    return _token_view(token, names.get(token.id, []))


async def _revoke_with_descendants(session: AsyncSession, ids: list[str]) -> None:
    """Revoke `ids` and every token they minted, transitively, now."""
    doomed = [*ids, *await _descendants(session, ids)]
    await session.execute(
        update(Token)
        .where(Token.id.in_(doomed), Token.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )


async def create_workspace(session: AsyncSession, caller: Principal, name: str) -> WorkspaceView:
    caller.require_admin()
    if await session.scalar(select(Workspace.id).where(Workspace.name == name)) is not None:
        raise ConflictError(f"workspace {name!r} already exists")
    workspace = Workspace(id=new_id("ws"), name=name)
    session.add(workspace)
    await session.flush()
    session.add(TokenWorkspace(token_id=caller.token_id, workspace_id=workspace.id))
    await session.commit()
    return WorkspaceView(name=workspace.name, created_at=workspace.created_at)


async def list_workspaces(session: AsyncSession, caller: Principal) -> list[WorkspaceView]:
    rows = await session.execute(
        select(Workspace)
        .where(Workspace.id.in_(list(caller.workspaces.values())))
        .order_by(Workspace.name)
    )
    return [WorkspaceView(name=w.name, created_at=w.created_at) for w in rows.scalars()]


async def _deployment_id(
    session: AsyncSession, caller: Principal, workspace: str, name: str
) -> str:
    workspace_id = caller.workspace_id(workspace)
    found = await session.scalar(
        select(Deployment.id).where(
            Deployment.name == name, Deployment.workspace_id == workspace_id
        )
    )
    if found is None:
        raise NotFoundError(f"deployment {name!r} not found")
    return found


def _deployment_token_view(token: DeploymentToken, deployment: str) -> DeploymentTokenView:
    return DeploymentTokenView(
        id=token.id,
        name=token.name,
        prefix=token.prefix,
        deployment=deployment,
        created_at=token.created_at,
        revoked_at=token.revoked_at,
    )


async def list_deployment_tokens(
    session: AsyncSession, caller: Principal, workspace: str, name: str
) -> list[DeploymentTokenView]:
    """A deployment's tokens, revoked ones included, by name and prefix."""
    deployment_id = await _deployment_id(session, caller, workspace, name)
    rows = await session.execute(
        select(DeploymentToken)
        .where(DeploymentToken.deployment_id == deployment_id)
        .order_by(DeploymentToken.created_at)
    )
    return [_deployment_token_view(t, name) for t in rows.scalars()]


async def revoke_deployment_token(
    session: AsyncSession, caller: Principal, workspace: str, name: str, ref: str
) -> DeploymentTokenView:
    """Revoke one of a deployment's tokens by id or name; the gateway drops it with its
    next route table."""
    deployment_id = await _deployment_id(session, caller, workspace, name)
    rows = await session.execute(
        select(DeploymentToken).where(
            DeploymentToken.deployment_id == deployment_id,
            (DeploymentToken.id == ref) | (DeploymentToken.name == ref),
            DeploymentToken.revoked_at.is_(None),
        )
    )
    tokens = list(rows.scalars())
    if not tokens:
        raise NotFoundError(f"token {ref!r} of deployment {name!r} not found")
    if len(tokens) > 1:
        raise ConflictError(f"{len(tokens)} tokens are named {ref!r}; revoke one by its id")
    tokens[0].revoked_at = utcnow()
    await session.commit()
    return _deployment_token_view(tokens[0], name)


# --- users and their roles in workspaces ---------------------------------------------------


async def create_user(
    session: AsyncSession, caller: Principal, name: str, is_admin: bool
) -> UserView:
    """A user (the instance admin's business); it can do nothing until it is made a
    member of a workspace and given a token."""
    caller.require_admin()
    if await session.scalar(select(User.id).where(User.name == name)) is not None:
        raise ConflictError(f"user {name!r} already exists")
    user = User(id=new_id("usr"), name=name, is_admin=is_admin, created_by=caller.name)
    session.add(user)
    await session.commit()
    return UserView(
        name=name, is_admin=is_admin, created_at=user.created_at, created_by=caller.name
    )


async def list_users(session: AsyncSession, caller: Principal) -> list[UserView]:
    """Every user for the instance admin; anyone else sees its own user only."""
    query = select(User).order_by(User.name)
    if not caller.is_admin:
        query = query.where(User.id == caller.user_id)
    users = list((await session.execute(query)).scalars())
    rows = await session.execute(
        select(Membership.user_id, Workspace.name, Membership.role)
        .join(Workspace, Workspace.id == Membership.workspace_id)
        .where(Membership.user_id.in_([u.id for u in users]))
    )
    roles: dict[str, dict[str, str]] = {}
    for user_id, workspace, role in rows.tuples():
        roles.setdefault(user_id, {})[workspace] = role
    return [_user_view(u, roles.get(u.id, {})) for u in users]


def _user_view(user: User, workspaces: dict[str, str] | None = None) -> UserView:
    return UserView(
        name=user.name,
        is_admin=user.is_admin,
        created_at=user.created_at,
        created_by=user.created_by,
        workspaces=workspaces or {},
        disabled=user.disabled_at is not None,
    )


async def set_disabled(
    session: AsyncSession, caller: Principal, name: str, disabled: bool
) -> UserView:
    """Disable a user (its tokens are refused at once, by the API and, with its next
    route table, the gateway; nothing is revoked, so enabling it gives them back), or
    enable it again. The user the calling token acts for cannot be disabled with it."""
    caller.require_admin()
    user = await session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFoundError(f"user {name!r} not found")
    if disabled and user.id == caller.user_id:
        raise ConflictError("a token cannot disable the user it acts for; use another admin's")
    if disabled != (user.disabled_at is not None):
        user.disabled_at = utcnow() if disabled else None
        await session.commit()
    return _user_view(user)


async def delete_user(session: AsyncSession, caller: Principal, name: str) -> UserView:
    """Remove a user: its tokens, and every token they minted, are revoked at once (the
    same cascade as revoking a token), and its memberships go. The user the calling token
    acts for cannot be removed with that token."""
    caller.require_admin()
    user = await session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFoundError(f"user {name!r} not found")
    if user.id == caller.user_id:
        raise ConflictError("a token cannot delete the user it acts for; use another admin's")
    view = _user_view(user)
    owned = list(await session.scalars(select(Token.id).where(Token.user_id == user.id)))
    if owned:
        await _revoke_with_descendants(session, owned)
        await session.execute(update(Token).where(Token.id.in_(owned)).values(user_id=None))
    await session.execute(delete(Membership).where(Membership.user_id == user.id))
    await session.delete(user)
    await session.commit()
    return view


async def _user_id(session: AsyncSession, name: str) -> str:
    found = await session.scalar(select(User.id).where(User.name == name))
    if found is None:
        raise NotFoundError(f"user {name!r} not found")
    return found


async def list_members(
    session: AsyncSession, caller: Principal, workspace: str
) -> list[MemberView]:
    workspace_id = caller.workspace_id(workspace)
    rows = await session.execute(
        select(User.name, Membership.role)
        .join(User, User.id == Membership.user_id)
        .where(Membership.workspace_id == workspace_id)
        .order_by(User.name)
    )
    return [MemberView(user=u, workspace=workspace, role=r) for u, r in rows.tuples()]


async def set_member(
    session: AsyncSession, caller: Principal, workspace: str, user: str, role: str
) -> MemberView:
    """Add a user to a workspace or change its role there (the workspace's admins; the
    role they need is checked with every request, `security.roles`). Lowering a role
    lowers what the user's tokens may do there from their next request on."""
    workspace_id = caller.workspace_id(workspace)
    user_id = await _user_id(session, user)
    found = await session.get(Membership, (user_id, workspace_id))
    if found is None:
        session.add(Membership(user_id=user_id, workspace_id=workspace_id, role=role))
    else:
        found.role = role
    await session.commit()
    return MemberView(user=user, workspace=workspace, role=role)


async def remove_member(
    session: AsyncSession, caller: Principal, workspace: str, user: str
) -> MemberView:
    """Take a user out of a workspace: its tokens no longer see it from their next
    request on (authentication joins the memberships)."""
    workspace_id = caller.workspace_id(workspace)
    user_id = await _user_id(session, user)
    found = await session.get(Membership, (user_id, workspace_id))
    if found is None:
        raise NotFoundError(f"user {user!r} is not a member of workspace {workspace!r}")
    view = MemberView(user=user, workspace=workspace, role=found.role)
    await session.delete(found)
    await session.commit()
    return view
