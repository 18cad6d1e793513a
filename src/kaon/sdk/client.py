"""`kaon.Client`: the Python SDK over the REST API.

    >>> import kaon
    >>> client = kaon.Client()                     # URL and token from ~/.kaon/config.json
    >>> job = client.jobs.submit(["python", "train.py"], workdir=".", gpus=1, workers=2)
    >>> client.jobs.wait(job.id).status
    <JobStatus.SUCCEEDED: 'succeeded'>
    >>> print(client.jobs.logs(job.id))

HTTP errors come back as the same `kaon.core.errors` classes the server raised, so
``except NotFoundError`` works on either side.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from typing import Any

import httpx

from kaon.core.auth import WhoAmI
from kaon.core.errors import (
    AuthError,
    ConflictError,
    InvalidSpecError,
    KaonError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from kaon.core.quotas import QuotaSpec
from kaon.core.tls import ENV_CA_PEM, client_context, is_verify_failure
from kaon.sdk.admin import Nodes, Pools, Quotas, Tokens, Workspaces
from kaon.sdk.artifacts import Artifacts
from kaon.sdk.config import config_path, load_config
from kaon.sdk.deployments import Deployments
from kaon.sdk.jobs import Jobs
from kaon.sdk.models import Models
from kaon.sdk.secrets import Admin, Audit, Secrets

_ERRORS: dict[int, type[KaonError]] = {
    401: AuthError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidSpecError,
}


class ConnectionFailed(KaonError):
    """The control plane could not be reached."""


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text}
    message = str(body.get("detail") or response.reason_phrase)
    cls = _ERRORS.get(response.status_code, KaonError)
    if cls is InvalidSpecError:
        raise InvalidSpecError(message, field=body.get("field"))
    raise cls(message)


class Client:
    """A connection to a Kaon control plane. `url`, `token` and `workspace` default to
    ``KAON_URL``/``KAON_TOKEN``/``KAON_WORKSPACE``, then ``~/.kaon/config.json``."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        workspace: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        ca_file: str | None = None,
        verify: bool = True,
    ) -> None:
        """`ca_file`: the certificate an https URL is verified by (default: the config's
        ``ca_file``, then ``KAON_CA_PEM`` inside a job, then the system's trust store).
        `verify` False only for probes that send no token (`kaon up`'s health check)."""
        config = load_config()
        self.url = (url or config.url).rstrip("/")
        self.token = token if token is not None else config.token
        self.workspace = workspace or config.workspace
        self.ca_file = ca_file or config.ca_file
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            verify=self._verify() if verify else False,
        )
        self.jobs = Jobs(self)
        self.nodes = Nodes(self)
        self.tokens = Tokens(self)
        self.workspaces = Workspaces(self)
        self.quotas = Quotas(self)
        self.deployments = Deployments(self)
        self.pools = Pools(self)
        self.secrets = Secrets(self)
        self.models = Models(self)
        self.audit = Audit(self)
        self.admin = Admin(self)
        self.artifacts = Artifacts(self)

    def _verify(self) -> ssl.SSLContext | bool:
        if not self.url.startswith("https:"):
            return True
        pem = os.environ.get(ENV_CA_PEM)
        if self.ca_file or pem:
            return client_context(ca_file=self.ca_file, ca_pem=None if self.ca_file else pem)
        return True

    def _unreachable(self, e: httpx.TransportError) -> ConnectionFailed:
        if is_verify_failure(e):
            anchor = self.ca_file or "the system's trust store"
            return ConnectionFailed(
                f"the control plane at {self.url} presented a certificate that {anchor} does "
                f"not trust ({e}). If its certificate changed, get the new one from its "
                "operator (kaon up prints its SHA-256 fingerprint) and point KAON_CA_FILE, or "
                f"'ca_file' in {config_path()}, at it; otherwise this is not your control plane"
            )
        return ConnectionFailed(
            f"cannot reach the Kaon control plane at {self.url} ({e}); "
            "is it running? try 'kaon up'"
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise self._unreachable(e) from e
        _raise_for(response)
        return response

    def stream_text(self, path: str, params: dict[str, Any]) -> Iterator[str]:
        """A streamed GET (a followed log), as text while it arrives; no timeout."""
        with self._http.stream("GET", path, params=params, timeout=None) as response:
            if not response.is_success:
                response.read()
                _raise_for(response)
            yield from response.iter_text()

    def stream_bytes(self, path: str) -> Iterator[bytes]:
        """A streamed GET of a large body (a blob), as bytes while they arrive; no timeout."""
        with self._http.stream("GET", path, timeout=None) as response:
            if not response.is_success:
                response.read()
                _raise_for(response)
            yield from response.iter_raw()

    def whoami(self) -> WhoAmI:
        return WhoAmI.model_validate(self.request("GET", "/api/v1/whoami").json())

    def storage(self, workspace: str | None = None) -> dict[str, Any]:
        """The bytes the workspace stores (``used``: ``blobs`` and ``snapshots``) and its
        ``limit``, past which uploads are refused."""
        body: dict[str, Any] = self.request("GET", self.ws_path("/storage", workspace)).json()
        return body

    def healthy(self) -> bool:
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def ws_path(self, suffix: str, workspace: str | None = None) -> str:
        return f"/api/v1/workspaces/{workspace or self.workspace}{suffix}"


__all__ = ["Client", "ConnectionFailed", "QuotaSpec"]
