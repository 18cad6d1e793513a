"""The control plane's app: `create_app(settings)`, the one place that knows HTTP status
codes, and the lifespan that migrates the database and starts the reconcilers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kaon import __version__
from kaon.core.errors import InvalidSpecError, KaonError
from kaon.executors.base import NodeInventory
from kaon.executors.gpus import declared_gpus, discover_gpus
from kaon.executors.local import LocalExecutor
from kaon.server.config import Settings
from kaon.server.db.session import Database
from kaon.server.reconcilers.deployments import DeploymentReconciler, LoadBoard
from kaon.server.reconcilers.jobs import JobReconciler, ReconcilerConfig
from kaon.server.reconcilers.nodes import NodeReconciler
from kaon.server.routers import auth as auth_router
from kaon.server.routers import deployments as deployments_router
from kaon.server.routers import jobs as jobs_router
from kaon.server.routers import nodes as nodes_router
from kaon.server.routers import quotas as quotas_router
from kaon.server.routers import snapshots as snapshots_router
from kaon.server.routers.deployments import RouteVersions
from kaon.server.services import auth

logger = logging.getLogger("kaon.server")
JSON_BODY_LIMIT = 8 * 2**20


def local_inventory(settings: Settings) -> list[NodeInventory]:
    """This machine as one node, or as `local_nodes` nodes that split its CPUs and memory
    (``KAON_LOCAL_NODES``; declared capacity, ``KAON_NODE_*``, is then per node)."""
    gpus = declared_gpus(settings.node_gpus) if settings.node_gpus else discover_gpus()
    n = settings.local_nodes
    host = socket.gethostname() if settings.node_name == "local" else settings.node_name
    cpu = settings.node_cpus or float(os.cpu_count() or 1) / n
    memory = settings.node_memory or int(psutil.virtual_memory().total) // n
    return [
        NodeInventory(
            id=settings.node_name if n == 1 else f"{settings.node_name}-{i}",
            name=host if n == 1 else f"{host}-{i}",
            address="127.0.0.1",
            cpu=cpu,
            memory=memory,
            gpus=tuple(gpus),
            labels=dict(settings.labels),
        )
        for i in range(n)
    ]


def load_token_key(home: Path) -> bytes:
    """The key that signs job tokens; made once, readable by the server's user only."""
    path = home / "server.key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        os.replace(path.with_suffix(".tmp"), path)
    return bytes.fromhex(path.read_text().strip())


def create_app(settings: Settings, run_reconcilers: bool = True) -> FastAPI:
    """The control plane as an ASGI app. With `run_reconcilers` False (tests that step the
    reconcilers by hand), nothing runs in the background."""
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url)
    nodes = local_inventory(settings)
    executor = LocalExecutor(settings.runs_dir, settings.home / "checkpoints", nodes)
    config = ReconcilerConfig(
        api_url=settings.api_url,
        blobs_dir=str(settings.blobs_dir),
        token_key=load_token_key(settings.home),
        stop_grace_s=settings.stop_grace_s,
        interval_s=settings.reconcile_interval_s,
    )
    job_reconciler = JobReconciler(db, executor, config)
    node_reconciler = NodeReconciler(db, executor)
    load_board = LoadBoard()
    deployment_reconciler = DeploymentReconciler(db, load_board, job_reconciler.poke)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.migrate()
        async with db.session() as s:
            await auth.ensure_default_workspace(s)
            created = await auth.bootstrap_admin(s, settings.bootstrap_token)
        if created and not settings.bootstrap_token:
            print(f"kaon: created the admin token (shown once): {created}", flush=True)
        await node_reconciler.run_once()
        tasks = []
        if run_reconcilers:
            tasks = [
                asyncio.create_task(job_reconciler.run_forever(), name="jobs"),
                asyncio.create_task(node_reconciler.run_forever(), name="nodes"),
                asyncio.create_task(deployment_reconciler.run_forever(), name="deployments"),
            ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await db.dispose()

    app = FastAPI(
        title="Kaon",
        version=__version__,
        description="The Kaon control plane: a pool of compute, jobs and deployments.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.executor = executor
    app.state.job_reconciler = job_reconciler
    app.state.node_reconciler = node_reconciler
    app.state.deployment_reconciler = deployment_reconciler
    app.state.load_board = load_board
    app.state.route_versions = RouteVersions()
    _install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=JSON_BODY_LIMIT, exempt_suffix="/snapshots")

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    for router in (
        auth_router.router,
        nodes_router.router,
        jobs_router.router,
        jobs_router.report_router,
        snapshots_router.router,
        quotas_router.router,
        deployments_router.router,
        deployments_router.gateway_router,
    ):
        app.include_router(router)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KaonError)
    async def _kaon_error(request: Request, exc: KaonError) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.message, "error": type(exc).__name__}
        if isinstance(exc, InvalidSpecError) and exc.field:
            body["field"] = exc.field
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        fields = [_error_field(e) for e in errors]
        message = "; ".join(
            f"{f or 'body'}: {e['msg']}" for f, e in zip(fields, errors, strict=True)
        )
        return JSONResponse(
            {
                "detail": message,
                "error": "InvalidSpecError",
                "field": fields[0] if fields else None,
                "errors": [
                    {"field": f, "message": e["msg"]} for f, e in zip(fields, errors, strict=True)
                ],
            },
            status_code=422,
        )


def _error_field(error: Any) -> str:
    """The dotted path of the offending field, or "body" for the body as a whole (malformed
    JSON, whose location ends in a character offset, or a body that is not an object)."""
    if error["type"] == "json_invalid":
        return "body"
    return ".".join(str(p) for p in error["loc"] if p != "body") or "body"


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413 (uploads have their own limit)."""

    def __init__(self, app: ASGIApp, limit: int, exempt_suffix: str) -> None:
        self.app = app
        self.limit = limit
        self.exempt_suffix = exempt_suffix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/").endswith(self.exempt_suffix):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _too_large(send, self.limit)
            return
        seen = 0
        over = False

        async def limited() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge
            return message

        async def checked_send(message: Message) -> None:
            # FastAPI answers 400 to any error while it reads a body, _TooLarge included:
            # once the body went over the limit, whatever the app answers becomes our 413.
            if not over:
                await send(message)
            elif message["type"] == "http.response.start":
                await _too_large(send, self.limit)

        try:
            await self.app(scope, limited, checked_send)
        except _TooLarge:
            await _too_large(send, self.limit)


class _TooLarge(Exception):
    pass


async def _too_large(send: Callable[[Message], Awaitable[None]], limit: int) -> None:
    detail = {"detail": f"request body over {limit} bytes", "error": "PayloadTooLargeError"}
    body = json.dumps(detail).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
