"""Tokens and workspaces: creating, listing and revoking them.

A token is stored only as its SHA-256 and shown once, at creation. Who the caller is
(`Principal`) is `kaon.server.security.principal`'s business.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.auth import (
    CreatedToken,
    CreateToken,
    DeploymentTokenView,
    TokenView,
    WorkspaceView,
)
from kaon.core.errors import ConflictError, NotFoundError
from kaon.core.tokens import hash_token
from kaon.server.db.models import (
    Deployment,
    DeploymentToken,
    Token,
    TokenWorkspace,
    Workspace,
    utcnow,
)
from kaon.server.security.lifetimes import check_role, child_expiry
from kaon.server.security.principal import Principal
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
    await _insert_token(session, "admin", "admin", secret, [workspace_id])
    return secret


async def _insert_token(
    session: AsyncSession,
    name: str,
    role: str,
    secret: str,
    workspace_ids: list[str],
    *,
    parent_id: str | None = None,
    expires_at: datetime | None = None,
) -> Token:
    token = Token(
        id=new_id("tok"),
        name=name,
        prefix=secret[:9],
        hash=hash_token(secret),
        role=role,
        parent_id=parent_id,
        expires_at=expires_at,
    )
    session.add(token)
    await session.flush()
    for wid in workspace_ids:
        session.add(TokenWorkspace(token_id=token.id, workspace_id=wid))
    await session.flush()
    return token


async def create_token(session: AsyncSession, caller: Principal, req: CreateToken) -> CreatedToken:
    """A token minted by the caller, which it records as its parent: never a role above
    the caller's, a workspace the caller is not in, or a lifetime past the caller's
    (`security.lifetimes`)."""
    check_role(caller.role, req.role)
    ids = [caller.workspace_id(name) for name in req.workspaces]
    expires = child_expiry(caller.expires_at, req.expires_at, req.expires_in, utcnow())
    secret = new_token()
    token = await _insert_token(
        session, req.name, req.role, secret, ids, parent_id=caller.token_id, expires_at=expires
    )
    await session.commit()
    return CreatedToken(**_token_view(token, req.workspaces).model_dump(), token=secret)


def _token_view(token: Token, workspaces: list[str]) -> TokenView:
    return TokenView(
        id=token.id,
        name=token.name,
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
    """Admins see every token; others see their own and the ones they minted."""
    query = select(Token).order_by(Token.created_at)
    if not caller.is_admin:
        mine = await _descendants(session, [caller.token_id])
        query = query.where(Token.id.in_([caller.token_id, *mine]))
    tokens = (await session.execute(query)).scalars().all()
    names = await _token_workspaces(session, [t.id for t in tokens])
    return [_token_view(t, names.get(t.id, [])) for t in tokens]


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
    tokens = [t for t in (await session.execute(query)).scalars() if t.revoked_at is None]
    if not caller.is_admin:
        mine = {caller.token_id, *await _descendants(session, [caller.token_id])}
        tokens = [t for t in tokens if t.id in mine]
    if not tokens:
        raise NotFoundError(f"token {ref!r} not found")
    if len(tokens) > 1:
        raise ConflictError(f"{len(tokens)} tokens are named {ref!r}; revoke one by its id")
    token = tokens[0]
    now = utcnow()
    token.revoked_at = now
    children = await _descendants(session, [token.id])
    if children:
        await session.execute(
            update(Token)
            .where(Token.id.in_(children), Token.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    await session.commit()
    names = await _token_workspaces(session, [token.id])
    return _token_view(token, names.get(token.id, []))


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
