"""``client.deployments``: serve models behind the gateway."""

from __future__ import annotations

import builtins
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaon.core.deployments import (
    DeploymentSpec,
    DeploymentStatus,
    DeploymentTokenCreated,
    DeploymentView,
)

if TYPE_CHECKING:
    from kaon.sdk.client import Client


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
        spec: DeploymentSpec | dict[str, Any] | None = None,
    ) -> DeploymentView:
        """From a folder and a ``module:Class`` service, or from a `kaon.train` job."""
        data = self._spec(spec or {}, path)
        data["name"] = name
        if service is not None:
            data["service"] = service
        if from_job is not None:
            data["from_job"] = from_job
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

    def create_token(self, name: str, token_name: str = "token") -> DeploymentTokenCreated:
        path = self._c.ws_path(f"/deployments/{name}/tokens")
        response = self._c.request("POST", path, json={"name": token_name})
        return DeploymentTokenCreated.model_validate(response.json())

    def wait_ready(self, name: str, timeout: float = 120.0) -> DeploymentView:
        """Poll until at least one replica is ready and the desired count is met."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.get(name)
            if view.status is DeploymentStatus.READY:
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"deployment {name} is {view.status} after {timeout} s: {view.message}"
                )
            time.sleep(0.2)
