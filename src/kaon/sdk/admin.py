"""``client.nodes``, ``client.tokens``, ``client.workspaces``, ``client.quotas`` and
`Users`: the pool and who may use it."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from kaon.core.auth import CreatedToken, TokenView, WorkspaceView
from kaon.core.errors import NotFoundError
from kaon.core.nodes import NodeView
from kaon.core.pools import PoolView
from kaon.core.quotas import QuotaView
from kaon.core.users import MemberView, UserView

if TYPE_CHECKING:
    from kaon.sdk.client import Client


class Nodes:
    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self) -> list[NodeView]:
        return [NodeView.model_validate(n) for n in self._c.request("GET", "/api/v1/nodes").json()]


class Tokens:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(
        self,
        name: str,
        workspaces: list[str] | None = None,
        role: str = "member",
        expires_at: datetime | None = None,
        user: str | None = None,
    ) -> CreatedToken:
        """A token minted by this client's token, which it cannot outlive or outrank;
        `expires_at` (aware) ends it sooner. It acts for `user` (default: this token's
        user), with `role` (viewer, member or admin) at most that user's role."""
        body: dict[str, object] = {
            "name": name,
            "workspaces": workspaces or [self._c.workspace],
            "role": role,
        }
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat()
        if user is not None:
            body["user"] = user
        return CreatedToken.model_validate(
            self._c.request("POST", "/api/v1/tokens", json=body).json()
        )

    def list(self) -> list[TokenView]:
        return [
            TokenView.model_validate(t) for t in self._c.request("GET", "/api/v1/tokens").json()
        ]

    def revoke(self, ref: str) -> TokenView:
        return TokenView.model_validate(self._c.request("DELETE", f"/api/v1/tokens/{ref}").json())


class Workspaces:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, name: str) -> WorkspaceView:
        return WorkspaceView.model_validate(
            self._c.request("POST", "/api/v1/workspaces", json={"name": name}).json()
        )

    def members(self, workspace: str) -> list[MemberView]:
        """The users of a workspace and their roles there."""
        found = self._c.request("GET", f"/api/v1/workspaces/{workspace}/members").json()
        return [MemberView.model_validate(m) for m in found]

    def add_member(self, workspace: str, user: str, role: str = "member") -> MemberView:
        """Add `user` to `workspace` as viewer, member or admin (or change its role):
        the workspace's admins only."""
        path = f"/api/v1/workspaces/{workspace}/members/{user}"
        return MemberView.model_validate(self._c.request("PUT", path, json={"role": role}).json())

    def remove_member(self, workspace: str, user: str) -> MemberView:
        """Take `user` out of `workspace`; its tokens stop seeing it at once."""
        path = f"/api/v1/workspaces/{workspace}/members/{user}"
        return MemberView.model_validate(self._c.request("DELETE", path).json())

    def list(self) -> list[WorkspaceView]:
        return [
            WorkspaceView.model_validate(w)
            for w in self._c.request("GET", "/api/v1/workspaces").json()
        ]


class Users:
    """Users (the instance admin's): ``Users(client).create("ada")``."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, name: str, admin: bool = False) -> UserView:
        body = {"name": name, "is_admin": admin}
        return UserView.model_validate(self._c.request("POST", "/api/v1/users", json=body).json())

    def list(self) -> list[UserView]:
        return [UserView.model_validate(u) for u in self._c.request("GET", "/api/v1/users").json()]

    def disable(self, name: str) -> UserView:
        """Refuse the user's tokens until `enable`; nothing is revoked."""
        return self._update(name, disabled=True)

    def enable(self, name: str) -> UserView:
        return self._update(name, disabled=False)

    def _update(self, name: str, **fields: object) -> UserView:
        response = self._c.request("PATCH", f"/api/v1/users/{name}", json=fields)
        return UserView.model_validate(response.json())

    def delete(self, name: str) -> UserView:
        """Remove a user; its tokens, and the tokens they minted, are revoked."""
        return UserView.model_validate(self._c.request("DELETE", f"/api/v1/users/{name}").json())


class Quotas:
    """Workspace quotas: ``client.quotas.set("team-a", gpus=8, borrow_limit=8)``."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def set(
        self,
        workspace: str,
        gpus: float | None = None,
        cpus: float | None = None,
        memory: str | int | None = None,
        borrow_limit: float | None = None,
        borrow_cpus: float | None = None,
        borrow_memory: str | int | None = None,
        storage: str | int | None = None,
    ) -> QuotaView:
        """Unset values are unlimited, but `storage` (bytes the workspace may store),
        which unset is the instance's default; `borrow_limit` is in GPUs."""
        body = {
            "gpus": gpus,
            "cpus": cpus,
            "memory": memory,
            "borrow_limit": borrow_limit,
            "borrow_cpus": borrow_cpus,
            "borrow_memory": borrow_memory,
            "storage": storage,
        }
        response = self._c.request("PUT", f"/api/v1/quotas/{workspace}", json=body)
        return QuotaView.model_validate(response.json())

    def list(self) -> list[QuotaView]:
        return [
            QuotaView.model_validate(q) for q in self._c.request("GET", "/api/v1/quotas").json()
        ]

    def delete(self, workspace: str) -> None:
        self._c.request("DELETE", f"/api/v1/quotas/{workspace}")


class Pools:
    """Where the compute comes from: ``client.pools.add("gpu", address="10.0.0.5:6379")``."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def add(self, name: str, address: str, api_url: str | None = None) -> PoolView:
        """Attach a Ray cluster (admin). Returns at once, while it connects."""
        body = {"name": name, "kind": "ray", "address": address, "api_url": api_url}
        return PoolView.model_validate(self._c.request("POST", "/api/v1/pools", json=body).json())

    def list(self) -> list[PoolView]:
        return [PoolView.model_validate(p) for p in self._c.request("GET", "/api/v1/pools").json()]

    def get(self, name: str) -> PoolView:
        for pool in self.list():
            if pool.name == name:
                return pool
        raise NotFoundError(f"pool {name!r} not found")

    def remove(self, name: str, force: bool = False) -> PoolView:
        params = {"force": "true"} if force else {}
        response = self._c.request("DELETE", f"/api/v1/pools/{name}", params=params)
        return PoolView.model_validate(response.json())
