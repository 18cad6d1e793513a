"""The wire protocol between the control plane and its gateways.

```
 control plane --RouteTable (GET /api/v1/gateway/routes)--> gateway --> replicas
 control plane <--GatewayReport (POST /api/v1/gateway/report)-- gateway
```

The control plane publishes every deployment's READY replicas as a `RouteTable`; each
gateway polls it and routes requests. Each gateway in turn reports the load it sees as a
`GatewayReport` every second (and at once, with ``reason="demand"``, when a request
arrives for a deployment with no ready replica), which feeds the autoscaler.

Tokens never travel in plaintext: a route carries sha256 hex digests
(`kaon.core.tokens.hash_token`), and the gateway hashes the bearer it receives. The one
secret a route does carry is each replica's own credential (``replica_keys``), which the
gateway must send as it is; the table is served only to the gateway's token.

Deployment names are unique within a workspace, so the gateway and the control plane know a
deployment by its key, ``{workspace}/{name}`` (`deployment_key`): the route table, the
gateway's paths and metrics, and every load report use it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kaon.core.validation import MAX_SECONDS, is_sha256

# --- control plane -> gateway -------------------------------------------------------------


def deployment_key(workspace: str, name: str) -> str:
    """How the gateway and the control plane know a deployment: ``{workspace}/{name}``,
    also its canonical gateway path. A route of no workspace (a table set in code, for
    tests and benchmarks) is known by its name alone."""
    return f"{workspace}/{name}" if workspace else name


class Route(BaseModel):
    """Everything the gateway needs to serve one deployment, as of one moment."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    name: str
    workspace: str = Field(
        default="", description="the workspace's name: the route's path is /{workspace}/{name}"
    )
    replicas: list[str] = Field(
        default_factory=list, description="base URLs of READY replicas, e.g. http://10.0.0.5:9001"
    )
    token_hashes: list[str] = Field(
        default_factory=list,
        description="sha256 hex of every token allowed to call it (deployment and workspace)",
    )
    replica_keys: dict[str, str] = Field(
        default_factory=dict,
        description="replica URL -> the credential the gateway adds to each request it "
        "forwards there (`kaon.core.replicas.REPLICA_KEY_HEADER`); a replica without one "
        "gets none",
    )
    public: bool = False
    request_timeout_s: float = Field(default=60.0, gt=0)
    max_queue: int = Field(default=100, ge=0)
    max_concurrency: int = Field(default=64, ge=1, description="in-flight per replica")
    max_body_bytes: int = Field(default=10 * 2**20, ge=1)
    cold_start_timeout_s: float = Field(
        default=30.0, ge=0, description="how long a request waits for a first replica"
    )

    @property
    def key(self) -> str:
        return deployment_key(self.workspace, self.name)

    @field_validator("token_hashes")
    @classmethod
    def _hashes(cls, value: list[str]) -> list[str]:
        return _sha256s(value)

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith("http://"):
                raise ValueError(f"replica URL {url!r} must start with http://")
        return value

    @field_validator("replica_keys")
    @classmethod
    def _replica_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value.values():  # it goes into a header line as it is
            if not key or not key.isascii() or not key.isprintable() or " " in key:
                raise ValueError("replica keys must be printable ASCII without spaces")
        return value


class RouteTable(BaseModel):
    """The body of ``GET /api/v1/gateway/routes``: every deployment the gateway may serve.

    ``version`` grows whenever anything in the table changes; a gateway that already has
    that version skips the rebuild.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    version: int = 0
    routes: list[Route] = Field(default_factory=list)
    metrics_token_hashes: list[str] = Field(
        default_factory=list,
        description="sha256 hex of the tokens that see every deployment on the gateway's "
        "/metrics (the instance admin's); any other token sees the deployments it may call",
    )

    @field_validator("metrics_token_hashes")
    @classmethod
    def _hashes(cls, value: list[str]) -> list[str]:
        return _sha256s(value)


def _sha256s(value: list[str]) -> list[str]:
    if not all(is_sha256(item) for item in value):
        raise ValueError("token hashes must be lowercase sha256 hex digests")
    return value


# --- gateway -> control plane -------------------------------------------------------------


class DeploymentLoad(BaseModel):
    """What one gateway saw of one deployment over the last window."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str
    workspace: str = Field(default="", description="the workspace's name, as in the route")
    in_flight: int = Field(ge=0, le=2**31, description="requests at a replica now")
    queued: int = Field(ge=0, le=2**31, description="requests waiting for a replica now")
    requests_per_s: float = Field(ge=0, le=1e12, description="arrivals per second over the window")
    p50_ms: float | None = Field(default=None, description="None when no request finished")
    p99_ms: float | None = None
    errors_per_s: float = Field(
        default=0.0, ge=0, le=1e12, description="answers with a 5xx status per second"
    )
    waiting_for_replica: bool = Field(
        default=False, description="requests are held because no replica is ready"
    )

    @property
    def key(self) -> str:
        return deployment_key(self.workspace, self.name)


class GatewayReport(BaseModel):
    """The body of ``POST /api/v1/gateway/report``, sent every second by each gateway.

    ``reason`` is ``"demand"`` for the immediate report sent when a request arrives for a
    deployment with no ready replica, so the control plane can start one at once.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    gateway_id: str
    time: float = Field(ge=0, le=2**40, description="unix time at the end of the window")
    window_s: float = Field(gt=0, le=MAX_SECONDS)
    reason: Literal["periodic", "demand"] = "periodic"
    deployments: list[DeploymentLoad] = Field(default_factory=list)
