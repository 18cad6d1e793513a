"""Deployments: create, read, update, delete, tokens, and the gateway's route table.

A deployment's replicas are jobs of kind ``replica``, so the one scheduler places them
with everyone else's jobs and quotas and priorities hold for serving too. The deployment
reconciler decides how many there should be and which to stop; this module holds the
rules that run inside a request.

Deployment names are unique within a workspace, never across workspaces: whether a name is
taken elsewhere is none of the caller's business (the gateway's canonical path,
``/{workspace}/{name}/...``, tells deployments of the same name apart).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.deployments import (
    DeploymentSpec,
    DeploymentStatus,
    DeploymentTokenCreated,
    DeploymentView,
    ReplicaView,
)
from kaon.core.errors import ConflictError, InvalidSpecError, NotFoundError
from kaon.core.jobs import JobStatus
from kaon.core.replicas import LIVE_STATES, ReplicaStatus
from kaon.core.resources import Resources
from kaon.core.tokens import hash_token
from kaon.scheduler.capacity import FreeIndex, place_gang
from kaon.server.db.models import (
    Deployment,
    DeploymentToken,
    Job,
    Node,
    Pool,
    Replica,
    Worker,
    utcnow,
)
from kaon.server.db.session import Database
from kaon.server.security.principal import Principal
from kaon.server.security.tokens import new_id, new_token
from kaon.server.services import models, pool, quotas, secrets, snapshots
from kaon.server.wake import Wake

CheckpointDir = Callable[[str], Path]
ENDED_SHOWN = 3
"""Ended replicas a view lists, newest first: enough to see a crash loop, while a
deployment that has rolled or crashed a hundred times still reads at a glance."""
_ENDED = [ReplicaStatus.STOPPED.value, ReplicaStatus.FAILED.value]


async def create(
    session: AsyncSession,
    caller: Principal,
    workspace: str,
    spec: DeploymentSpec,
    checkpoint_dir: CheckpointDir,
    wake: Wake,
    db: Database | None = None,
) -> DeploymentView:
    workspace_id = caller.workspace_id(workspace)
    if await _find(session, workspace_id, spec.name) is not None:
        raise ConflictError(
            f"a deployment named {spec.name!r} exists in workspace {workspace}; pick another name"
        )
    model_dir = await _validate(session, workspace_id, spec, checkpoint_dir)
    spec, model_dir = await _with_model(db, session, workspace_id, spec, model_dir)
    spec = await _with_job_code(session, spec)
    desired = max(spec.autoscaling.min_replicas, 1)
    warnings = await capacity_warnings(session, spec.resources, desired)
    deployment = Deployment(
        id=new_id("d"),
        workspace_id=workspace_id,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        desired_replicas=desired,
        model_dir=model_dir,
        message="waiting for replicas",
    )
    session.add(deployment)
    await session.commit()
    wake.deployments()
    return _with_warnings(await _view(session, deployment, workspace), warnings)


def _with_warnings(view: DeploymentView, warnings: list[str]) -> DeploymentView:
    return view.model_copy(update={"warnings": warnings})


async def _validate(
    session: AsyncSession, workspace_id: str, spec: DeploymentSpec, checkpoint_dir: CheckpointDir
) -> str | None:
    """What can be known now: the code exists, the secrets it names exist, the model
    exists, a replica can fit."""
    await snapshots.require_for_spec(session, workspace_id, spec.snapshot)
    await secrets.require_refs(session, workspace_id, spec.env)
    await pool.check_fits(session, spec.resources)
    await quotas.check_fits_quota(session, workspace_id, spec.resources)
    if spec.from_job is None:
        return None
    _, folder = await models.trained_checkpoints(
        session, workspace_id, spec.from_job, checkpoint_dir, "deploy"
    )
    return str(folder)


async def _with_model(
    db: Database | None,
    session: AsyncSession,
    workspace_id: str,
    spec: DeploymentSpec,
    model_dir: str | None,
) -> tuple[DeploymentSpec, str | None]:
    """A registered model's version, materialised: its folder is the replicas' model
    dir, and its job's code is theirs when the spec brings none (`models`)."""
    if spec.model is None:
        return spec, model_dir
    if db is None:
        raise InvalidSpecError("this call cannot deploy a registered model", field="model")
    return await models.resolve_for_deployment(db, session, workspace_id, spec)


async def _with_job_code(session: AsyncSession, spec: DeploymentSpec) -> DeploymentSpec:
    """A model served from a job runs in that job's code, so its model class imports."""
    if spec.from_job is None or spec.snapshot is not None:
        return spec
    job = await session.get(Job, spec.from_job)
    snapshot = pool.stored_spec(job).snapshot if job else None
    return spec.model_copy(update={"snapshot": snapshot})


async def _load(session: AsyncSession, caller: Principal, workspace: str, name: str) -> Deployment:
    found = await _find(session, caller.workspace_id(workspace), name)
    if found is None:
        raise NotFoundError(f"deployment {name!r} not found")
    return found


