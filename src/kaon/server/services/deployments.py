"""Deployments: create, read, update, delete, tokens, and the gateway's route table.

A deployment's replicas are jobs of kind ``replica``, so the one scheduler places them
with everyone else's jobs and quotas and priorities hold for serving too. The deployment
reconciler decides how many there should be and which to stop; this module holds the
rules that run inside a request.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
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
from kaon.core.replicas import ReplicaStatus
from kaon.core.tokens import hash_token
from kaon.server.db.models import Deployment, DeploymentToken, Job, Replica, Worker, utcnow
from kaon.server.security.principal import Principal
from kaon.server.security.tokens import new_id, new_token
from kaon.server.services import pool, quotas, snapshots
from kaon.server.wake import Wake

CheckpointDir = Callable[[str], Path]


async def create(
    session: AsyncSession,
    caller: Principal,
    workspace: str,
    spec: DeploymentSpec,
    checkpoint_dir: CheckpointDir,
    wake: Wake,
) -> DeploymentView:
    workspace_id = caller.workspace_id(workspace)
    if await session.scalar(select(Deployment.id).where(Deployment.name == spec.name)):
        raise ConflictError(f"a deployment named {spec.name!r} exists; pick another name")
    model_dir = await _validate(session, workspace_id, spec, checkpoint_dir)
    spec = await _with_job_code(session, spec)
    deployment = Deployment(
        id=new_id("d"),
        workspace_id=workspace_id,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        desired_replicas=max(spec.autoscaling.min_replicas, 1),
        model_dir=model_dir,
        message="waiting for replicas",
    )
    session.add(deployment)
    await session.commit()
    wake.deployments()
    return await _view(session, deployment, workspace)


async def _validate(
    session: AsyncSession, workspace_id: str, spec: DeploymentSpec, checkpoint_dir: CheckpointDir
) -> str | None:
    """What can be known now: the code exists, the model exists, a replica can fit."""
    await snapshots.require_for_spec(session, workspace_id, spec.snapshot)
    await pool.check_fits(session, spec.resources)
    await quotas.check_fits_quota(session, workspace_id, spec.resources)
    if spec.from_job is None:
        return None
    job = await session.get(Job, spec.from_job)
    if job is None or job.workspace_id != workspace_id or job.kind != "job":
        raise InvalidSpecError(f"job {spec.from_job!r} not found", field="from_job")
    if job.status != JobStatus.SUCCEEDED.value:
        raise InvalidSpecError(
            f"job {job.id} is {job.status}; deploy a job that succeeded", field="from_job"
        )
    folder = checkpoint_dir(job.id)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise InvalidSpecError(
            f"job {job.id} saved no checkpoint; train it with kaon.train", field="from_job"
        )
    return str(folder)


async def _with_job_code(session: AsyncSession, spec: DeploymentSpec) -> DeploymentSpec:
    """A model served from a job runs in that job's code, so its model class imports."""
    if spec.from_job is None or spec.snapshot is not None:
        return spec
    job = await session.get(Job, spec.from_job)
    snapshot = pool.stored_spec(job).snapshot if job else None
    return spec.model_copy(update={"snapshot": snapshot})


async def _load(session: AsyncSession, caller: Principal, workspace: str, name: str) -> Deployment:
    workspace_id = caller.workspace_id(workspace)
    found = await session.scalar(select(Deployment).where(Deployment.name == name))
    if found is None or found.workspace_id != workspace_id:
        raise NotFoundError(f"deployment {name!r} not found")
    return found


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
) -> DeploymentView:
    """A new spec is a new generation: the reconciler rolls replicas one at a time."""
    deployment = await _load(session, caller, workspace, name)
    if spec.name != name:
        raise InvalidSpecError("a deployment cannot be renamed", field="name")
    if deployment.deleting:
        raise ConflictError(f"deployment {name!r} is being deleted")
    model_dir = await _validate(session, deployment.workspace_id, spec, checkpoint_dir)
    spec = await _with_job_code(session, spec)
    deployment.spec = spec.model_dump(mode="json")
    deployment.model_dir = model_dir
    deployment.generation += 1
    deployment.status = DeploymentStatus.UPDATING
    deployment.message = f"rolling out generation {deployment.generation}"
    deployment.updated_at = utcnow()
    policy = spec.autoscaling
    clamped = min(max(deployment.desired_replicas, policy.min_replicas), policy.max_replicas)
    deployment.desired_replicas = clamped
    await session.commit()
    wake.deployments()
    return await _view(session, deployment, workspace)


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
    rows = await session.execute(
        select(Replica, Job)
        .join(Job, Job.id == Replica.job_id)
        .where(Replica.deployment_id == d.id)
        .order_by(Replica.created_at.desc())
        .limit(20)
    )
    pids = await _pids(session, d.id)
    replicas = [
        ReplicaView(
            job_id=r.job_id,
            generation=r.generation,
            state=ReplicaStatus(r.state),
            url=r.url,
            pid=pids.get(r.job_id),
            message=job.message,
            waiting_reason=job.waiting_reason if job.status == JobStatus.QUEUED else None,
            created_at=r.created_at,
        )
        for r, job in rows.tuples()
    ]
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
        created_at=d.created_at,
        updated_at=d.updated_at,
    )


async def _pids(session: AsyncSession, deployment_id: str) -> dict[str, int]:
    rows = await session.execute(
        select(Worker.job_id, Worker.pid)
        .join(Job, Job.id == Worker.job_id)
        .where(Job.deployment_id == deployment_id, Worker.active.is_(True))
    )
    return {job_id: pid for job_id, pid in rows.tuples() if pid is not None}
