"""Deployments: the spec a user submits, and the two messages the gateway trades with the
control plane.

A deployment runs N replicas of one service (``module:Class``, a `kaon.Service`) behind the
gateway. The control plane stores a `DeploymentSpec`; its reconciler starts replicas with
the command line from `replica_command` and the environment from `replica_env`, probes each
replica's health check, and publishes the ready ones to the gateway as a `RouteTable`.

The gateway in turn reports the load it sees as a `GatewayReport` every second (and at once
when a request arrives for a deployment with no ready replica). The reconciler feeds that
load to the pure autoscaling policy (`kaon.gateway.autoscale.decide`) with the deployment's
`ScalingPolicy`, and starts or stops replicas to match.

```
 control plane --RouteTable (GET /api/v1/gateway/routes)--> gateway --> replicas
 control plane <--GatewayReport (POST /api/v1/gateway/report)-- gateway
```

Tokens never travel in plaintext: a route carries sha256 hex digests (`hash_token`), and the
gateway hashes the bearer it receives.
"""

from __future__ import annotations

import enum
import hashlib
import re
import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kaon.core.errors import IllegalTransitionError
from kaon.core.resources import Resources

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SERVICE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

RESERVED_NAMES = frozenset({"healthz", "metrics", "ready", "api", "docs"})
"""Deployment names the gateway keeps for its own endpoints (``/healthz``, ``/metrics``)."""

PREDICTOR_SERVICE = "kaon.serving.predictor:Predictor"
"""The service a ``from_job`` deployment runs: it serves the job's latest checkpoint."""

ENV_REPLICA_ID = "KAON_REPLICA_ID"
ENV_DEPLOYMENT = "KAON_DEPLOYMENT"
ENV_MODEL_DIR = "KAON_MODEL_DIR"


def hash_token(token: str) -> str:
    """The form in which a token reaches the gateway: its sha256 hex digest."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_deployment_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("deployment name must be 1-63 characters of a-z, 0-9 and '-'")
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
    request arrives. A fixed size is ``min_replicas == max_replicas``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=1, ge=1, le=1000)
    target_in_flight: float | None = Field(
        default=8.0, gt=0, description="in-flight plus queued requests per replica"
    )
    target_rps: float | None = Field(default=None, gt=0, description="requests/s per replica")
    scale_up_delay_s: float = Field(default=5.0, ge=0)
    scale_down_delay_s: float = Field(default=60.0, ge=0)
    scale_to_zero_after_s: float = Field(default=300.0, ge=0)

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

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(default="/ready", pattern=r"^/")
    period_s: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    failure_threshold: int = Field(default=3, ge=1)
    startup_timeout_s: float = Field(default=600.0, gt=0)


class DeploymentSpec(BaseModel):
    """What a user asks to serve. Exactly one of ``service`` and ``from_job``.

    ``service`` names a `kaon.Service` subclass as ``module:Class``, imported from the
    uploaded folder ``snapshot``. ``from_job`` serves the latest checkpoint of a finished
    `kaon.train` job with the ready-made `PREDICTOR_SERVICE`.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    service: str | None = Field(default=None, description="'module:Class' of a kaon.Service")
    from_job: str | None = Field(default=None, description="id of a job whose model to serve")
    snapshot: str | None = Field(default=None, description="sha256 of an uploaded folder")
    resources: Resources = Field(default_factory=Resources, description="per replica")
    autoscaling: ScalingPolicy = Field(default_factory=ScalingPolicy)
    env: dict[str, str] = Field(default_factory=dict)
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    public: bool = Field(default=False, description="callable without a token")
    request_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    max_queue: int = Field(default=100, ge=0, le=100_000, description="waiting requests")
    max_concurrency: int = Field(default=64, ge=1, description="in-flight per replica")
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

    @field_validator("snapshot")
    @classmethod
    def _snapshot(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value):
            raise ValueError("snapshot must be the sha256 hex digest of an uploaded folder")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not _ENV_NAME.match(key):
                raise ValueError(f"env name {key!r} is not a valid variable name")
            if key.startswith("KAON_"):
                raise ValueError(f"env {key!r} is set by Kaon and cannot be overridden")
            if "\x00" in item:
                raise ValueError(f"env {key!r} must not contain NUL characters")
        return value

    @model_validator(mode="after")
    def _source(self) -> DeploymentSpec:
        if (self.service is None) == (self.from_job is None):
            raise ValueError("set exactly one of service and from_job")
        return self

    def service_ref(self) -> str:
        """The ``module:Class`` a replica runs."""
        return self.service or PREDICTOR_SERVICE


def replica_command(spec: DeploymentSpec, host: str, port: int) -> list[str]:
    """The argv a replica runs with; its cwd is the unpacked snapshot (or any folder)."""
    return [
        sys.executable,
        "-m",
        "kaon.serving.runtime",
        "--service",
        spec.service_ref(),
        "--host",
        host,
        "--port",
        str(port),
    ]


def replica_env(
    spec: DeploymentSpec, replica_id: str, model_dir: str | None = None
) -> dict[str, str]:
    """The variables Kaon adds to ``spec.env`` for one replica."""
    env = dict(spec.env)
    env[ENV_REPLICA_ID] = replica_id
    env[ENV_DEPLOYMENT] = spec.name
    if model_dir is not None:
        env[ENV_MODEL_DIR] = model_dir
    return env