async def _find(session: AsyncSession, workspace_id: str, name: str) -> Deployment | None:
    """A deployment is known by its workspace and name (unique together, not alone)."""
    return await session.scalar(
        select(Deployment).where(Deployment.workspace_id == workspace_id, Deployment.name == name)
    )


async def get(
    session: AsyncSession, caller: Principal, workspace: str, name: str
) -> DeploymentView:
    return await _view(session, await _load(session, caller, workspace, name), workspace)


async def list_deployments(
    session: AsyncSession, caller: Principal, workspace: str
) -> list[DeploymentView]:
    workspace_id = caller.workspace_id(workspace)
    rows = await session.execute(
        select(Deployment).where(Deployment.workspace_id == workspace_id).order_by(Deployment.name)
    )
    return [await _view(session, d, workspace) for d in rows.scalars()]


async def update(
    session: AsyncSession,
    caller: Principal,
    workspace: str,
    name: str,
    spec: DeploymentSpec,
    checkpoint_dir: CheckpointDir,
    wake: Wake,
    db: Database | None = None,
) -> DeploymentView:
    """A new spec is a new generation: the reconciler rolls replicas one at a time."""
    deployment = await _load(session, caller, workspace, name)
    if spec.name != name:
        raise InvalidSpecError("a deployment cannot be renamed", field="name")
    if deployment.deleting:
        raise ConflictError(f"deployment {name!r} is being deleted")
    model_dir = await _validate(session, deployment.workspace_id, spec, checkpoint_dir)
    spec, model_dir = await _with_model(db, session, deployment.workspace_id, spec, model_dir)
    spec = await _with_job_code(session, spec)
    policy = spec.autoscaling
    desired = min(max(deployment.desired_replicas, policy.min_replicas), policy.max_replicas)
    starting = await _starting_at_update(session, deployment.id, desired)
    warnings = await capacity_warnings(session, spec.resources, starting)
    deployment.spec = spec.model_dump(mode="json")
    deployment.model_dir = model_dir
    deployment.generation += 1
    deployment.status = DeploymentStatus.UPDATING
    deployment.message = f"rolling out generation {deployment.generation}"
    deployment.updated_at = utcnow()
    deployment.desired_replicas = desired
    await session.commit()
    wake.deployments()
    return _with_warnings(await _view(session, deployment, workspace), warnings)


async def _starting_at_update(session: AsyncSession, deployment_id: str, desired: int) -> int:
    """How many new replicas an update starts at once: one while live replicas roll (each
    old one leaves as a new one is ready, freeing its room), every desired one if none is
    live (a failing deployment being fixed)."""
    live = await session.scalar(
        select(func.count())
        .select_from(Replica)
        .where(Replica.deployment_id == deployment_id, Replica.state.in_(LIVE_STATES))
    )
    return min(desired, 1) if live else desired


async def delete(
    session: AsyncSession, caller: Principal, workspace: str, name: str, wake: Wake
) -> DeploymentView:
    """Mark for deletion; the reconciler stops the replicas, then removes the row."""
    deployment = await _load(session, caller, workspace, name)
    deployment.deleting = True
    deployment.status = DeploymentStatus.DELETING
    deployment.message = "stopping replicas"
    deployment.desired_replicas = 0
    await session.commit()
    wake.deployments()
    return await _view(session, deployment, workspace)


async def create_token(
    session: AsyncSession, caller: Principal, workspace: str, name: str, token_name: str
) -> DeploymentTokenCreated:
    """A token that can call this one deployment through the gateway, and nothing else."""
    deployment = await _load(session, caller, workspace, name)
    secret = new_token()
    token = DeploymentToken(
        id=new_id("dtok"),
        deployment_id=deployment.id,
        name=token_name,
        prefix=secret[:9],
        hash=hash_token(secret),
    )
    session.add(token)
    await session.commit()
    return DeploymentTokenCreated(id=token.id, name=token_name, deployment=name, token=secret)


async def replica_job(
    session: AsyncSession, caller: Principal, workspace: str, name: str, replica: str | None
) -> str:
    """The job id of a replica, for its logs. Without a name: the newest ready replica, or
    else the newest that crashed (its log holds the traceback), or else the newest."""
    deployment = await _load(session, caller, workspace, name)
    query = select(Replica.job_id, Replica.state).where(Replica.deployment_id == deployment.id)
    if replica is not None:
        query = query.where(Replica.job_id == replica)
    rows = (
        (await session.execute(query.order_by(Replica.created_at.desc()).limit(50))).tuples().all()
    )
    if not rows:
        raise NotFoundError(f"deployment {name!r} has no replica {replica or ''}".strip())
    for wanted in (ReplicaStatus.READY, ReplicaStatus.FAILED):
        for job_id, state in rows:
            if state == wanted:
                return str(job_id)
    return str(rows[0][0])


