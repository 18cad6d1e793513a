"""ORM tables. Storage only: the rules live in `services/`.

JSON columns hold values whose shape is owned by a pydantic model in `kaon.core` (a
job's spec, a node's GPUs); they are validated on the way in and out by the services.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Token(Base):
    """An API token. Only its SHA-256 is stored; `prefix` tells tokens apart in lists."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    prefix: Mapped[str] = mapped_column(String(16))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="member")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # the token that minted this one: revoking it revokes this one too (a cascade at
    # revoke time, so authentication stays one lookup by hash)
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("tokens.id"), default=None, index=True
    )
    # the user it acts for (its role is capped by the user's membership in each
    # workspace); None for system tokens (the gateway's)
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None, index=True
    )


class TokenWorkspace(Base):
    __tablename__ = "token_workspaces"

    token_id: Mapped[str] = mapped_column(
        ForeignKey("tokens.id", ondelete="CASCADE"), primary_key=True
    )
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )


class Pool(Base):
    """A Ray cluster attached to the pool (the local machine is implicit, not a row)."""

    __tablename__ = "pools"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(255))
    api_url: Mapped[str | None] = mapped_column(String(255), default=None)
    state: Mapped[str] = mapped_column(String(16), default="connecting")
    message: Mapped[str] = mapped_column(Text, default="")
    elastic: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Node(Base):
    """A node of a pool. `executor` is the name of its pool ("local" for this machine)."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    executor: Mapped[str] = mapped_column(String(63))
    address: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="ready")
    message: Mapped[str] = mapped_column(Text, default="", server_default="")
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cpu: Mapped[float] = mapped_column(Float)
    memory: Mapped[int] = mapped_column(BigInteger)
    gpus: Mapped[list[Any]] = mapped_column(default=list)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """A job's desired and observed state. Every update is guarded by `version`."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status", "status"), Index("ix_jobs_ws", "workspace_id"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    name: Mapped[str | None] = mapped_column(String(63), default=None)
    spec: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    waiting_reason: Mapped[str | None] = mapped_column(Text, default=None)
    stop_reason: Mapped[str | None] = mapped_column(String(16), default=None)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    restart_count: Mapped[int] = mapped_column(Integer, default=0)
    retries_used: Mapped[int] = mapped_column(Integer, default=0)
    preemptions: Mapped[int] = mapped_column(Integer, default=0)
    lost_gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    attained_gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    job_token_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    not_before: Mapped[datetime | None] = mapped_column(default=None)
    version: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(16), default="job", server_default="job")
    deployment_id: Mapped[str | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), default=None, index=True
    )
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    system_env: Mapped[dict[str, Any]] = mapped_column(default=dict)  # set by Kaon, not the user