class ReplicaStatus(enum.StrEnum):
    """Lifecycle of one replica, as the deployment reconciler drives it.

    STARTING -> READY <-> UNHEALTHY          (health probes pass / fail)
    STARTING | READY | UNHEALTHY -> STOPPING -> STOPPED
    STARTING | READY | UNHEALTHY -> FAILED   (the process exited on its own)

    Only READY replicas are published in the route table.
    """

    STARTING = "starting"  # launched; waiting for its first passing health check
    READY = "ready"  # serving traffic
    UNHEALTHY = "unhealthy"  # failed health checks; out of the route table
    STOPPING = "stopping"  # asked to stop; draining in-flight requests
    STOPPED = "stopped"  # gone, as asked
    FAILED = "failed"  # exited or crashed; the reconciler starts a new one with backoff

    def is_terminal(self) -> bool:
        return self in (ReplicaStatus.STOPPED, ReplicaStatus.FAILED)

    def can_become(self, new: ReplicaStatus) -> bool:
        return new in _REPLICA_NEXT[self]

    def check_transition(self, new: ReplicaStatus) -> None:
        if not self.can_become(new):
            raise IllegalTransitionError(f"a replica cannot go from {self.value} to {new.value}")


_ENDS = frozenset({ReplicaStatus.STOPPING, ReplicaStatus.FAILED})
_REPLICA_NEXT: dict[ReplicaStatus, frozenset[ReplicaStatus]] = {
    ReplicaStatus.STARTING: frozenset({ReplicaStatus.READY}) | _ENDS,
    ReplicaStatus.READY: frozenset({ReplicaStatus.UNHEALTHY}) | _ENDS,
    ReplicaStatus.UNHEALTHY: frozenset({ReplicaStatus.READY}) | _ENDS,
    ReplicaStatus.STOPPING: frozenset({ReplicaStatus.STOPPED, ReplicaStatus.FAILED}),
    ReplicaStatus.STOPPED: frozenset(),
    ReplicaStatus.FAILED: frozenset(),
}


# --- control plane -> gateway -------------------------------------------------------------


class Route(BaseModel):
    """Everything the gateway needs to serve one deployment, as of one moment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    replicas: list[str] = Field(
        default_factory=list, description="base URLs of READY replicas, e.g. http://10.0.0.5:9001"
    )
    token_hashes: list[str] = Field(
        default_factory=list,
        description="sha256 hex of every token allowed to call it (deployment and workspace)",
    )
    public: bool = False
    request_timeout_s: float = Field(default=60.0, gt=0)
    max_queue: int = Field(default=100, ge=0)
    max_concurrency: int = Field(default=64, ge=1, description="in-flight per replica")
    max_body_bytes: int = Field(default=10 * 2**20, ge=1)
    cold_start_timeout_s: float = Field(
        default=30.0, ge=0, description="how long a request waits for a first replica"
    )

    @field_validator("token_hashes")
    @classmethod
    def _hashes(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _SHA256.match(item):
                raise ValueError("token_hashes must be lowercase sha256 hex digests")
        return value

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith("http://"):
                raise ValueError(f"replica URL {url!r} must start with http://")
        return value

    @classmethod
    def from_spec(
        cls, spec: DeploymentSpec, replicas: list[str], token_hashes: list[str]
    ) -> Route:
        """The route for a stored deployment, its READY replicas and allowed token hashes."""
        return cls(
            name=spec.name,
            replicas=replicas,
            token_hashes=token_hashes,
            public=spec.public,
            request_timeout_s=spec.request_timeout_s,
            max_queue=spec.max_queue,
            max_concurrency=spec.max_concurrency,
            max_body_bytes=spec.max_body_bytes,
        )


class RouteTable(BaseModel):
    """The body of ``GET /api/v1/gateway/routes``: every deployment the gateway may serve.

    ``version`` grows whenever anything in the table changes; a gateway that already has
    that version skips the rebuild.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 0
    routes: list[Route] = Field(default_factory=list)


# --- gateway -> control plane -------------------------------------------------------------


class DeploymentLoad(BaseModel):
    """What one gateway saw of one deployment over the last window."""

    model_config = ConfigDict(extra="forbid")

    name: str
    in_flight: int = Field(ge=0, description="requests at a replica now")
    queued: int = Field(ge=0, description="requests waiting for a replica now")
    requests_per_s: float = Field(ge=0, description="arrivals per second over the window")
    p50_ms: float | None = Field(default=None, description="None when no request finished")
    p99_ms: float | None = None
    waiting_for_replica: bool = Field(
        default=False, description="requests are held because no replica is ready"
    )


class GatewayReport(BaseModel):
    """The body of ``POST /api/v1/gateway/report``, sent every second by each gateway.

    ``reason`` is ``"demand"`` for the immediate report sent when a request arrives for a
    deployment with no ready replica, so the control plane can start one at once.
    """

    model_config = ConfigDict(extra="forbid")

    gateway_id: str
    time: float = Field(description="unix time at the end of the window")
    window_s: float = Field(gt=0)
    reason: Literal["periodic", "demand"] = "periodic"
    deployments: list[DeploymentLoad] = Field(default_factory=list)
