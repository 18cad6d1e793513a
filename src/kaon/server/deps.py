"""Request dependencies: the database, the caller, and the running reconcilers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from kaon.executors.base import Executor
from kaon.server.db.session import Database
from kaon.server.reconcilers.jobs import JobReconciler
from kaon.server.services.auth import Principal, authenticate


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_executor(request: Request) -> Executor:
    executor: Executor = request.app.state.executor
    return executor


def get_jobs_reconciler(request: Request) -> JobReconciler:
    reconciler: JobReconciler = request.app.state.job_reconciler
    return reconciler


DbDep = Annotated[Database, Depends(get_db)]
ExecutorDep = Annotated[Executor, Depends(get_executor)]
JobReconcilerDep = Annotated[JobReconciler, Depends(get_jobs_reconciler)]


async def get_caller(
    db: DbDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    async with db.session() as s:
        return await authenticate(s, bearer(authorization))


CallerDep = Annotated[Principal, Depends(get_caller)]
