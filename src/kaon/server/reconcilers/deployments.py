"""The deployment reconciler: replicas up and down, health probes, autoscaling.

Each pass loads every deployment with its replicas (jobs of kind ``replica`` plus their
health rows), probes the replicas that run, feeds the gateways' latest load to the pure
autoscaling policy (`kaon.gateway.autoscale.decide`), asks `deployment_steps.plan` what to
do, and carries the plan out: new replica jobs are queued for the one scheduler, drained
replicas are stopped through their jobs. The job reconciler does the starting and
stopping; this one never touches a process.

The gateways' load reports live in memory (`LoadBoard`): they are a snapshot that the
next report replaces, so losing them in a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.deployments import (
    ENV_DEPLOYMENT,
    ENV_MODEL_DIR,
    ENV_REPLICA_ID,
    DeploymentSpec,
    GatewayReport,
)
from kaon.core.jobs import JobSpec, JobStatus
from kaon.gateway.autoscale import Load, ScalingState, decide
from kaon.server.db.models import Deployment, Job, Node, Replica, Worker, utcnow
from kaon.server.db.session import Database
from kaon.server.reconcilers.deployment_steps import (
    LIVE,
    DeploymentFacts,
    Plan,
    ReplicaFacts,
    plan,
)
from kaon.server.services.ids import new_id

logger = logging.getLogger("kaon.reconciler.deployments")
REPORT_TTL_S = 5.0
TERMINAL = [s.value for s in JobStatus if s.is_terminal()]


class LoadBoard:
    """The newest load each gateway reported for each deployment."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._latest: dict[tuple[str, str], tuple[float, Load]] = {}

    def record(self, report: GatewayReport) -> None:
        now = self.clock()
        for d in report.deployments:
            queued = d.queued + (1 if d.waiting_for_replica and d.queued == 0 else 0)
            self._latest[(report.gateway_id, d.name)] = (
                now,
                Load(in_flight=d.in_flight, queued=queued, requests_per_s=d.requests_per_s),
            )

    def load(self, name: str) -> Load:
        now = self.clock()
        fresh = [
            load
            for (_, n), (at, load) in self._latest.items()
            if n == name and now - at < REPORT_TTL_S
        ]
        return Load(
            in_flight=sum(x.in_flight for x in fresh),
            queued=sum(x.queued for x in fresh),
            requests_per_s=sum(x.requests_per_s for x in fresh),
        )


@dataclass
class _Row:
    replica: Replica
    job: Job
    url: str | None


