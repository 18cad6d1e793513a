"""The model registry: register versions, list and show models, move aliases, delete
versions, and resolve a deployment's ``model`` to the folder its replicas serve.

A version is immutable: its weights are an artifact of kind ``model`` (uploaded once,
through `kaon.server.services.artifacts`), and nothing changes a version after it is
registered; there is no update, only a new version. An alias is the one movable part:
moving it rolls every deployment of the workspace that follows it (``model:
"churn:production"``) to the new version, by the same rolling update a spec change
starts. A version is not deleted while an alias points at it or a deployment serves it.

Every call that changes something is recorded in the audit log by the API's middleware
(`kaon.server.security.audit`), as for every other route.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.artifacts import ArtifactKind
from kaon.core.deployments import DeploymentSpec, DeploymentStatus
from kaon.core.errors import ConflictError, InvalidSpecError, NotFoundError
from kaon.core.jobs import JobStatus
from kaon.core.registry import (
    ModelVersionView,
    ModelView,
    RegisterModel,
    check_alias,
    check_model_name,
    parse_model_ref,
)
from kaon.server.db.models import (
    Deployment,
    Job,
    Metric,
    Model,
    ModelAlias,
    ModelVersion,
    utcnow,
)
from kaon.server.db.session import Database
from kaon.server.security.principal import Principal
from kaon.server.security.tokens import new_id
from kaon.server.services import artifacts
from kaon.server.services.pool import stored_spec
from kaon.server.wake import Wake

CheckpointDir = Callable[[str], Path]


def _checked_name(name: str) -> str:
    try:
        return check_model_name(name)
    except ValueError as e:
        raise InvalidSpecError(str(e), field="name") from None


# --- pure decisions ---------------------------------------------------------------------------


def follows(spec_model: str | None, name: str, alias: str) -> bool:
    """Whether a deployment whose spec says `spec_model` follows `name:alias`."""
    return spec_model == f"{name}:{alias}"


def serves_version(
    spec_model: str | None, name: str, version: int, aliases: dict[str, int]
) -> bool:
    """Whether a deployment whose spec says `spec_model` serves `name:version` now
    (pinned to it, or following an alias that points at it)."""
    if spec_model is None:
        return False
    try:
        ref_name, ref_version, ref_alias = parse_model_ref(spec_model)
    except ValueError:
        return False
    if ref_name != name:
        return False
    if ref_alias is not None:
        return aliases.get(ref_alias) == version
    return ref_version == version


def last_values(rows: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Metric name -> the last value reported, from rows in the order they arrived."""
    out: dict[str, float] = {}
    for name, value in rows:
        out[name] = value
    return out


# --- reads ------------------------------------------------------------------------------------


async def _model(session: AsyncSession, workspace_id: str, name: str) -> Model:
    found = await session.scalar(
        select(Model).where(Model.workspace_id == workspace_id, Model.name == name)
    )
    if found is None:
        raise NotFoundError(f"model {name!r} not found")
    return found


async def _versions(session: AsyncSession, model_id: str) -> list[ModelVersion]:
    rows = await session.scalars(
        select(ModelVersion)
        .where(ModelVersion.model_id == model_id)
        .order_by(ModelVersion.version.desc())
    )
    return list(rows)


async def _aliases(session: AsyncSession, model_id: str) -> dict[str, int]:
    """Alias -> version number."""
    rows = await session.execute(
        select(ModelAlias.alias, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == ModelAlias.version_id)
        .where(ModelAlias.model_id == model_id)
        .order_by(ModelAlias.alias)
    )
    return dict(rows.tuples().all())


async def _version(session: AsyncSession, model: Model, version: int) -> ModelVersion:
    found = await session.scalar(
        select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.version == version
        )
    )
    if found is None:
        raise NotFoundError(f"model {model.name!r} has no version {version}")
    return found


def _version_view(model: Model, row: ModelVersion, aliases: dict[str, int]) -> ModelVersionView:
    return ModelVersionView(
        model=model.name,
        version=row.version,
        artifact=row.artifact_ref,
        metrics={k: float(v) for k, v in row.metrics.items()},
        snapshot=row.snapshot,
        source_job_id=row.source_job_id,
        aliases=sorted(a for a, v in aliases.items() if v == row.version),
        created_by=row.created_by,
        created_at=row.created_at,
    )


