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

import builtins
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from kaon.core.auth import CreatedToken, TokenView, WhoAmI, WorkspaceView
from kaon.core.deployments import DeploymentSpec, DeploymentTokenCreated, DeploymentView
from kaon.core.errors import (
    AuthError,
    ConflictError,
    InvalidSpecError,
    KaonError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from kaon.core.jobs import JobSpec, JobStatus, JobView, MetricView
from kaon.core.nodes import NodeView
from kaon.core.quotas import QuotaSpec, QuotaView
from kaon.sdk.config import load_config
from kaon.sdk.snapshot import pack

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
    ) -> None:
        config = load_config()
        self.url = (url or config.url).rstrip("/")
        self.token = token if token is not None else config.token
        self.workspace = workspace or config.workspace
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )
        self.jobs = Jobs(self)
        self.nodes = Nodes(self)
        self.tokens = Tokens(self)
        self.workspaces = Workspaces(self)
        self.quotas = Quotas(self)
        self.deployments = Deployments(self)

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
            raise ConnectionFailed(
                f"cannot reach the Kaon control plane at {self.url} ({e}); "
                "is it running? try 'kaon up'"
            ) from e
        _raise_for(response)
        return response

    def whoami(self) -> WhoAmI:
        return WhoAmI.model_validate(self.request("GET", "/api/v1/whoami").json())

    def healthy(self) -> bool:
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def ws_path(self, suffix: str, workspace: str | None = None) -> str:
        return f"/api/v1/workspaces/{workspace or self.workspace}{suffix}"


class Jobs:
    """Submit, watch and manage jobs: ``client.jobs``."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def upload(self, folder: str | Path, limit: int = 100 * 2**20) -> str:
        """Upload a folder snapshot (once per content) and return its SHA-256."""
        data, sha = pack(Path(folder), limit)
        try:
            self._c.request("HEAD", self._c.ws_path(f"/snapshots/{sha}"))
            return sha
        except NotFoundError:
            pass
        response = self._c.request(
            "POST",
            self._c.ws_path("/snapshots"),
            content=data,
            headers={"Content-Type": "application/gzip"},
        )
        return str(response.json()["sha256"])

    def submit(
        self,
        command: list[str] | None = None,
        *,
        spec: JobSpec | dict[str, Any] | None = None,
        workdir: str | Path | None = None,
        name: str | None = None,
        env: dict[str, str] | None = None,
        cpu: float | None = None,
        memory: str | int | None = None,
        gpus: int | None = None,
        workers: int | None = None,
        max_retries: int | None = None,
        timeout_s: float | None = None,
        priority: int | None = None,
    ) -> JobView:
        """Submit a job from a spec, keyword arguments, or both (keywords win)."""
        data: dict[str, Any] = {}
        if spec is not None:
            data = spec.model_dump(exclude_unset=True) if isinstance(spec, JobSpec) else dict(spec)
        resources: dict[str, Any] = dict(data.get("resources") or {})
        sizes: tuple[tuple[str, Any], ...] = (("cpu", cpu), ("memory", memory), ("gpus", gpus))
        for key, value in sizes:
            if value is not None:
                resources[key] = value
        if resources:
            data["resources"] = resources
        fields: tuple[tuple[str, Any], ...] = (
            ("command", command),
            ("name", name),
            ("env", env),
            ("workers", workers),
            ("max_retries", max_retries),
            ("timeout_s", timeout_s),
            ("priority", priority),
        )
        for key, value in fields:
            if value is not None:
                data[key] = value
        if workdir is not None:
            data["snapshot"] = self.upload(workdir)
        response = self._c.request("POST", self._c.ws_path("/jobs"), json=data)
        return JobView.model_validate(response.json())

    def get(self, job_id: str) -> JobView:
        return JobView.model_validate(
            self._c.request("GET", self._c.ws_path(f"/jobs/{job_id}")).json()
        )

    def list(self, status: Sequence[JobStatus] | None = None, limit: int = 100) -> list[JobView]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = [s.value for s in status]
        response = self._c.request("GET", self._c.ws_path("/jobs"), params=params)
        return [JobView.model_validate(j) for j in response.json()]

    def cancel(self, job_id: str) -> JobView:
        response = self._c.request("POST", self._c.ws_path(f"/jobs/{job_id}/cancel"))
        return JobView.model_validate(response.json())

    def logs(self, job_id: str, worker: int = 0) -> str:
        response = self._c.request(
            "GET", self._c.ws_path(f"/jobs/{job_id}/logs"), params={"worker": worker}
        )
        return response.text

    def follow(self, job_id: str, worker: int = 0) -> Iterator[str]:
        """Yield log text as it is written, until the job ends."""
        path = self._c.ws_path(f"/jobs/{job_id}/logs")
        params: dict[str, Any] = {"worker": worker, "follow": True}
        with self._c._http.stream("GET", path, params=params, timeout=None) as response:
            if not response.is_success:
                response.read()
                _raise_for(response)
            yield from response.iter_text()

    def metrics(self, job_id: str, name: str | None = None) -> builtins.list[MetricView]:
        params = {"name": name} if name else {}
        response = self._c.request(
            "GET", self._c.ws_path(f"/jobs/{job_id}/metrics"), params=params
        )
        return [MetricView.model_validate(m) for m in response.json()]

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll_s: float = 0.1,
        on_update: Callable[[JobView], None] | None = None,
    ) -> JobView:
        """Poll until the job ends. Raises TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll_s
        while True:
            job = self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job.is_done():
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status.value} after {timeout} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)


