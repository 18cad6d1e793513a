"""Tokens and workspaces: creating, listing and revoking them.

A token is stored only as its SHA-256 and shown once, at creation. Who the caller is
(`Principal`) is `kaon.server.security.principal`'s business.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.auth import CreatedToken, CreateToken, TokenView, WorkspaceView
from kaon.core.errors import ConflictError, NotFoundError
from kaon.core.tokens import hash_token
from kaon.server.db.models import Token, TokenWorkspace, Workspace, utcnow
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
    session: AsyncSession, name: str, role: str, secret: str, workspace_ids: list[str]
) -> Token:
    token = Token(
        id=new_id("tok"), name=name, prefix=secret[:9], hash=hash_token(secret), role=role
    )
    session.add(token)
    await session.flush()
    for wid in workspace_ids:
        session.add(TokenWorkspace(token_id=token.id, workspace_id=wid))
    await session.flush()
    return token


async def create_token(session: AsyncSession, caller: Principal, req: CreateToken) -> CreatedToken:
    """Admins create tokens for any workspace they belong to; members only for their own
    workspaces, and only member tokens."""
    if req.role in ("admin", "gateway"):
        caller.require_admin()
    ids = [caller.workspace_id(name) for name in req.workspaces]
    secret = new_token()
    token = await _insert_token(session, req.name, req.role, secret, ids)
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
    )


async def list_tokens(session: AsyncSession, caller: Principal) -> list[TokenView]:
    """Admins see every token; members see their own."""
    query = select(Token).order_by(Token.created_at)
    if not caller.is_admin:
        query = query.where(Token.id == caller.token_id)
    tokens = (await session.execute(query)).scalars().all()
    names = await _token_workspaces(session, [t.id for t in tokens])
    return [_token_view(t, names.get(t.id, [])) for t in tokens]


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
    """Revoke by id or by name. Members may revoke only their own token."""
    query = select(Token).where((Token.id == ref) | (Token.name == ref))
    tokens = [t for t in (await session.execute(query)).scalars() if t.revoked_at is None]
    if not caller.is_admin:
        tokens = [t for t in tokens if t.id == caller.token_id]
    if not tokens:
        raise NotFoundError(f"token {ref!r} not found")
    if len(tokens) > 1:
        raise ConflictError(f"{len(tokens)} tokens are named {ref!r}; revoke one by its id")
    token = tokens[0]
    token.revoked_at = utcnow()
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