async def _model_view(
    session: AsyncSession, model: Model, workspace: str, with_versions: bool
) -> ModelView:
    versions = await _versions(session, model.id)
    aliases = await _aliases(session, model.id)
    return ModelView(
        name=model.name,
        workspace=workspace,
        description=model.description,
        latest_version=versions[0].version if versions else None,
        aliases=aliases,
        versions=[_version_view(model, v, aliases) for v in versions] if with_versions else [],
        created_by=model.created_by,
        created_at=model.created_at,
    )


async def list_models(session: AsyncSession, caller: Principal, workspace: str) -> list[ModelView]:
    workspace_id = caller.workspace_id(workspace)
    rows = await session.scalars(
        select(Model).where(Model.workspace_id == workspace_id).order_by(Model.name)
    )
    return [await _model_view(session, m, workspace, with_versions=False) for m in rows]


async def get_model(
    session: AsyncSession, caller: Principal, workspace: str, name: str
) -> ModelView:
    model = await _model(session, caller.workspace_id(workspace), name)
    return await _model_view(session, model, workspace, with_versions=True)


# --- register ---------------------------------------------------------------------------------


async def trained_checkpoints(
    session: AsyncSession,
    workspace_id: str,
    job_id: str,
    checkpoint_dir: CheckpointDir,
    use: str = "register",
) -> tuple[Job, Path]:
    """A succeeded job of the workspace and its checkpoint folder: what a model is
    registered from, and what a `from_job` deployment serves (`use` says which, in the
    error)."""
    job = await session.get(Job, job_id)
    if job is None or job.workspace_id != workspace_id or job.kind != "job":
        raise InvalidSpecError(f"job {job_id!r} not found", field="from_job")
    if job.status != JobStatus.SUCCEEDED.value:
        raise InvalidSpecError(
            f"job {job.id} is {job.status}; {use} a job that succeeded", field="from_job"
        )
    folder = checkpoint_dir(job.id)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise InvalidSpecError(
            f"job {job.id} saved no checkpoint; train it with kaon.train", field="from_job"
        )
    return job, folder


async def _job_metrics(session: AsyncSession, job_id: str) -> dict[str, float]:
    rows = await session.execute(
        select(Metric.name, Metric.value).where(Metric.job_id == job_id).order_by(Metric.id)
    )
    return last_values(rows.tuples())


async def _source_job(session: AsyncSession, workspace_id: str, job_id: str | None) -> Job | None:
    if job_id is None:
        return None
    job = await session.get(Job, job_id)
    return job if job is not None and job.workspace_id == workspace_id else None


async def register(
    db: Database,
    session: AsyncSession,
    caller: Principal,
    workspace: str,
    name: str,
    body: RegisterModel,
    checkpoint_dir: CheckpointDir,
    wake: Wake,
) -> ModelVersionView:
    """A new version of `name` (made on its first version): a succeeded job's checkpoint
    folder, uploaded as an artifact of kind ``model``, or an artifact already stored."""
    _checked_name(name)
    workspace_id = caller.workspace_id(workspace)
    if body.from_job is not None:
        job, folder = await trained_checkpoints(
            session, workspace_id, body.from_job, checkpoint_dir
        )
        await session.commit()  # no read transaction held across the upload's own writes
        stored = await artifacts.store_folder(
            db,
            workspace_id,
            name,
            folder,
            kind=ArtifactKind.MODEL.value,
            created_by=caller.name,
            source_job_id=job.id,
            metadata={"model": name},
        )
        artifact = await artifacts.find(session, workspace_id, stored.ref)
        source: Job | None = job
    else:
        assert body.artifact is not None
        try:
            artifact = await artifacts.find(session, workspace_id, body.artifact)
        except NotFoundError as e:
            raise InvalidSpecError(str(e), field="artifact") from None
        source = await _source_job(session, workspace_id, artifact.source_job_id)
    metrics = await _job_metrics(session, source.id) if source is not None else {}
    snapshot = stored_spec(source).snapshot if source is not None else None
    followers: list[Deployment] = []
    model_dir: str | None = None
    if body.alias is not None:
        followers = await _followers(session, workspace_id, name, body.alias)
        if followers:
            model_dir = str(await artifacts.materialise(db, artifact))
    model = await _model_for(session, caller, workspace_id, name, body.description)
    number = (
        await session.scalar(
            select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
        )
        or 0
    ) + 1
    if not await artifacts.hold(session, artifact.id):  # ordered with its delete
        raise ConflictError(f"artifact {artifact.name}:{artifact.version} was just deleted")
    row = ModelVersion(
        id=new_id("mv"),
        model_id=model.id,
        version=number,
        artifact_id=artifact.id,
        artifact_ref=f"{artifact.name}:{artifact.version}",
        metrics=metrics,
        snapshot=snapshot,
        source_job_id=source.id if source is not None else None,
        created_by=caller.name,
    )
    try:
        async with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise ConflictError(
            f"another version of model {name!r} was registered at the same time; try again"
        ) from None
    moved: list[str] = []
    if body.alias is not None:
        moved = await _point(session, caller, model, body.alias, row, followers, model_dir)
    await session.commit()
    if moved:
        wake.deployments()
    return _version_view(model, row, await _aliases(session, model.id))


