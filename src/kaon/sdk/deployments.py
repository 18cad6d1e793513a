"""``client.deployments``: serve models behind the gateway."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaon.core.auth import DeploymentTokenView
from kaon.core.deployments import (
    DeploymentSpec,
    DeploymentStatus,
    DeploymentTokenCreated,
    DeploymentView,
    HandlerReply,
    ReplicaView,
)
from kaon.core.errors import KaonError
from kaon.core.replicas import ReplicaStatus

if TYPE_CHECKING:
    from kaon.sdk.client import Client

Progress = Callable[[DeploymentView], None]


class DeploymentFailedError(KaonError):
    """A replica of the generation being waited for crashed and none of it is ready, so
    waiting longer would only watch a crash loop. `replica` is the newest crashed one:
    ``client.deployments.logs(name, error.replica.job_id)`` holds its traceback."""

    def __init__(self, view: DeploymentView, replica: ReplicaView) -> None:
        super().__init__(
            f"deployment {view.name} is failing: replica {replica.job_id} crashed"
            f" ({replica.message or 'no reason given'})"
        )
        self.view = view
        self.replica = replica


def gateway_path(view: DeploymentView) -> str:
    """Where the gateway serves a deployment: ``/{workspace}/{name}``, its handlers below.
    Names are unique within a workspace only, so this is the path that always means this
    deployment (the short form ``/{name}`` works while the name is unambiguous among the
    deployments a token may call)."""
    return f"/{view.workspace}/{view.name}"


def crashed_replica(view: DeploymentView) -> ReplicaView | None:
    """The newest crashed replica of the current generation when none of it is ready.

    This, not the `failing` status alone, is what ends a wait: the status also counts
    crashes of older generations (an update that fixes a crash loop starts out failing),
    and while old replicas still serve, a rollout whose new replicas crash stays
    `updating`. A create's replicas are all of its first generation, so there the two
    agree: the first crash with nothing ready."""
    current = [r for r in view.replicas if r.generation == view.generation]
    if any(r.state is ReplicaStatus.READY for r in current):
        return None
    crashed = [r for r in current if r.state is ReplicaStatus.FAILED]
    return max(crashed, key=lambda r: r.created_at, default=None)


def _settled(view: DeploymentView) -> bool:
    """Nothing left to wait for: ready, or scaled to zero with no replica live."""
    if view.status is DeploymentStatus.READY:
        return True
    idle = view.status is DeploymentStatus.SCALED_TO_ZERO and view.desired_replicas == 0
    return idle and not any(r.state.is_live() for r in view.replicas)


class Deployments:
    """Serve models: ``client.deployments.create(name, path=".", service="app:Model")``."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def _spec(
        self, spec: DeploymentSpec | dict[str, Any], path: str | Path | None
    ) -> dict[str, Any]:
        data = (
            spec.model_dump(exclude_unset=True) if isinstance(spec, DeploymentSpec) else dict(spec)
        )
        if path is not None:
            data["snapshot"] = self._c.jobs.upload(path)
        return data

    def create(
        self,
        name: str,
        *,
        service: str | None = None,
        path: str | Path | None = None,
        from_job: str | None = None,
        model: str | None = None,
        spec: DeploymentSpec | dict[str, Any] | None = None,
    ) -> DeploymentView:
        """From a folder and a ``module:Class`` service, from a `kaon.train` job, or from
        the model registry (``model="churn:production"`` follows the alias)."""
        data = self._spec(spec or {}, path)
        data["name"] = name
        if service is not None:
            data["service"] = service
        if from_job is not None:
            data["from_job"] = from_job
        if model is not None:
            data["model"] = model
        response = self._c.request("POST", self._c.ws_path("/deployments"), json=data)
        return DeploymentView.model_validate(response.json())

    def update(
        self, name: str, spec: DeploymentSpec | dict[str, Any], path: str | Path | None = None
    ) -> DeploymentView:
        """Replace the spec; replicas roll one at a time with no failed request."""
        data = self._spec(spec, path)
        data["name"] = name
        response = self._c.request("PUT", self._c.ws_path(f"/deployments/{name}"), json=data)
        return DeploymentView.model_validate(response.json())

    def get(self, name: str) -> DeploymentView:
        response = self._c.request("GET", self._c.ws_path(f"/deployments/{name}"))
        return DeploymentView.model_validate(response.json())

    def list(self) -> builtins.list[DeploymentView]:
        response = self._c.request("GET", self._c.ws_path("/deployments"))
        return [DeploymentView.model_validate(d) for d in response.json()]

    def delete(self, name: str) -> DeploymentView:
        response = self._c.request("DELETE", self._c.ws_path(f"/deployments/{name}"))
        return DeploymentView.model_validate(response.json())

    def logs(self, name: str, replica: str | None = None) -> str:
        params = {"replica": replica} if replica else {}
        path = self._c.ws_path(f"/deployments/{name}/logs")
        return self._c.request("GET", path, params=params).text

    def call(self, name: str, handler: str, body: Any = None) -> HandlerReply:
        """Call a handler through the gateway, as the console's form does: the control plane
        forwards it with this client's token (a quick check; clients in production call
        the gateway themselves)."""
        path = self._c.ws_path(f"/deployments/{name}/try")
        response = self._c.request("POST", path, json={"handler": handler, "body": body})
        return HandlerReply.model_validate(response.json())

    def create_token(self, name: str, token_name: str = "token") -> DeploymentTokenCreated:
        path = self._c.ws_path(f"/deployments/{name}/tokens")
        response = self._c.request("POST", path, json={"name": token_name})
        return DeploymentTokenCreated.model_validate(response.json())

    def list_tokens(self, name: str) -> builtins.list[DeploymentTokenView]:
        """A deployment's tokens by name and prefix (never their secrets)."""
        response = self._c.request("GET", self._c.ws_path(f"/deployments/{name}/tokens"))
        return [DeploymentTokenView.model_validate(t) for t in response.json()]

    def revoke_token(self, name: str, ref: str) -> DeploymentTokenView:
        """Revoke a deployment's token by id or name; the gateway refuses it from then on."""
        path = self._c.ws_path(f"/deployments/{name}/tokens/{ref}")
        return DeploymentTokenView.model_validate(self._c.request("DELETE", path).json())

    def wait_ready(
        self, name: str, timeout: float = 120.0, on_progress: Progress | None = None
    ) -> DeploymentView:
        """Poll until the current generation is rolled out and ready (or scaled to zero).

        Raises `DeploymentFailedError` as soon as a replica of the current generation
        has crashed with none of it ready, and `TimeoutError` after `timeout` seconds.
        `on_progress` is called with every view polled, to show what it waits for."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.get(name)
            if on_progress is not None:
                on_progress(view)
            if _settled(view):
                return view
            crashed = crashed_replica(view)
            if crashed is not None:
                raise DeploymentFailedError(view, crashed)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"deployment {name} is {view.status} after {timeout:g} s: {view.message}"
                )
            time.sleep(0.2)