class Nodes:
    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self) -> list[NodeView]:
        return [NodeView.model_validate(n) for n in self._c.request("GET", "/api/v1/nodes").json()]


class Tokens:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(
        self, name: str, workspaces: list[str] | None = None, role: str = "member"
    ) -> CreatedToken:
        body = {"name": name, "workspaces": workspaces or [self._c.workspace], "role": role}
        return CreatedToken.model_validate(
            self._c.request("POST", "/api/v1/tokens", json=body).json()
        )

    def list(self) -> list[TokenView]:
        return [
            TokenView.model_validate(t) for t in self._c.request("GET", "/api/v1/tokens").json()
        ]

    def revoke(self, ref: str) -> TokenView:
        return TokenView.model_validate(self._c.request("DELETE", f"/api/v1/tokens/{ref}").json())


class Workspaces:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, name: str) -> WorkspaceView:
        return WorkspaceView.model_validate(
            self._c.request("POST", "/api/v1/workspaces", json={"name": name}).json()
        )

    def list(self) -> list[WorkspaceView]:
        return [
            WorkspaceView.model_validate(w)
            for w in self._c.request("GET", "/api/v1/workspaces").json()
        ]


class Quotas:
    """Workspace quotas: ``client.quotas.set("team-a", gpus=8, borrow_limit=8)``."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def set(
        self,
        workspace: str,
        gpus: float | None = None,
        cpus: float | None = None,
        memory: str | int | None = None,
        borrow_limit: float | None = None,
        borrow_cpus: float | None = None,
        borrow_memory: str | int | None = None,
    ) -> QuotaView:
        """Unset values are unlimited; `borrow_limit` is in GPUs."""
        body = {
            "gpus": gpus,
            "cpus": cpus,
            "memory": memory,
            "borrow_limit": borrow_limit,
            "borrow_cpus": borrow_cpus,
            "borrow_memory": borrow_memory,
        }
        response = self._c.request("PUT", f"/api/v1/quotas/{workspace}", json=body)
        return QuotaView.model_validate(response.json())

    def list(self) -> list[QuotaView]:
        return [
            QuotaView.model_validate(q) for q in self._c.request("GET", "/api/v1/quotas").json()
        ]

    def delete(self, workspace: str) -> None:
        self._c.request("DELETE", f"/api/v1/quotas/{workspace}")


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
            if view.status == "ready":
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"deployment {name} is {view.status} after {timeout} s: {view.message}"
                )
            time.sleep(0.2)


__all__ = ["Client", "ConnectionFailed", "QuotaSpec"]