async def _model_for(
    session: AsyncSession, caller: Principal, workspace_id: str, name: str, description: str | None
) -> Model:
    """The model named `name`, made now if it is new."""
    found = await session.scalar(
        select(Model).where(Model.workspace_id == workspace_id, Model.name == name)
    )
    if found is not None:
        if description is not None:
            found.description = description
        return found
    model = Model(
        id=new_id("m"),
        workspace_id=workspace_id,
        name=name,
        description=description or "",
        created_by=caller.name,
    )
    try:
        async with session.begin_nested():
            session.add(model)
    except IntegrityError:  # another request made it first
        return await _model(session, workspace_id, name)
    return model


# --- aliases ----------------------------------------------------------------------------------


async def set_alias(
    db: Database,
    session: AsyncSession,
    caller: Principal,
    workspace: str,
    name: str,
    alias: str,
    version: int,
    wake: Wake,
) -> ModelView:
    """Point `alias` at `version` (made or moved); the deployments that follow the alias
    roll to that version."""
    try:
        check_alias(alias)
    except ValueError as e:
        raise InvalidSpecError(str(e), field="alias") from None
    workspace_id = caller.workspace_id(workspace)
    model = await _model(session, workspace_id, name)
    row = await _version(session, model, version)
    found = await session.get(ModelAlias, (model.id, alias))
    if found is not None and found.version_id == row.id:
        return await _model_view(session, model, workspace, with_versions=True)
    followers = await _followers(session, workspace_id, name, alias)
    model_dir = None
    if followers:
        model_dir = str(await _materialise(db, session, workspace_id, row))
    moved = await _point(session, caller, model, alias, row, followers, model_dir)
    await session.commit()
    if moved:
        wake.deployments()
    return await _model_view(session, model, workspace, with_versions=True)


async def _followers(
    session: AsyncSession, workspace_id: str, name: str, alias: str
) -> list[Deployment]:
    """The deployments that follow `name:alias`. Read before anything is written: their
    new folder is materialised next, which takes a while, and no write lock may be held
    meanwhile (SQLite's is the whole database's)."""
    deployments = await session.scalars(
        select(Deployment).where(
            Deployment.workspace_id == workspace_id, Deployment.deleting.is_(False)
        )
    )
    return [d for d in deployments if follows(d.spec.get("model"), name, alias)]


async def _point(
    session: AsyncSession,
    caller: Principal,
    model: Model,
    alias: str,
    row: ModelVersion,
    followers: list[Deployment],
    model_dir: str | None,
) -> list[str]:
    """Point the alias at `row` and roll its followers to `model_dir` (not committed);
    the names of the deployments that roll."""
    found = await session.get(ModelAlias, (model.id, alias))
    previous = await session.get(ModelVersion, found.version_id) if found is not None else None
    if found is None:
        session.add(
            ModelAlias(model_id=model.id, alias=alias, version_id=row.id, updated_by=caller.name)
        )
    else:
        found.version_id, found.updated_by, found.updated_at = row.id, caller.name, utcnow()
    if not followers or model_dir is None:
        return []
    _roll(model, row, previous, followers, model_dir)
    return [d.name for d in followers]


def _roll(
    model: Model,
    row: ModelVersion,
    previous: ModelVersion | None,
    followers: list[Deployment],
    model_dir: str,
) -> None:
    """A new generation for each deployment that follows the alias, serving `row`. A
    deployment whose code came from the previous version's job (its snapshot is that
    version's) takes the new version's code too; code a user gave stays."""
    for d in followers:
        spec = DeploymentSpec.model_validate(d.spec)
        if row.snapshot is not None and (
            spec.snapshot is None or (previous is not None and spec.snapshot == previous.snapshot)
        ):
            spec = spec.model_copy(update={"snapshot": row.snapshot})
        policy = spec.autoscaling
        d.spec = spec.model_dump(mode="json")
        d.model_dir = model_dir
        d.generation += 1
        d.status = DeploymentStatus.UPDATING
        d.message = f"rolling out generation {d.generation} ({model.name}:{row.version})"
        d.desired_replicas = min(max(d.desired_replicas, policy.min_replicas), policy.max_replicas)
        d.updated_at = utcnow()


