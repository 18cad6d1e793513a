"""What the control plane tells its gateways (the route table), and what it hears back
(load reports). The protocol itself: `kaon.core.gateway`.

Deployment names are unique within a workspace: each route carries its workspace's name,
and gateways key their deployments, and the load they report, by
``{workspace}/{name}`` (`kaon.core.gateway.deployment_key`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.autoscaling import LoadBoard
from kaon.core.deployments import DeploymentSpec
from kaon.core.gateway import GatewayReport, Route, RouteTable
from kaon.core.replicas import ReplicaStatus
from kaon.server.db.models import (
    Deployment,
    DeploymentToken,
    Job,
    Replica,
    Token,
    TokenWorkspace,
    User,
    Workspace,
)
from kaon.server.security.principal import Principal, live_tokens, may_call_deployments
from kaon.server.security.roles import ADMIN
from kaon.server.security.tokens import replica_key
from kaon.server.services.timeline import DeploymentTimeline
from kaon.server.wake import Wake


class RouteVersions:
    """Numbers route tables so that a gateway can skip an unchanged one.

    Lives in the control plane's memory: after a restart the numbering starts again, and a
    gateway that sees a version it does not have simply rebuilds its table once.
    """

    def __init__(self) -> None:
        self.version = 0
        self._last = ""

    def stamp(self, table: RouteTable) -> RouteTable:
        content = json.dumps(table.model_dump(mode="json")["routes"], sort_keys=True)
        if content != self._last:
            self._last = content
            self.version += 1
        return table.model_copy(update={"version": self.version})


def route_for(
    spec: DeploymentSpec,
    replicas: list[str],
    token_hashes: list[str],
    replica_keys: dict[str, str] | None = None,
    workspace: str = "",
) -> Route:
    """The route of one deployment of `workspace`: its READY replicas (with the
    credential each expects from the gateway) and the tokens that may call it."""
    return Route(
        name=spec.name,
        workspace=workspace,
        replicas=replicas,
        token_hashes=token_hashes,
        replica_keys=replica_keys or {},
        public=spec.public,
        request_timeout_s=spec.request_timeout_s,
        max_queue=spec.max_queue,
        max_concurrency=spec.max_concurrency,
        max_body_bytes=spec.max_body_bytes,
    )


async def route_table(
    session: AsyncSession, caller: Principal, versions: RouteVersions, token_key: bytes
) -> RouteTable:
    """Every deployment, its READY replicas with their credentials (derived from
    `token_key`, see `security.tokens.replica_key`), and the hashes of the tokens that may
    call it: its own deployment tokens and the live tokens of its workspace's members.
    The instance admin's live tokens see every deployment on the gateway's ``/metrics``."""
    caller.require_gateway()
    rows = await session.execute(
        select(Deployment, Workspace.name).join(Workspace, Workspace.id == Deployment.workspace_id)
    )
    urls, keys = await _ready_replicas(session, token_key)
    own = await _deployment_token_hashes(session)
    members = await _member_token_hashes(session)
    routes = []
    for d, workspace in rows.tuples():
        if d.deleting:
            continue
        allowed = sorted(set(own.get(d.id, []) + members.get(d.workspace_id, [])))
        spec = DeploymentSpec.model_validate(d.spec)
        mine = sorted(urls.get(d.id, []))
        found = {url: keys[url] for url in mine}
        routes.append(route_for(spec, mine, allowed, found, workspace=workspace))
    routes.sort(key=lambda r: r.key)
    admins = await _instance_admin_token_hashes(session)
    return versions.stamp(RouteTable(routes=routes, metrics_token_hashes=admins))


def record_report(
    caller: Principal,
    report: GatewayReport,
    board: LoadBoard,
    now: float,
    wake: Wake,
    timeline: DeploymentTimeline | None = None,
) -> None:
    """Load as a gateway saw it; a 'demand' report wakes the autoscaler at once. The
    `timeline` keeps a short history of it for the console's charts."""
    caller.require_gateway()
    board.record(report, now)
    if timeline is not None:
        timeline.record(report, now)
    if report.reason == "demand":
        wake.deployments()


async def _ready_replicas(
    session: AsyncSession, token_key: bytes
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Deployment id -> URLs of its READY replicas; URL -> that replica's credential (of
    its job's current attempt, the one its process was started with)."""
    rows = await session.execute(
        select(Replica.deployment_id, Replica.url, Job.id, Job.attempt)
        .join(Job, Job.id == Replica.job_id)
        .where(Replica.state == ReplicaStatus.READY.value, Replica.url.is_not(None))
    )
    urls: dict[str, list[str]] = {}
    keys: dict[str, str] = {}
    for deployment_id, url, job_id, attempt in rows.tuples():
        if url is None:
            continue
        urls.setdefault(deployment_id, []).append(url)
        keys[url] = replica_key(token_key, job_id, attempt)
    return urls, keys


async def _deployment_token_hashes(session: AsyncSession) -> dict[str, list[str]]:
    rows = await session.execute(
        select(DeploymentToken.deployment_id, DeploymentToken.hash).where(
            DeploymentToken.revoked_at.is_(None)
        )
    )
    return _grouped(rows.tuples())


async def _member_token_hashes(session: AsyncSession) -> dict[str, list[str]]:
    """Workspace id -> hashes of the live tokens of its members."""
    rows = await session.execute(
        select(TokenWorkspace.workspace_id, Token.hash)
        .join(Token, Token.id == TokenWorkspace.token_id)
        .where(live_tokens())
        .where(may_call_deployments())  # viewers read; calling is a member's
    )
    return _grouped(rows.tuples())


async def _instance_admin_token_hashes(session: AsyncSession) -> list[str]:
    """Hashes of the live tokens that act as the instance's admin
    (`security.roles.instance_admin`: an admin token of an admin user, or of no user)."""
    admin_user = select(User.id).where(User.id == Token.user_id, User.is_admin.is_(True))
    rows = await session.scalars(
        select(Token.hash)
        .where(Token.role == ADMIN, live_tokens())
        .where(or_(Token.user_id.is_(None), admin_user.exists()))
        .order_by(Token.hash)
    )
    return list(rows)


def _grouped(pairs: Iterable[tuple[Any, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in pairs:
        out.setdefault(str(key), []).append(str(value))
    return out