async def _view(session: AsyncSession, d: Deployment, workspace: str) -> DeploymentView:
    """Live replicas first (what serves or soon will), then the few most recent ended
    ones: a crash loop or many rollouts must not bury the replicas that matter."""
    rows = [*await _replica_rows(session, d.id, ended=False)]
    shown_ended = await _replica_rows(session, d.id, ended=True, limit=ENDED_SHOWN)
    ended = await session.scalar(
        select(func.count())
        .select_from(Replica)
        .where(Replica.deployment_id == d.id, Replica.state.in_(_ENDED))
    )
    pids = await _pids(session, d.id)
    replicas = [_replica_view(r, job, pids.get(r.job_id)) for r, job in [*rows, *shown_ended]]
    return DeploymentView(
        name=d.name,
        workspace=workspace,
        status=DeploymentStatus(d.status),
        message=d.message,
        spec=DeploymentSpec.model_validate(d.spec),
        generation=d.generation,
        desired_replicas=d.desired_replicas,
        ready_replicas=sum(1 for r in replicas if r.state is ReplicaStatus.READY),
        replicas=replicas,
        hidden_replicas=max((ended or 0) - len(shown_ended), 0),
        created_at=d.created_at,
        updated_at=d.updated_at,
    )


async def _replica_rows(
    session: AsyncSession, deployment_id: str, ended: bool, limit: int | None = None
) -> Sequence[tuple[Replica, Job]]:
    """A deployment's replicas with their jobs, newest first: the ended ones or the rest."""
    which = Replica.state.in_(_ENDED) if ended else Replica.state.not_in(_ENDED)
    query = (
        select(Replica, Job)
        .join(Job, Job.id == Replica.job_id)
        .where(Replica.deployment_id == deployment_id, which)
        .order_by(Replica.created_at.desc())
        .limit(limit)
    )
    return (await session.execute(query)).tuples().all()


def _replica_view(r: Replica, job: Job, pid: int | None) -> ReplicaView:
    queued = job.status == JobStatus.QUEUED
    return ReplicaView(
        job_id=r.job_id,
        generation=r.generation,
        state=ReplicaStatus(r.state),
        url=r.url,
        pid=pid,
        message=job.message,
        waiting_reason=job.waiting_reason if queued else None,
        job_status=JobStatus(job.status),
        created_at=r.created_at,
    )


# --- will it fit now? ---------------------------------------------------------------------


async def capacity_warnings(session: AsyncSession, resources: Resources, count: int) -> list[str]:
    """A warning when `count` new replicas cannot all fit the pool's free capacity now.

    They are not refused (`pool.check_fits` refused what can never fit): they queue until
    something ends or a node joins. But a replica that waits says so only in its job, so
    the person who just asked for it is told here, at once, why it will not start."""
    if count <= 0:
        return []
    index = await _free_index(session)
    shape = pool.demand(resources)
    placed = sum(1 for _ in range(count) if place_gang(index, shape) is not None)
    if placed == count:
        return []
    elastic = await session.scalar(select(Pool.name).where(Pool.elastic.is_(True)).limit(1))
    return [_no_room_warning(resources, count, placed, index, elastic is not None)]


async def _free_index(session: AsyncSession) -> FreeIndex:
    """The pool's free capacity now, as the scheduler would see it in its next pass."""
    live = Node.state.not_in(["gone", "removed"])
    nodes = (await session.execute(select(Node).where(live))).scalars()
    held = pool.held_by(await pool.all_active_workers(session))
    return FreeIndex(tuple(pool.node_capacity(n, held.get(n.id)) for n in nodes))


def _no_room_warning(
    resources: Resources, count: int, placed: int, index: FreeIndex, elastic: bool
) -> str:
    shape = _shape(resources.cpu, resources.memory, resources.gpus)
    who = (
        f"a new replica ({shape})"
        if count == 1
        else f"only {placed} of {count} new replicas ({shape} each)"
    )
    verb = "does not fit" if count == 1 else "fit"
    until = "the pool's autoscaler adds a node" if elastic else "other work ends or a node joins"
    return (
        f"{who} {verb} the pool's free capacity now ({_most_free(index, resources.gpus > 0)}); "
        f"{'it' if count == 1 else 'the rest'} will wait until {until}"
    )


def _most_free(index: FreeIndex, gpus: bool) -> str:
    """The most free of each resource on one schedulable node, after this check's own
    placements (GPUs only when the replica asks for some)."""
    listed = [i for i, on in enumerate(index.listed) if on]
    if not listed:
        return "no node takes work now"
    cpu = max(index.cpu[i] for i in listed)
    memory = max(index.memory[i] for i in listed)
    most = _shape(cpu, memory, index.largest_free() if gpus else 0)
    return f"at most {most} free on one node"


def _shape(cpu: float, memory: int, gpus: int) -> str:
    """Resources in the words of the scheduler's waiting reasons ("1 CPU, 1 GiB")."""
    text = f"{max(cpu, 0.0):g} CPU, {max(memory, 0) / 2**30:.3g} GiB"
    return f"{text}, {gpus} GPU" if gpus else text


async def _pids(session: AsyncSession, deployment_id: str) -> dict[str, int]:
    rows = await session.execute(
        select(Worker.job_id, Worker.pid)
        .join(Job, Job.id == Worker.job_id)
        .where(Job.deployment_id == deployment_id, Worker.active.is_(True))
    )
    return {job_id: pid for job_id, pid in rows.tuples() if pid is not None}