class DeploymentReconciler:
    def __init__(
        self,
        db: Database,
        loads: LoadBoard,
        poke_jobs: Callable[[], None],
        clock: Callable[[], datetime] = utcnow,
        interval_s: float = 0.5,
        drain_s: float = 1.5,
    ) -> None:
        self.db = db
        self.loads = loads
        self.poke_jobs = poke_jobs
        self.clock = clock
        self.interval_s = interval_s
        self.drain_s = drain_s
        self.wakeup = asyncio.Event()
        self.scaling: dict[str, ScalingState] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None

    def poke(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.wakeup.set)

    async def run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        async with httpx.AsyncClient() as http:
            self._http = http
            while True:
                self.wakeup.clear()
                busy = False
                try:
                    busy = await self.run_once()
                except Exception:
                    logger.exception("deployment reconcile pass failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), 0.2 if busy else self.interval_s)

    async def run_once(self) -> bool:
        """One pass over every deployment. True while some replica is on its way up."""
        async with self.db.session() as s:
            deployments = list((await s.execute(select(Deployment))).scalars())
            rows = await _replica_rows(s)
        probes = await self._probe_all(deployments, rows)
        busy = False
        for d in deployments:
            mine = [r for r in rows if r.replica.deployment_id == d.id]
            busy |= await self._reconcile(d, mine, probes)
        return busy

    async def _probe_all(self, deployments: list[Deployment], rows: list[_Row]) -> dict[str, bool]:
        specs = {d.id: DeploymentSpec.model_validate(d.spec) for d in deployments}
        targets = [
            r
            for r in rows
            if r.url and r.replica.state in LIVE and r.replica.deployment_id in specs
        ]

        async def probe(row: _Row) -> tuple[str, bool]:
            check = specs[row.replica.deployment_id].health_check
            client = self._http or httpx.AsyncClient()
            try:
                response = await client.get(f"{row.url}{check.path}", timeout=check.timeout_s)
                return row.replica.job_id, response.status_code == 200
            except httpx.HTTPError:
                return row.replica.job_id, False

        return dict(await asyncio.gather(*(probe(r) for r in targets)))

    async def _reconcile(self, d: Deployment, rows: list[_Row], probes: dict[str, bool]) -> bool:
        spec = DeploymentSpec.model_validate(d.spec)
        now = self.clock()
        warming = _warming(rows)
        desired = d.desired_replicas if d.deleting else self._autoscale(d, spec, warming)
        facts = DeploymentFacts(
            generation=d.generation,
            desired=0 if d.deleting else desired,
            deleting=d.deleting,
            failure_threshold=spec.health_check.failure_threshold,
            startup_timeout_s=spec.health_check.startup_timeout_s,
            drain_s=self.drain_s,
        )
        replicas = [_facts(r, probes.get(r.replica.job_id)) for r in rows]
        step = plan(facts, replicas, now)
        await self._apply(d, spec, rows, step, desired, now)
        return step.start > 0 or any(r.state == "starting" for r in replicas)

    def _autoscale(self, d: Deployment, spec: DeploymentSpec, warming: bool) -> int:
        """`warming`: replicas are starting and none is ready yet (the policy's idle clock
        waits for a ready replica)."""
        now = self.clock().timestamp()
        state = self.scaling.get(d.id) or ScalingState(
            replicas=d.desired_replicas, last_busy_at=now
        )
        load = self.loads.load(d.name)
        state = state.observe(load, replicas=d.desired_replicas, warming=warming)
        decision = decide(spec.autoscaling, state, now)
        self.scaling[d.id] = decision.state
        if decision.replicas != d.desired_replicas:
            logger.info(
                "deployment %s: %d -> %d replicas (%s)",
                d.name,
                d.desired_replicas,
                decision.replicas,
                decision.reason,
            )
        return decision.replicas

    async def _apply(
        self,
        d: Deployment,
        spec: DeploymentSpec,
        rows: list[_Row],
        step: Plan,
        desired: int,
        now: datetime,
    ) -> None:
        by_id = {r.replica.job_id: r for r in rows}
        async with self.db.session() as s:
            if step.remove:
                await s.execute(delete(Deployment).where(Deployment.id == d.id))
                self.scaling.pop(d.id, None)
                return
            for job_id, (state, failures) in step.states.items():
                values: dict[str, object] = {"state": state, "failures": failures}
                if state == "ready" and by_id[job_id].replica.ready_at is None:
                    values["ready_at"] = now
                if state == "failed":
                    values["stop_at"] = now
                await s.execute(update(Replica).where(Replica.job_id == job_id).values(**values))
            for job_id in step.drain:
                stop_at = now + timedelta(
                    seconds=self.drain_s if by_id[job_id].replica.state == "ready" else 0
                )
                await s.execute(
                    update(Replica)
                    .where(Replica.job_id == job_id)
                    .values(state="stopping", stop_at=stop_at)
                )
            for job_id in step.kill:
                await _stop_job(s, by_id[job_id].job, "stopped by its deployment")
            for _ in range(step.start):
                _new_replica(s, d, spec)
            for r in rows:  # record each replica's address once its worker runs
                if r.url and r.replica.url != r.url:
                    await s.execute(
                        update(Replica).where(Replica.job_id == r.replica.job_id).values(url=r.url)
                    )
            changes = {"desired_replicas": desired, "status": step.status, "message": step.message}
            if any(getattr(d, k) != v for k, v in changes.items()):
                await s.execute(
                    update(Deployment)
                    .where(Deployment.id == d.id)
                    .values(updated_at=now, **changes)
                )
        if step.start or step.kill:
            self.poke_jobs()


def _warming(rows: list[_Row]) -> bool:
    """Replicas are starting and none of them is ready yet."""
    states = {r.replica.state for r in rows}
    return "starting" in states and "ready" not in states


def _facts(row: _Row, probe: bool | None) -> ReplicaFacts:
    job, rep = row.job, row.replica
    return ReplicaFacts(
        job_id=rep.job_id,
        generation=rep.generation,
        state=rep.state,
        job_done=JobStatus(job.status).is_terminal(),
        running=job.status == JobStatus.RUNNING.value and row.url is not None,
        probe_ok=probe,
        failures=rep.failures,
        created_at=rep.created_at,
        stop_at=rep.stop_at,
    )


async def _replica_rows(s: AsyncSession) -> list[_Row]:
    """Replicas that are live or ended recently (the latter count towards crash back-off)."""
    since = utcnow() - timedelta(minutes=10)
    query = (
        select(Replica, Job)
        .join(Job, Job.id == Replica.job_id)
        .where((Replica.state.in_([*LIVE, "stopping"])) | (Replica.created_at > since))
    )
    pairs = (await s.execute(query)).tuples().all()
    addresses = await s.execute(
        select(Worker.job_id, Node.address, Worker.port)
        .join(Node, Node.id == Worker.node_id)
        .where(Worker.job_id.in_([rep.job_id for rep, _ in pairs]), Worker.active.is_(True))
    )
    urls = {job_id: f"http://{addr}:{port}" for job_id, addr, port in addresses.tuples() if port}
    return [_Row(rep, job, urls.get(rep.job_id)) for rep, job in pairs]


def _new_replica(s: AsyncSession, d: Deployment, spec: DeploymentSpec) -> None:
    job_id = new_id("r")
    command = [
        sys.executable,
        "-m",
        "kaon.serving.runtime",
        "--service",
        spec.service_ref(),
        "--host",
        "127.0.0.1",
    ]
    job_spec = JobSpec(
        name=d.name,
        command=command,
        snapshot=spec.snapshot,
        env=spec.env,
        resources=spec.resources,
    )
    system_env = {ENV_REPLICA_ID: job_id, ENV_DEPLOYMENT: d.name}
    if d.model_dir:
        system_env[ENV_MODEL_DIR] = d.model_dir
    s.add(
        Job(
            id=job_id,
            workspace_id=d.workspace_id,
            name=d.name,
            spec=job_spec.model_dump(mode="json"),
            status=JobStatus.QUEUED.value,
            kind="replica",
            deployment_id=d.id,
            generation=d.generation,
            system_env=system_env,
            submitted_at=utcnow(),
        )
    )
    s.add(Replica(job_id=job_id, deployment_id=d.id, generation=d.generation, state="starting"))


async def _stop_job(s: AsyncSession, job: Job, message: str) -> None:
    """Ask a replica's job to stop (a queued one is simply cancelled)."""
    if JobStatus(job.status).is_terminal() or job.stop_reason == "cancel":
        return
    values: dict[str, object] = {"stop_reason": "cancel", "message": message}
    if job.status == JobStatus.QUEUED.value:
        values = {"status": JobStatus.CANCELLED.value, "finished_at": utcnow(), "message": message}
    await s.execute(
        update(Job)
        .where(Job.id == job.id, Job.version == job.version)
        .values(version=job.version + 1, **values)
    )