async def remove_alias(
    session: AsyncSession, caller: Principal, workspace: str, name: str, alias: str
) -> ModelView:
    """Remove an alias; refused while a deployment follows it."""
    workspace_id = caller.workspace_id(workspace)
    model = await _model(session, workspace_id, name)
    found = await session.get(ModelAlias, (model.id, alias))
    if found is None:
        raise NotFoundError(f"model {name!r} has no alias {alias!r}")
    users = await _deployments_where(session, workspace_id, lambda m: follows(m, name, alias))
    if users:
        raise ConflictError(
            f"deployment {users[0]!r} follows {name}:{alias}; point it elsewhere first"
        )
    await session.delete(found)
    await session.commit()
    return await _model_view(session, model, workspace, with_versions=True)


async def _deployments_where(
    session: AsyncSession, workspace_id: str, test: Callable[[str | None], bool]
) -> list[str]:
    rows = await session.execute(
        select(Deployment.name, Deployment.spec)
        .where(Deployment.workspace_id == workspace_id)
        .order_by(Deployment.name)
    )
    return [n for n, spec in rows.tuples() if test(spec.get("model"))]


# --- delete -----------------------------------------------------------------------------------


async def delete_version(
    session: AsyncSession, caller: Principal, workspace: str, name: str, version: int
) -> ModelVersionView:
    """Delete one version; refused while an alias points at it or a deployment serves
    it. Its artifact goes with it when it was made for this model and nothing else uses
    it (`artifacts.release`)."""
    workspace_id = caller.workspace_id(workspace)
    model = await _model(session, workspace_id, name)
    row = await _version(session, model, version)
    aliases = await _aliases(session, model.id)
    pointing = sorted(a for a, v in aliases.items() if v == version)
    if pointing:
        raise ConflictError(
            f"alias {pointing[0]!r} points at {name}:{version}; move or remove it first"
        )
    users = await _deployments_where(
        session, workspace_id, lambda m: serves_version(m, name, version, aliases)
    )
    if users:
        raise ConflictError(f"deployment {users[0]!r} serves {name}:{version}; delete it first")
    view = _version_view(model, row, aliases)
    await session.delete(row)
    await session.flush()
    await artifacts.release(session, row.artifact_id, model=name)
    await session.commit()
    return view


# --- deployments ------------------------------------------------------------------------------


async def _materialise(
    db: Database, session: AsyncSession, workspace_id: str, row: ModelVersion
) -> Path:
    artifact = await artifacts.find(session, workspace_id, row.artifact_ref)
    return await artifacts.materialise(db, artifact)


async def resolve_for_deployment(
    db: Database, session: AsyncSession, workspace_id: str, spec: DeploymentSpec
) -> tuple[DeploymentSpec, str]:
    """The spec to store and the folder its replicas serve (``KAON_MODEL_DIR``), for a
    spec with ``model``: a bare name is pinned to the newest version now, and the
    version's code snapshot is used when the spec brings none. Bad references are 422
    naming ``model``."""
    assert spec.model is not None
    try:
        name, version, alias = parse_model_ref(spec.model)
    except ValueError as e:
        raise InvalidSpecError(str(e), field="model") from None
    model = await session.scalar(
        select(Model).where(Model.workspace_id == workspace_id, Model.name == name)
    )
    if model is None:
        raise InvalidSpecError(f"model {name!r} not found", field="model")
    row: ModelVersion | None
    if alias is not None:
        found = await session.get(ModelAlias, (model.id, alias))
        row = await session.get(ModelVersion, found.version_id) if found is not None else None
        if row is None:
            raise InvalidSpecError(f"model {name!r} has no alias {alias!r}", field="model")
    elif version is not None:
        row = await session.scalar(
            select(ModelVersion).where(
                ModelVersion.model_id == model.id, ModelVersion.version == version
            )
        )
        if row is None:
            raise InvalidSpecError(f"model {name!r} has no version {version}", field="model")
    else:
        versions = await _versions(session, model.id)
        if not versions:
            raise InvalidSpecError(f"model {name!r} has no version yet", field="model")
        row = versions[0]
        spec = spec.model_copy(update={"model": f"{name}:{row.version}"})
    if spec.snapshot is None and row.snapshot is not None:
        spec = spec.model_copy(update={"snapshot": row.snapshot})
    return spec, str(await _materialise(db, session, workspace_id, row))
