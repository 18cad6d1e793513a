"""``client.models``: the model registry of a workspace.

>>> v = client.models.register("churn", from_job="j-3f9c2a7b1d04", alias="production")
>>> v.ref, v.metrics["loss"]
('churn:1', 0.21)
>>> client.models.set_alias("churn", "production", 2)   # deployments following it roll
>>> client.deployments.create("churn", model="churn:production")
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaon.core.registry import ModelVersionView, ModelView, parse_model_ref

if TYPE_CHECKING:
    from kaon.sdk.client import Client


class Models:
    def __init__(self, client: Client) -> None:
        self._c = client

    def register(
        self,
        name: str,
        *,
        from_job: str | None = None,
        artifact: str | None = None,
        alias: str | None = None,
        description: str | None = None,
        workspace: str | None = None,
    ) -> ModelVersionView:
        """A new version of `name`: a succeeded job's checkpoints, or an artifact already
        stored (``NAME`` or ``NAME:VERSION``); `alias` points at it at once."""
        body: dict[str, Any] = {"from_job": from_job, "artifact": artifact}
        if alias is not None:
            body["alias"] = alias
        if description is not None:
            body["description"] = description
        path = self._c.ws_path(f"/models/{name}/versions", workspace)
        return ModelVersionView.model_validate(self._c.request("POST", path, json=body).json())

    def push(
        self,
        name: str,
        folder: str | Path,
        *,
        alias: str | None = None,
        description: str | None = None,
        workspace: str | None = None,
    ) -> ModelVersionView:
        """A local folder (a Hugging Face ``save_pretrained`` folder, say) as the next
        version of `name`: uploaded as an artifact of kind ``model``, then registered."""
        stored = self._c.artifacts.push(
            name, folder, kind="model", metadata={"model": name}, workspace=workspace
        )
        return self.register(
            name, artifact=stored.ref, alias=alias, description=description, workspace=workspace
        )

    def list(self, workspace: str | None = None) -> builtins.list[ModelView]:
        path = self._c.ws_path("/models", workspace)
        return [ModelView.model_validate(m) for m in self._c.request("GET", path).json()]

    def get(self, name: str, workspace: str | None = None) -> ModelView:
        """The model with its versions (newest first) and aliases."""
        path = self._c.ws_path(f"/models/{name}", workspace)
        return ModelView.model_validate(self._c.request("GET", path).json())

    def set_alias(
        self, name: str, alias: str, version: int, workspace: str | None = None
    ) -> ModelView:
        """Point `alias` at `version`; deployments that follow the alias roll to it."""
        path = self._c.ws_path(f"/models/{name}/aliases/{alias}", workspace)
        data = self._c.request("PUT", path, json={"version": version}).json()
        return ModelView.model_validate(data)

    def remove_alias(self, name: str, alias: str, workspace: str | None = None) -> ModelView:
        path = self._c.ws_path(f"/models/{name}/aliases/{alias}", workspace)
        return ModelView.model_validate(self._c.request("DELETE", path).json())

    def delete(self, ref: str, workspace: str | None = None) -> ModelVersionView:
        """Delete one version, ``NAME:VERSION`` (refused while an alias or a deployment
        uses it)."""
        name, version, _ = parse_model_ref(ref)
        if version is None:
            raise ValueError(f"delete needs NAME:VERSION, not {ref!r}")
        path = self._c.ws_path(f"/models/{name}/versions/{version}", workspace)
        return ModelVersionView.model_validate(self._c.request("DELETE", path).json())
