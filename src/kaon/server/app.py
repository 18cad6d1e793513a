"""The control plane's app: `create_app(settings)` wires the parts together, and its
lifespan migrates the database and starts the reconcilers.

```
 routers (thin) -> services (rules, transactions) -> db
 reconcilers (jobs, nodes, deployments) -> scheduler, autoscaling (pure) + executor (I/O)
```
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.engine import make_url

from kaon._version import __version__
from kaon.autoscaling import LoadBoard
from kaon.core.ratelimit import FailureLimiter
from kaon.executors.base import Executor
from kaon.executors.gpus import declared_gpus, discover_gpus
from kaon.executors.local import LaunchAborts, LocalExecutor, local_nodes
from kaon.executors.pools import Pools
from kaon.executors.sandbox import SandboxPolicy
from kaon.server.config import Settings
from kaon.server.context import ControlPlane
from kaon.server.db.models import Pool
from kaon.server.db.session import Database
from kaon.server.errors import install_error_handlers
from kaon.server.middleware import BodyLimit, RefuseNul
from kaon.server.reconcilers.artifact_cleanup import ArtifactCleanup
from kaon.server.reconcilers.deployments import DeploymentReconciler
from kaon.server.reconcilers.history import HistoryRecorder
from kaon.server.reconcilers.jobs import JobReconciler, LaunchConfig
from kaon.server.reconcilers.pools import PoolReconciler
from kaon.server.reconcilers.retention import Retention
from kaon.server.reconcilers.usage import UsageRetention
from kaon.server.routers import artifacts as artifacts_router
from kaon.server.routers import audit as audit_router
from kaon.server.routers import auth as auth_router
from kaon.server.routers import console as console_router
from kaon.server.routers import deployments as deployments_router
from kaon.server.routers import gateway as gateway_router
from kaon.server.routers import job_files as job_files_router
from kaon.server.routers import jobs as jobs_router
from kaon.server.routers import metrics as metrics_router
from kaon.server.routers import models as models_router
from kaon.server.routers import nodes as nodes_router
from kaon.server.routers import pools as pools_router
from kaon.server.routers import quotas as quotas_router
from kaon.server.routers import secrets as secrets_router
from kaon.server.routers import snapshots as snapshots_router
from kaon.server.routers import storage as storage_router
from kaon.server.security.audit import AuditTrail
from kaon.server.security.home import make_home_private
from kaon.server.security.keys import KeyRing, load_master_keys
from kaon.server.security.ratelimit import AuthFailureLimit
from kaon.server.security.tokens import ADMIN_TOKEN_FILE, load_token_key, write_private
from kaon.server.services import artifacts as artifact_store
from kaon.server.services import auth, pools, storage_use
from kaon.server.services import secrets as secret_store
from kaon.server.services.audit import AuditAppender, record_in_transactions
from kaon.server.services.gateway import RouteVersions
from kaon.server.services.timeline import DeploymentTimeline
from kaon.server.storage import open_blob_store
from kaon.server.telemetry import ApiMetrics, Telemetry

JSON_BODY_LIMIT = 8 * 2**20
INSTANCE_ID_FILE = "instance-id"  # kaon.sdk.config reads it under the same name
ROUTERS = (
    auth_router.router,
    nodes_router.router,
    pools_router.router,
    jobs_router.router,
    jobs_router.report_router,
    snapshots_router.router,
    storage_router.router,
    job_files_router.router,
    quotas_router.router,
    deployments_router.router,
    gateway_router.router,
    metrics_router.router,
    console_router.router,
    console_router.api,
    console_router.history_api,
    secrets_router.router,
    secrets_router.worker_router,
    secrets_router.admin_router,
    models_router.router,
    audit_router.router,
    artifacts_router.router,
)


def streams_its_body(path: str) -> bool:
    """Uploads that their service streams to disk under a limit of its own (snapshots,
    checkpoint files), exempt from the JSON body limit."""
    return (
        path.rstrip("/").endswith("/snapshots")
        or bool(job_files_router.UPLOAD_PATH.fullmatch(path))
        or bool(artifacts_router.UPLOAD_PATH.fullmatch(path))
    )


def build_plane(settings: Settings) -> ControlPlane:
    """The control plane's parts, not yet running."""
    make_home_private(settings.home, passable=settings.worker_uids is not None)
    db = Database(settings.database_url, settings.db_busy_timeout_s)
    secret_store.attach_keys(db, KeyRing(load_master_keys(settings.home)))
    blobs = open_blob_store(
        settings.artifact_store, settings.artifacts_dir, settings.s3_endpoint_url
    )
    artifact_store.attach_store(db, blobs, settings.artifact_cache_dir)
    storage_use.attach_limit(db, settings.workspace_storage_limit)
    gpus = declared_gpus(settings.node_gpus) if settings.node_gpus else discover_gpus()
    nodes = local_nodes(
        settings.node_name,
        settings.local_nodes,
        gpus,
        cpus=settings.node_cpus,
        memory=settings.node_memory,
        labels=settings.labels,
    )
    aborts = LaunchAborts()  # the launch step tells the executor of a job stopped meanwhile
    local = LocalExecutor(
        settings.runs_dir,
        settings.checkpoints_dir,
        nodes,
        aborts=aborts,
        sandbox=_sandbox(settings),
    )
    executor = Pools(local, settings.checkpoints_dir)
    config = LaunchConfig(
        api_url=settings.api_url,
        blobs_dir=str(settings.blobs_dir),
        token_key=load_token_key(settings.home),
        stop_grace_s=settings.stop_grace_s,
        aborts=aborts,
        worker_uids=settings.worker_uids,
        usage_interval_s=settings.usage_interval_s,
        ca_pem=settings.ca_pem(),
    )
    jobs = JobReconciler(db, executor, config, interval_s=settings.reconcile_interval_s)
    loads = LoadBoard()
    timeline = DeploymentTimeline()
    return ControlPlane(
        settings=settings,
        db=db,
        executor=executor,
        jobs=jobs,
        pools=PoolReconciler(db, executor, _executor_factory(settings), jobs.poke),
        deployments=DeploymentReconciler(
            db, loads, jobs.poke, token_key=config.token_key, timeline=timeline
        ),
        loads=loads,
        routes=RouteVersions(),
        usage=UsageRetention(db, settings.usage_retention_s, settings.usage_cleanup_interval_s),
        timeline=timeline,
    )


