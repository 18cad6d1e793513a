"""Typed request dependencies: the caller, a database session, and the control plane's
parts. Routers declare what they need with these; nothing reads ``app.state`` but
`plane`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.autoscaling import LoadBoard
from kaon.executors.base import Executor
from kaon.server.config import Settings
from kaon.server.context import ControlPlane
from kaon.server.db.session import Database
from kaon.server.security.audit import note_caller
from kaon.server.security.principal import Principal, authenticate, authorize, bearer
from kaon.server.services.gateway import RouteVersions
from kaon.server.wake import Wake


def plane(request: Request) -> ControlPlane:
    found = request.app.state.plane
    assert isinstance(found, ControlPlane)
    return found


PlaneDep = Annotated[ControlPlane, Depends(plane)]


def _db(p: PlaneDep) -> Database:
    return p.db


def _settings(p: PlaneDep) -> Settings:
    return p.settings


def _executor(p: PlaneDep) -> Executor:
    return p.executor


def _wake(p: PlaneDep) -> Wake:
    return p.wake


def _loads(p: PlaneDep) -> LoadBoard:
    return p.loads


def _routes(p: PlaneDep) -> RouteVersions:
    return p.routes


DbDep = Annotated[Database, Depends(_db)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ExecutorDep = Annotated[Executor, Depends(_executor)]
WakeDep = Annotated[Wake, Depends(_wake)]
LoadBoardDep = Annotated[LoadBoard, Depends(_loads)]
RouteVersionsDep = Annotated[RouteVersions, Depends(_routes)]


async def _session(db: DbDep) -> AsyncIterator[AsyncSession]:
    """One session per request, closed before the response is sent (scope="function"),
    so a service's commit is visible to the caller's next request."""
    async with db.unit_of_work() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(_session, scope="function")]


async def _caller(
    request: Request,
    session: SessionDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    caller = await authenticate(session, bearer(authorization))
    note_caller(caller.token_id, caller.name)  # for the audit log's record of this call
    return authorize(caller, request)  # the caller's role, checked here for every route


CallerDep = Annotated[Principal, Depends(_caller)]
