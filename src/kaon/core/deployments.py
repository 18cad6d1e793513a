"""Deployments: the spec a user submits, how its replicas are launched, and the views the
API returns.

A deployment runs N replicas of one service (``module:Class``, a `kaon.Service`) behind the
gateway. The control plane stores a `DeploymentSpec`; its reconciler queues each replica as
a job of kind ``replica`` (`replica_job_spec`, `replica_env`) for the one scheduler, probes
its health check, and publishes the ready ones to the gateways (`kaon.core.gateway`).
Replica lifecycle: `kaon.core.replicas`. Autoscaling: `kaon.autoscaling`.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kaon.core.jobs import JobSpec, JobStatus
from kaon.core.registry import check_model_ref
from kaon.core.replicas import ENV_DEPLOYMENT, ENV_MODEL_DIR, ENV_REPLICA_ID, ReplicaStatus
from kaon.core.resources import Resources
from kaon.core.secrets import SpecEnv
from kaon.core.validation import MAX_SECONDS, NAME_PATTERN, SnapshotRef, check_name

_SERVICE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

RESERVED_NAMES = frozenset({"healthz", "metrics", "ready", "api", "docs"})
"""Deployment names the gateway keeps for its own endpoints (``/healthz``, ``/metrics``)."""

PREDICTOR_SERVICE = "kaon.serving.predictor:Predictor"
"""The service a ``from_job`` deployment runs: it serves the job's latest checkpoint."""


def check_deployment_name(value: str) -> str:
    check_name(value, "deployment name")
    if value in RESERVED_NAMES:
        raise ValueError(f"deployment name {value!r} is reserved by the gateway")
    return value


class ScalingPolicy(BaseModel):
    """How many replicas a deployment wants for the load the gateway reports.

    The desired count tracks a target per replica: in-flight requests (queued ones
    included), requests per second, or both (the larger answer wins). A change is applied
    only once the desired count has stayed above (below) the current one for
    ``scale_up_delay_s`` (``scale_down_delay_s``), so a short burst or lull does not make
    the count flap. With ``min_replicas == 0`` the last replica goes after
    ``scale_to_zero_after_s`` without any request, and the first comes back at once when a
    request arrives. A fixed size is ``min_replicas == max_replicas``. The rules, one by
    one: `kaon.autoscaling.policy`.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=1, ge=1, le=1000)
    target_in_flight: float | None = Field(
        default=8.0, gt=0, description="in-flight plus queued requests per replica"
    )
    target_rps: float | None = Field(default=None, gt=0, description="requests/s per replica")
    scale_up_delay_s: float = Field(default=5.0, ge=0, le=MAX_SECONDS)
    scale_down_delay_s: float = Field(default=60.0, ge=0, le=MAX_SECONDS)
    scale_to_zero_after_s: float = Field(default=300.0, ge=0, le=MAX_SECONDS)

    @model_validator(mode="after")
    def _bounds(self) -> ScalingPolicy:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        if self.target_in_flight is None and self.target_rps is None:
            raise ValueError("set target_in_flight, target_rps or both")
        return self


class HealthCheck(BaseModel):
    """How the control plane decides that a replica is ready, and when it is dead.

    A replica is probed with ``GET path`` every ``period_s``; it joins the route table after
    its first 200 and leaves it after ``failure_threshold`` failures in a row. One that is not
    ready ``startup_timeout_s`` after its start is restarted.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    path: str = Field(default="/ready", pattern=r"^/")
    period_s: float = Field(default=2.0, gt=0, le=MAX_SECONDS)
    timeout_s: float = Field(default=2.0, gt=0, le=MAX_SECONDS)
    failure_threshold: int = Field(default=3, ge=1, le=1_000_000)
    startup_timeout_s: float = Field(default=600.0, gt=0, le=MAX_SECONDS)