def _executor_factory(settings: Settings) -> Callable[[Pool], Executor]:
    """How an attached pool becomes an executor (Ray's is imported only when one is)."""

    def make(row: Pool) -> Executor:
        from kaon.executors.ray import RayExecutor, RayPool

        pool = RayPool(
            name=row.name,
            address=row.address,
            state_dir=settings.home / "pools" / row.name,
            node_dir=settings.ray_node_dir,
            api_url=row.api_url or settings.public_url,
            listens_everywhere=settings.host in ("0.0.0.0", "::", ""),
        )
        return RayExecutor(pool, settings.checkpoints_dir)

    return make


def create_app(settings: Settings, run_reconcilers: bool = True) -> FastAPI:
    """The control plane as an ASGI app. With `run_reconcilers` False (tests that step the
    reconcilers by hand), nothing runs in the background."""
    plane = build_plane(settings)
    app = FastAPI(
        title="Kaon",
        version=__version__,
        description="The Kaon control plane: a pool of compute, jobs and deployments.",
        lifespan=lambda app: _lifespan(plane, run_reconcilers),
    )
    app.state.plane = plane
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=JSON_BODY_LIMIT, exempt=streams_its_body)
    if settings.audit_log:
        app.add_middleware(AuditTrail, append=AuditAppender(plane.db))
        record_in_transactions()
    app.state.telemetry = telemetry = Telemetry()  # read by /metrics
    for loop in (plane.jobs, plane.pools, plane.deployments):
        telemetry.watch(loop)
    app.add_middleware(AuthFailureLimit, limiter=FailureLimiter.from_env())
    app.add_middleware(ApiMetrics, telemetry=telemetry)  # outermost: it sees every answer
    # Outside even that: no layer (the audit log, the metrics) sees a name with a NUL,
    # which PostgreSQL cannot store.
    app.add_middleware(RefuseNul)
    health = {"status": "ok", "version": __version__, "instance_id": instance_id(settings.home)}

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness, and which home's control plane answers: `kaon up` compares the
        instance id with its home's, so a server of another home on the same port is never
        taken for its own."""
        return health

    @app.get("/readyz", tags=["health"])
    async def readyz() -> dict[str, str]:
        """Readiness: 200 while the database answers and could take a write, else 503
        with ``Retry-After`` and the reason (a load balancer stops sending calls here)."""
        await plane.db.ready()
        return {"status": "ready"}

    for router in ROUTERS:
        app.include_router(router)
    return app


def instance_id(home: Path) -> str:
    """This home's control plane's id, made on its first start and kept in a file there
    (0600, like the other files of the home). Not a secret: only a name that stays the same
    across restarts and differs between homes."""
    path = home / INSTANCE_ID_FILE
    if not path.exists():
        tmp = path.with_name(f".{INSTANCE_ID_FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"ki-{secrets.token_hex(8)}\n")
        os.replace(tmp, path)
    return path.read_text().strip()


@asynccontextmanager
async def _lifespan(plane: ControlPlane, run_reconcilers: bool) -> AsyncIterator[None]:
    await start_plane(plane)
    tasks = []
    if run_reconcilers:
        tasks = [
            asyncio.create_task(plane.jobs.run_forever(), name="jobs"),
            asyncio.create_task(plane.pools.run_forever(), name="pools"),
            asyncio.create_task(plane.deployments.run_forever(), name="deployments"),
            asyncio.create_task(plane.usage.run_forever(), name="usage"),
            asyncio.create_task(
                ArtifactCleanup(
                    plane.db,
                    grace_s=plane.settings.artifact_grace_s,
                    cache_limit=plane.settings.artifact_cache_limit,
                    interval_s=plane.settings.artifact_cleanup_interval_s,
                ).run_forever(),
                name="artifact-cleanup",
            ),
            asyncio.create_task(_retention(plane).run_forever(), name="retention"),
            asyncio.create_task(
                HistoryRecorder(plane.db, plane.history).run_forever(), name="history"
            ),
        ]
    try:
        yield
    finally:
        _exit_by_deadline(plane.settings.shutdown_deadline_s)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await plane.db.dispose()


def _retention(plane: ControlPlane) -> Retention:
    settings = plane.settings
    return Retention(
        plane.db,
        settings.runs_dir,
        settings.checkpoints_dir,
        settings.blobs_dir,
        settings.retention_s,
        settings.retention_interval_s,
    )


def _exit_by_deadline(deadline_s: float | None) -> None:
    """Shutting down waits for calls in flight (a Ray cluster that stopped answering can
    hold one for minutes); past the deadline the process just exits. Nothing is lost:
    the database and the workers' own folders are the truth, and the next start resumes."""
    if deadline_s is None:
        return
    timer = threading.Timer(deadline_s, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


def _hand_over_admin_token(home: Path, token: str) -> None:
    """Show the first admin token to the person at the terminal; where output goes to a
    log file instead, put it in a file of the home (0600) and name the file, so no log
    ever holds a token."""
    if sys.stdout.isatty():
        print(f"kaon: created the admin token (shown once): {token}", flush=True)
        return
    path = write_private(home / ADMIN_TOKEN_FILE, token + "\n")
    print(f"kaon: created the admin token; it is in {path} (this user only)", flush=True)


async def start_plane(plane: ControlPlane) -> None:
    """Migrate, make the default workspace and the first admin token, register the nodes."""
    settings = plane.settings
    await plane.db.migrate()
    async with plane.db.session() as s:
        await auth.ensure_default_workspace(s)
        created = await auth.bootstrap_admin(s, settings.bootstrap_token)
        if settings.ray_address:
            await pools.ensure(s, "ray", settings.ray_address)
    if created and not settings.bootstrap_token:
        _hand_over_admin_token(settings.home, created)
    await plane.pools.register_local()


def _sandbox(settings: Settings) -> SandboxPolicy:
    """How workers are sandboxed (``KAON_SANDBOX``), hiding the home and the CLI's, and
    what of the control plane lives outside the home: a SQLite database (with its WAL)
    and the TLS key. Their modes keep other users out already; a sandboxed worker does
    not even see them."""
    policy = SandboxPolicy.from_env(os.environ, str(settings.home))
    outside: list[str] = []
    url = make_url(settings.database_url)
    if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
        db = str(Path(url.database).resolve())
        outside += [db, f"{db}-wal", f"{db}-shm"]
    if settings.tls_key is not None:
        outside.append(str(settings.tls_key.resolve()))
    return SandboxPolicy(policy.mode, (*policy.hidden, *outside))
