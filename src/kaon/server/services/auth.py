"""Tokens and workspaces: who may call, and which workspaces they see.

A token is stored only as its SHA-256. A request for a workspace the token is not a
member of fails exactly like a request for a workspace that does not exist (404).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.auth import CreatedToken, CreateToken, TokenView, WorkspaceView
from kaon.core.errors import AuthError, ConflictError, NotFoundError, PermissionDeniedError
from kaon.server.db.models import Token, TokenWorkspace, Workspace, utcnow
from kaon.server.services.ids import hash_token, new_id, new_token

DEFAULT_WORKSPACE = "default"
_LAST_USED_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a token and the workspaces it belongs to."""

    token_id: str
    name: str
    role: str
    workspaces: dict[str, str] = field(default_factory=dict)  # name -> id

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


async def authenticate(session: AsyncSession, bearer: str | None) -> Principal:
    if not bearer:
        raise AuthError("missing bearer token: pass 'Authorization: Bearer <token>'")
    token = (
        await session.execute(select(Token).where(Token.hash == hash_token(bearer)))
    ).scalar_one_or_none()
    if token is None or token.revoked_at is not None:
        raise AuthError("invalid or revoked token")
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > _LAST_USED_EVERY:
        await session.execute(update(Token).where(Token.id == token.id).values(last_used_at=now))
    rows = await session.execute(
        select(Workspace.name, Workspace.id)
        .join(TokenWorkspace, TokenWorkspace.workspace_id == Workspace.id)
        .where(TokenWorkspace.token_id == token.id)
    )
    return Principal(token.id, token.name, token.role, dict(rows.tuples().all()))


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
    await session.flush()
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
    await session.flush()
    return WorkspaceView(name=workspace.name, created_at=workspace.created_at)


async def list_workspaces(session: AsyncSession, caller: Principal) -> list[WorkspaceView]:
    rows = await session.execute(
        select(Workspace)
        .where(Workspace.id.in_(list(caller.workspaces.values())))
        .order_by(Workspace.name)
    )
    return [WorkspaceView(name=w.name, created_at=w.created_at) for w in rows.scalars()]
