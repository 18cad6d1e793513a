"""Roles in a workspace, and what each request needs: pure decisions, no database.

A user holds a role in each workspace it belongs to (viewer < member < admin); a token
acts for a user with a role of its own, its cap. What a token may do in a workspace is
the lesser of the two, worked out once per request at authentication
(`security.principal.authenticate`). What a request needs is decided here from its method
and its route alone (`needed_role`), and checked in one place, the caller dependency
(`kaon.server.deps`), so no route can forget it:

- viewer: read anything of the workspace;
- member: also write it (submit and cancel jobs, deploy, set secrets, push artifacts,
  register models, call deployments);
- admin: also manage its members, its tokens, and read its audit log.

The instance's administrator (a user with ``is_admin``, through a token of role admin)
may do everything everywhere; instance-wide routes (workspaces, quotas, pools, users)
check that themselves with `Principal.require_admin`.
"""

from __future__ import annotations

from typing import Final

VIEWER: Final = "viewer"
MEMBER: Final = "member"
ADMIN: Final = "admin"
GATEWAY: Final = "gateway"

WORKSPACE_ROLES: Final = (VIEWER, MEMBER, ADMIN)
"""The roles a user can hold in a workspace, least first."""

TOKEN_ROLES: Final = (*WORKSPACE_ROLES, GATEWAY)
"""The roles a token can carry: a workspace role (its cap), or the gateway's."""

_RANK: Final = {VIEWER: 0, MEMBER: 1, ADMIN: 2}

WORKSPACE_ROUTES: Final = "/api/v1/workspaces/{workspace}"
"""Every route of a workspace's resources starts so; its ``workspace`` parameter names it."""

AUDIT_ROUTES: Final = "/api/v1/audit"
GATEWAY_ROUTES: Final = ("/api/v1/gateway/", "/api/v1/whoami")
"""The route table, load reports, and who the token is: all a gateway's token reaches."""
_READS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_ADMIN_ROUTES: Final = ("/members",)  # under WORKSPACE_ROUTES: writes need admin


def at_least(role: str, needed: str) -> bool:
    """Whether `role` allows what `needed` allows (an unknown role allows nothing)."""
    return role in _RANK and _RANK[role] >= _RANK[needed]


def lesser(a: str, b: str) -> str:
    """The lower of two workspace roles."""
    return a if _RANK[a] <= _RANK[b] else b


def cap(token_role: str) -> str | None:
    """The most a token of `token_role` may do in a workspace; None for the gateway's
    token, which sees no workspace at all (its route table and reports are not a
    workspace's, see `gateway_may`)."""
    return token_role if token_role in _RANK else None


def effective_role(
    token_role: str, has_user: bool, user_is_admin: bool, membership: str | None
) -> str | None:
    """What a token may do in one of its workspaces: the lesser of its cap and its user's
    membership there; None when its user is no longer a member (the workspace is then
    not the token's). An instance admin's tokens are capped only by their own role; a
    token of no user (a system token) only by its role."""
    most = cap(token_role)
    if most is None or not has_user or user_is_admin:
        return most
    if membership not in _RANK:
        return None
    return lesser(most, membership)


def instance_admin(token_role: str, has_user: bool, user_is_admin: bool) -> bool:
    """Whether a token acts as the instance's administrator: an admin token of an
    instance-admin user (or of no user: admin tokens from before users existed)."""
    return token_role == ADMIN and (not has_user or user_is_admin)


def gateway_may(route: str) -> bool:
    """Whether a gateway's token may use `route` (a route template): the gateway's two
    routes and whoami only. Everything else, the instance-wide reads included (nodes, pools, the
    caller's own workspaces), is refused, so a stolen gateway token reads the route table
    and can post load reports, and nothing more."""
    return route.startswith(GATEWAY_ROUTES)


def needed_role(method: str, route: str) -> str | None:
    """The role a request needs in the workspace its route names, or None for a route of
    no workspace. Reads need viewer; writes need member, or admin for the workspace's
    members."""
    if not route.startswith(WORKSPACE_ROUTES + "/") and route != WORKSPACE_ROUTES:
        return None
    if method.upper() in _READS:
        return VIEWER
    rest = route[len(WORKSPACE_ROUTES) :]
    if rest.startswith(_ADMIN_ROUTES):
        return ADMIN
    return MEMBER


def may_mint(caller_role: str, target_role: str | None, child: str) -> str | None:
    """Why a token of role `child` may not be minted in a workspace where the minting
    token holds `caller_role` and the user the new token acts for holds `target_role`
    (None: an instance admin, no bound), or None if it may."""
    if child not in _RANK:
        return None  # gateway tokens are the instance admin's (`lifetimes.check_role`)
    if not at_least(caller_role, child):
        return f"the creating token holds only the {caller_role} role"
    if target_role is not None and not at_least(target_role, child):
        return f"the user holds only the {target_role} role"
    return None
