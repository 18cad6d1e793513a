"""The deployment reconciler: replicas up and down, health probes, autoscaling.

Each pass loads every deployment with its replicas (jobs of kind ``replica`` plus their
health rows), probes the replicas that run, feeds the gateways' latest load to the pure
autoscaling policy (`kaon.autoscaling`), asks the pure `deployment_steps.plan` what to do,
and carries the plan out: new replica jobs are queued for the one scheduler, drained
replicas are stopped through their jobs. The job reconciler does the starting and
stopping; this one never touches a process.

What lives in memory here, and why a restart is safe: the gateways' load reports
(`LoadBoard`, replaced by the next report within a second) and each deployment's
`ScalingState` (rebuilt by `ScalingState.initial`, which only ever delays a scaling step).
Load and scaling history are keyed by ``{workspace}/{name}``
(`kaon.core.gateway.deployment_key`): names are unique within a workspace only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.autoscaling import LoadBoard, ScalingState, decide
from kaon.core.deployments import DeploymentSpec, replica_env, replica_job_spec
from kaon.core.gateway import deployment_key
from kaon.core.jobs import JobStatus
from kaon.core.replicas import LIVE_STATES, ReplicaStatus
from kaon.server.db.models import Deployment, Job, Node, Replica, Worker, Workspace, utcnow
from kaon.server.db.session import Database
from kaon.server.reconcilers.deployment_steps import DeploymentFacts, Plan, ReplicaFacts, plan
from kaon.server.reconcilers.loop import Loop
from kaon.server.reconcilers.probes import ProbeTarget, probe_all
from kaon.server.security.tokens import new_id, replica_key
from kaon.server.services.job_state import request_cancel
from kaon.server.services.timeline import DeploymentTimeline

logger = logging.getLogger("kaon.reconciler.deployments")
RECENT = timedelta(minutes=10)  # ended replicas this young count towards crash back-off


@dataclass
class _Row:
    replica: Replica
    job: Job
    url: str | None  # where its worker listens, once it runs

    @property
    def state(self) -> ReplicaStatus:
        return ReplicaStatus(self.replica.state)


class DeploymentReconciler(Loop):
    name = "deployments"
    busy_interval_s = 0.2  # while a replica is starting, probe it often

    def __init__(
        self,
        db: Database,
        loads: LoadBoard,
        poke_jobs: Callable[[], None],
        clock: Callable[[], datetime] = utcnow,
        interval_s: float = 0.5,
        drain_s: float = 1.5,
        token_key: bytes | None = None,
        timeline: DeploymentTimeline | None = None,
    ) -> None:
        """`token_key` derives each replica's credential for its probes (the one the launch
        gave it, `security.tokens.replica_key`); without it probes carry none. `timeline`
        keeps the scaling decisions for the console."""
        super().__init__()
        self.token_key = token_key
        self.db = db
        self.loads = loads
        self.timeline = timeline or DeploymentTimeline()
        self.poke_jobs = poke_jobs
        self.clock = clock
        self.interval_s = interval_s
        self.drain_s = drain_s
        self.scaling: dict[str, ScalingState] = {}  # deployment id -> the policy's memory
        self.keys: dict[str, str] = {}  # deployment id -> `deployment_key`, as of the last pass
        self._http: httpx.AsyncClient | None = None

    async def started(self) -> None:
        self._http = httpx.AsyncClient()  # one pool of connections for every probe

    async def stopped(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def run_once(self) -> bool:
        """One pass over every deployment. True while some replica is on its way up."""
        async with self.db.session() as s:
            named = await s.execute(
                select(Deployment, Workspace.name).join(
                    Workspace, Workspace.id == Deployment.workspace_id
                )
            )
            found = named.tuples().all()
            rows = await _replica_rows(s, self.clock())
        deployments = [d for d, _ in found]
        self.keys = {d.id: deployment_key(workspace, d.name) for d, workspace in found}
        probes = await self._probe(deployments, rows)
        busy = False
        for d in deployments:
            mine = [r for r in rows if r.replica.deployment_id == d.id]
            busy |= await self._reconcile(d, mine, probes)
        return busy

    async def _probe(self, deployments: list[Deployment], rows: list[_Row]) -> dict[str, bool]:
        specs = {d.id: DeploymentSpec.model_validate(d.spec) for d in deployments}
        targets = [
            ProbeTarget(
                r.replica.job_id, r.url, specs[r.replica.deployment_id].health_check, self._key(r)
            )
            for r in rows
            if r.url and r.state.is_live() and r.replica.deployment_id in specs
        ]
        if self._http is not None:
            return await probe_all(self._http, targets)
        async with httpx.AsyncClient() as http:  # run_once() driven by hand, as tests do
            return await probe_all(http, targets)

    def _key(self, row: _Row) -> str | None:
        if self.token_key is None:
            return None
        return replica_key(self.token_key, row.job.id, row.job.attempt)

    async def _reconcile(self, d: Deployment, rows: list[_Row], probes: dict[str, bool]) -> bool:
        spec = DeploymentSpec.model_validate(d.spec)
        now = self.clock()
        desired = d.desired_replicas if d.deleting else self._autoscale(d, spec, _warming(rows))
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
        return step.start > 0 or any(r.state is ReplicaStatus.STARTING for r in replicas)

    def _autoscale(self, d: Deployment, spec: DeploymentSpec, warming: bool) -> int:
        """`warming`: replicas are starting and none is ready yet (the policy's idle clock
        waits for a ready replica)."""
        now = self.clock().timestamp()
        state = self.scaling.get(d.id) or ScalingState.initial(d.desired_replicas, now)
        key = self.keys.get(d.id, d.name)
        load = self.loads.load(key, now)
        state = state.observe(load, replicas=d.desired_replicas, warming=warming)
        decision = decide(spec.autoscaling, state, now)
        self.scaling[d.id] = decision.state
        if decision.replicas != d.desired_replicas:
            logger.info(
                "deployment %s: %d -> %d replicas (%s)",
                key,
                d.desired_replicas,
                decision.replicas,
                decision.reason,
            )
            before = d.desired_replicas
            self.timeline.scaled(key, before, decision.replicas, decision.reason, now)
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
                key = self.keys.get(d.id, d.name)
                self.loads.forget(key)
                self.timeline.forget(key)
                return
            await _record_states(s, step, by_id, now)
            await _drain(s, step.drain, by_id, now, self.drain_s)
            for job_id in step.kill:
                await request_cancel(s, by_id[job_id].job, "stopped by its deployment")
            for _ in range(step.start):
                _new_replica(s, d, spec, now)
            await _record_urls(s, rows)
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
    states = {r.state for r in rows}
    return ReplicaStatus.STARTING in states and ReplicaStatus.READY not in states


def _facts(row: _Row, probe: bool | None) -> ReplicaFacts:
    job, rep = row.job, row.replica
    return ReplicaFacts(
        job_id=rep.job_id,
        generation=rep.generation,
        state=row.state,
        job_done=JobStatus(job.status).is_terminal(),
        running=job.status == JobStatus.RUNNING.value and row.url is not None,
        probe_ok=probe,
        failures=rep.failures,
        created_at=rep.created_at,
        stop_at=rep.stop_at,
    )


async def _replica_rows(s: AsyncSession, now: datetime) -> list[_Row]:
    """Replicas that are live or ended recently (the latter count towards crash back-off),
    with the address their worker listens on once it runs."""
    alive = [*LIVE_STATES, ReplicaStatus.STOPPING.value]
    query = (
        select(Replica, Job)
        .join(Job, Job.id == Replica.job_id)
        .where(Replica.state.in_(alive) | (Replica.created_at > now - RECENT))
    )
    pairs = (await s.execute(query)).tuples().all()
    addresses = await s.execute(
        select(Worker.job_id, Node.address, Worker.port)
        .join(Node, Node.id == Worker.node_id)
        .where(Worker.job_id.in_([rep.job_id for rep, _ in pairs]), Worker.active.is_(True))
    )
    urls = {job_id: f"http://{addr}:{port}" for job_id, addr, port in addresses.tuples() if port}
    return [_Row(rep, job, urls.get(rep.job_id)) for rep, job in pairs]


async def _record_states(
    s: AsyncSession, step: Plan, by_id: dict[str, _Row], now: datetime
) -> None:
    for job_id, (state, failures) in step.states.items():
        values: dict[str, object] = {"state": state.value, "failures": failures}
        if state is ReplicaStatus.READY and by_id[job_id].replica.ready_at is None:
            values["ready_at"] = now
        if state is ReplicaStatus.FAILED:
            values["stop_at"] = now
        await s.execute(update(Replica).where(Replica.job_id == job_id).values(**values))


async def _drain(
    s: AsyncSession, job_ids: list[str], by_id: dict[str, _Row], now: datetime, drain_s: float
) -> None:
    """Out of the route table now; the process is stopped `drain_s` later (at once for a
    replica that was not serving), so no request in flight is cut."""
    for job_id in job_ids:
        row = by_id[job_id]
        row.state.check_transition(ReplicaStatus.STOPPING)
        wait = drain_s if row.state is ReplicaStatus.READY else 0.0
        await s.execute(
            update(Replica)
            .where(Replica.job_id == job_id)
            .values(state=ReplicaStatus.STOPPING.value, stop_at=now + timedelta(seconds=wait))
        )


async def _record_urls(s: AsyncSession, rows: list[_Row]) -> None:
    """Remember each replica's address once its worker runs (the route table reads it)."""
    for r in rows:
        if r.url and r.replica.url != r.url:
            await s.execute(
                update(Replica).where(Replica.job_id == r.replica.job_id).values(url=r.url)
            )


def _new_replica(s: AsyncSession, d: Deployment, spec: DeploymentSpec, now: datetime) -> None:
    """Queue one replica of the deployment's current generation as a job."""
    job_id = new_id("r")
    s.add(
        Job(
            id=job_id,
            workspace_id=d.workspace_id,
            name=d.name,
            spec=replica_job_spec(spec).model_dump(mode="json"),
            status=JobStatus.QUEUED.value,
            kind="replica",
            deployment_id=d.id,
            generation=d.generation,
            system_env=replica_env(d.name, job_id, d.model_dir),
            submitted_at=now,
        )
    )
    s.add(
        Replica(
            job_id=job_id,
            deployment_id=d.id,
            generation=d.generation,
            state=ReplicaStatus.STARTING.value,
            created_at=now,
        )
    )