class Worker(Base):
    """One worker of one attempt. Rows of a job holding resources are its allocation."""

    __tablename__ = "workers"
    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "index"),
        Index("ix_workers_active", "active"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    cpu: Mapped[float] = mapped_column(Float)
    memory: Mapped[int] = mapped_column(BigInteger)
    gpus: Mapped[list[Any]] = mapped_column(default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    handle: Mapped[str | None] = mapped_column(String(255), default=None)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    port: Mapped[int | None] = mapped_column(Integer, default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_job_name_step", "job_id", "name", "step"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    worker: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int | None] = mapped_column(BigInteger, default=None)
    time: Mapped[float] = mapped_column(Float)
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)


class Snapshot(Base):
    """An uploaded working directory: a tar.gz in the blob store, named by its SHA-256."""

    __tablename__ = "snapshots"

    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Quota(Base):
    """A workspace's nominal share and borrow limits. NULL means unlimited."""

    __tablename__ = "quotas"

    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    gpus: Mapped[float | None] = mapped_column(Float, default=None)
    cpu: Mapped[float | None] = mapped_column(Float, default=None)
    memory: Mapped[int | None] = mapped_column(BigInteger, default=None)
    borrow_gpus: Mapped[float | None] = mapped_column(Float, default=None)
    borrow_cpu: Mapped[float | None] = mapped_column(Float, default=None)
    borrow_memory: Mapped[int | None] = mapped_column(BigInteger, default=None)
    storage: Mapped[int | None] = mapped_column(BigInteger, default=None)  # NULL: the default
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deployment(Base):
    """A served model: its spec (desired state) and what the reconciler last decided.
    Names are unique within a workspace: the gateway's canonical path of one is
    ``/{workspace}/{name}``, and no name says anything about another workspace's."""

    __tablename__ = "deployments"
    __table_args__ = (
        UniqueConstraint("workspace_id", "name", name="uq_deployments_workspace_name"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    spec: Mapped[dict[str, Any]] = mapped_column()
    generation: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    message: Mapped[str] = mapped_column(Text, default="")
    desired_replicas: Mapped[int] = mapped_column(Integer, default=0)
    deleting: Mapped[bool] = mapped_column(Boolean, default=False)
    model_dir: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeploymentToken(Base):
    """A token that may call one deployment through the gateway. Stored as SHA-256."""

    __tablename__ = "deployment_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    prefix: Mapped[str] = mapped_column(String(16))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Replica(Base):
    """A deployment's replica: a long-running job (kind 'replica') plus its health."""

    __tablename__ = "replicas"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    generation: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="starting")
    url: Mapped[str | None] = mapped_column(String(255), default=None)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    ready_at: Mapped[datetime | None] = mapped_column(default=None)
    stop_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WorkspaceKey(Base):
    """A workspace's data key, stored only wrapped by the master key named
    `master_key_id` (`kaon.server.security.keys`)."""

    __tablename__ = "workspace_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), unique=True
    )
    master_key_id: Mapped[str] = mapped_column(String(64))
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    rewrapped_at: Mapped[datetime | None] = mapped_column(default=None)


class Secret(Base):
    """A workspace's secret: its value sealed with the workspace's data key (AES-256-GCM,
    bound to workspace, name and version). Only the newest version's value is kept."""

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer, default=1)
    key_id: Mapped[str] = mapped_column(ForeignKey("workspace_keys.id"))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_by: Mapped[str] = mapped_column(String(63))
    updated_by: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditRecord(Base):
    """One entry of the append-only audit log; `hash` chains it to the entry before."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_time", "time"), Index("ix_audit_workspace", "workspace"))

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column()
    principal: Mapped[str | None] = mapped_column(String(64), default=None)
    token_name: Mapped[str | None] = mapped_column(String(63), default=None)
    workspace: Mapped[str | None] = mapped_column(String(63), default=None)
    action: Mapped[str] = mapped_column(String(96))
    resource: Mapped[str | None] = mapped_column(String(255), default=None)
    outcome: Mapped[str] = mapped_column(String(16))
    status: Mapped[int] = mapped_column(Integer)
    source: Mapped[str | None] = mapped_column(String(64), default=None)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's newest sequence number and hash, one row: appending updates it first,
    which serializes appends on every backend (a row lock on PostgreSQL, the write lock
    on SQLite) and lets `verify` notice records cut off the end."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class Blob(Base):
    """A content-addressed blob of a workspace: its value, sealed with the workspace's data
    key, is in the blob store under ``<workspace id>/<sha256>``. The row is written only
    once the stored value is whole and its plaintext's sha256 checked."""

    __tablename__ = "blobs"

    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    stored_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    """One version of a named artifact: a manifest of files (path, sha256, size, mode),
    each a blob of the workspace. Versions are immutable; deleting one removes its row
    (and the blobs no other version uses)."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("workspace_id", "name", "version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    manifest: Mapped[list[Any]] = mapped_column()
    size: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    source_job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    created_by: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)


class ArtifactBlob(Base):
    """Which blobs a version names: what a delete looks up to collect the blobs no version
    uses any more, without reading every manifest."""

    __tablename__ = "artifact_blobs"
    __table_args__ = (Index("ix_artifact_blobs_blob", "workspace_id", "sha256"),)

    artifact_id: Mapped[str] = mapped_column(
        ForeignKey("artifacts.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(32))


class Model(Base):
    """A registered model of a workspace: a name whose versions are immutable."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    """One version of a model: an artifact (the weights' folder) plus where it came from
    (the job, its code snapshot, the last value of each metric the job reported).
    `artifact_ref` repeats the artifact's ``name:version`` so a listing needs no join."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    artifact_id: Mapped[str] = mapped_column(String(32))
    artifact_ref: Mapped[str] = mapped_column(String(96))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    snapshot: Mapped[str | None] = mapped_column(String(64), default=None)
    source_job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    created_by: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAlias(Base):
    """A movable name for one version of a model (``production`` -> version 3)."""

    __tablename__ = "model_aliases"

    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(63), primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))
    updated_by: Mapped[str] = mapped_column(String(63))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    """A person (or team account) that tokens act for. `is_admin`: the instance's
    administrator, who may do everything in every workspace."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(63), default=None)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(timezone=True), default=None)


class Membership(Base):
    """A user's role in one workspace: viewer, member or admin."""

    __tablename__ = "memberships"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))