class DeploymentSpec(BaseModel):
    """What a user asks to serve: ``service``, ``from_job`` or ``model``.

    ``service`` names a `kaon.Service` subclass as ``module:Class``, imported from the
    uploaded folder ``snapshot``. ``from_job`` serves the latest checkpoint of a finished
    `kaon.train` job with the ready-made `PREDICTOR_SERVICE`. ``model`` serves a version
    of the model registry (``NAME:VERSION``, ``NAME:ALIAS`` following the alias, or
    ``NAME``, the newest version when deployed): with the predictor, or with ``service``,
    whose replicas then find the version's folder in ``KAON_MODEL_DIR``.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str
    service: str | None = Field(default=None, description="'module:Class' of a kaon.Service")
    from_job: str | None = Field(default=None, description="id of a job whose model to serve")
    model: str | None = Field(
        default=None, description="a registered model: NAME:VERSION, NAME:ALIAS or NAME"
    )
    snapshot: SnapshotRef = Field(default=None, description="sha256 of an uploaded folder")
    resources: Resources = Field(default_factory=Resources, description="per replica")
    autoscaling: ScalingPolicy = Field(default_factory=ScalingPolicy)
    env: SpecEnv = Field(default_factory=dict)
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    public: bool = Field(default=False, description="callable without a token")
    request_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    max_queue: int = Field(default=100, ge=0, le=100_000, description="waiting requests")
    max_concurrency: int = Field(
        default=64, ge=1, le=1_000_000, description="in-flight per replica"
    )
    max_body_bytes: int = Field(default=10 * 2**20, ge=1, le=2**30)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_deployment_name(value)

    @field_validator("service")
    @classmethod
    def _service(cls, value: str | None) -> str | None:
        if value is not None and not _SERVICE.match(value):
            raise ValueError("service must look like 'module.path:ClassName'")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return None if value is None else check_model_ref(value)

    @model_validator(mode="after")
    def _source(self) -> DeploymentSpec:
        if self.service is None and (self.from_job is None) == (self.model is None):
            raise ValueError("set exactly one of service and from_job (or model alone)")
        if self.service is not None and self.from_job is not None:
            raise ValueError("set exactly one of service and from_job")
        return self

    def service_ref(self) -> str:
        """The ``module:Class`` a replica runs."""
        return self.service or PREDICTOR_SERVICE


# --- replicas as jobs ----------------------------------------------------------------------


def replica_command(spec: DeploymentSpec) -> list[str]:
    """The argv a replica runs with. Its working directory is the unpacked snapshot; it
    listens on the port and address the executor gives every worker (``KAON_PORT``,
    ``KAON_NODE_ADDRESS``), and ``python`` is the Python that runs Kaon on that node."""
    return ["python", "-m", "kaon.serving.runtime", "--service", spec.service_ref()]


def replica_job_spec(spec: DeploymentSpec) -> JobSpec:
    """One replica as a job for the scheduler: the deployment's code, env and resources."""
    return JobSpec(
        name=spec.name,
        command=replica_command(spec),
        snapshot=spec.snapshot,
        env=spec.env,
        resources=spec.resources,
    )


def replica_env(deployment: str, replica_id: str, model_dir: str | None = None) -> dict[str, str]:
    """The variables Kaon sets for one replica, beside every worker's ``KAON_*``."""
    env = {ENV_REPLICA_ID: replica_id, ENV_DEPLOYMENT: deployment}
    if model_dir is not None:
        env[ENV_MODEL_DIR] = model_dir
    return env


# --- views ----------------------------------------------------------------------------------


class DeploymentStatus(enum.StrEnum):
    """What a deployment is doing, as a whole (`deployment_steps.plan` decides it)."""

    PENDING = "pending"  # just created; the reconciler has not looked yet
    STARTING = "starting"  # fewer ready replicas than desired
    READY = "ready"  # as many ready replicas as desired
    UPDATING = "updating"  # rolling out a new generation
    SCALED_TO_ZERO = "scaled-to-zero"  # idle; the next request starts a replica
    FAILING = "failing"  # replicas crash and none is ready
    DELETING = "deleting"  # replicas are being stopped before the deployment goes


class ReplicaView(BaseModel):
    job_id: str
    generation: int
    state: ReplicaStatus
    url: str | None = None
    pid: int | None = None
    message: str = ""
    waiting_reason: str | None = Field(
        default=None, description="why its job waits for resources, while it does"
    )
    job_status: JobStatus | None = Field(
        default=None, description="its job's status: queued, starting, running ..."
    )
    created_at: datetime


class DeploymentView(BaseModel):
    name: str
    workspace: str
    status: DeploymentStatus
    message: str = ""
    spec: DeploymentSpec
    generation: int
    desired_replicas: int
    ready_replicas: int = 0
    replicas: list[ReplicaView] = Field(
        default_factory=list,
        description="live replicas, newest first, then the few most recent ended ones",
    )
    hidden_replicas: int = Field(default=0, description="older ended replicas not listed")
    warnings: list[str] = Field(
        default_factory=list,
        description="from create and update: what will hold it back, such as a replica "
        "that cannot fit the pool's free capacity now and will wait",
    )
    created_at: datetime
    updated_at: datetime


class CreateDeploymentToken(BaseModel):
    name: str = Field(default="token", pattern=NAME_PATTERN)


class DeploymentTokenCreated(BaseModel):
    id: str
    name: str
    deployment: str
    token: str = Field(description="the secret; shown only now")


class HandlerCall(BaseModel):
    """A call of a deployment's handler made through the control plane, which forwards it
    to the gateway with the caller's token (the console's form, `kaon deploy call`)."""

    model_config = ConfigDict(extra="forbid")

    handler: str = Field(max_length=200, description="e.g. 'predict' or 'v1/chat'")
    body: Any = Field(default=None, description="the JSON body to send (none: {})")
    token: str | None = Field(
        default=None,
        max_length=500,
        description="a deployment token to call with; none: the signed-in token",
    )


class HandlerReply(BaseModel):
    """What the gateway answered: its status, how long it took from the control plane (the
    gateway's queue and the handler included), and the reply's first bytes."""

    status: int
    latency_ms: float
    content_type: str | None
    body: str
    truncated: bool
    gateway: str
