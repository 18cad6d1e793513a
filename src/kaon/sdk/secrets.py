"""``client.secrets``, ``client.audit`` and ``client.admin``: a workspace's secrets, the
audit log, and rotating the master key.

    >>> client.secrets.set("openai-key", "sk-...")       # never printed back
    >>> [s.name for s in client.secrets.list()]
    ['openai-key']
    >>> client.jobs.submit(["python", "call.py"], env={"API_KEY": {"secret": "openai-key"}})
    >>> client.audit.verify().ok
    True
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from kaon.core.secrets import (
    AuditRecordView,
    AuditVerification,
    RotationResult,
    SecretRef,
    SecretView,
)

if TYPE_CHECKING:
    from kaon.sdk.client import Client


def secret(name: str, file: bool = False) -> dict[str, Any]:
    """An env value that references a secret: ``env={"API_KEY": secret("openai-key")}``
    (the same as ``{"secret": "openai-key"}``); with ``file=True`` the variable holds the
    path of a file with the value (``{"secret": "tls-key", "file": true}``)."""
    return SecretRef(secret=name, file=file).model_dump()


class Secrets:
    def __init__(self, client: Client) -> None:
        self._c = client

    def set(self, name: str, value: str, workspace: str | None = None) -> SecretView:
        """Create the secret, or store a new version of it."""
        path = self._c.ws_path(f"/secrets/{name}", workspace)
        return SecretView.model_validate(
            self._c.request("PUT", path, json={"value": value}).json()
        )

    def list(self, workspace: str | None = None) -> list[SecretView]:
        path = self._c.ws_path("/secrets", workspace)
        return [SecretView.model_validate(s) for s in self._c.request("GET", path).json()]

    def delete(self, name: str, workspace: str | None = None) -> SecretView:
        path = self._c.ws_path(f"/secrets/{name}", workspace)
        return SecretView.model_validate(self._c.request("DELETE", path).json())


class Audit:
    def __init__(self, client: Client) -> None:
        self._c = client

    def list(
        self, workspace: str | None = None, since: datetime | None = None, limit: int = 1000
    ) -> list[AuditRecordView]:
        """Records, oldest first: every workspace's for an admin token, else the caller's
        workspaces' (`workspace` narrows it to one)."""
        params: dict[str, Any] = {"limit": limit}
        if workspace:
            params["workspace"] = workspace
        if since is not None:
            params["since"] = since.isoformat()
        rows = self._c.request("GET", "/api/v1/audit", params=params).json()
        return [AuditRecordView.model_validate(r) for r in rows]

    def verify(self) -> AuditVerification:
        """Walk the hash chain (admin); `ok` False names the first record that breaks it."""
        data = self._c.request("GET", "/api/v1/audit/verify").json()
        return AuditVerification.model_validate(data)


class Admin:
    def __init__(self, client: Client) -> None:
        self._c = client

    def rotate_master_key(self) -> RotationResult:
        """Re-wrap every workspace's data key under a new master key (admin)."""
        data = self._c.request("POST", "/api/v1/admin/rotate-master-key").json()
        return RotationResult.model_validate(data)
