"""``client.jobs``: submit, watch and manage jobs."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaon.core.errors import NotFoundError
from kaon.core.jobs import JobSpec, JobStatus, JobView, MetricView
from kaon.core.usage import JobUsage
from kaon.sdk.snapshot import pack

if TYPE_CHECKING:
    from kaon.sdk.client import Client


class Jobs:
    """Submit, watch and manage jobs: ``client.jobs``. Wherever a job id is taken, a unique
    prefix of one will do (``client.jobs.get("j-73f1")``)."""

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
        env: Mapping[str, str | dict[str, str]] | None = None,  # {"secret": NAME} too
        cpu: float | None = None,
        memory: str | int | None = None,
        gpus: int | None = None,
        workers: int | None = None,
        max_retries: int | None = None,
        timeout_s: float | None = None,
        priority: int | None = None,
        labels: dict[str, str] | None = None,
    ) -> JobView:
        """Submit a job from a spec, keyword arguments, or both (keywords win). `labels`
        are node labels the job's nodes must carry (``{"kaon.io/pool": "ray"}``)."""
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
            ("labels", labels),
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
        """Yield log text as it is written, until the job ends. A prefix of an id is
        resolved once, first: a job submitted meanwhile must not make it ambiguous."""
        path = self._c.ws_path(f"/jobs/{self.get(job_id).id}/logs")
        params: dict[str, Any] = {"worker": worker, "follow": True}
        yield from self._c.stream_text(path, params)

    def metrics(self, job_id: str, name: str | None = None) -> builtins.list[MetricView]:
        params = {"name": name} if name else {}
        response = self._c.request(
            "GET", self._c.ws_path(f"/jobs/{job_id}/metrics"), params=params
        )
        return [MetricView.model_validate(m) for m in response.json()]

    def usage(self, job_id: str) -> JobUsage:
        """CPU, memory and GPU use of each worker over time (``workers[i].series``) and
        its latest sample (``workers[i].latest``), as the workers' supervisors sampled
        them; GPU values are None where nothing could measure them."""
        response = self._c.request("GET", self._c.ws_path(f"/jobs/{job_id}/usage"))
        return JobUsage.model_validate(response.json())

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll_s: float = 0.1,
        on_update: Callable[[JobView], None] | None = None,
    ) -> JobView:
        """Poll until the job ends. Raises TimeoutError after `timeout` seconds. `job_id`
        may be a unique prefix; the first answer's full id is polled from then on."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll_s
        while True:
            job = self.get(job_id)
            job_id = job.id
            if on_update is not None:
                on_update(job)
            if job.is_done():
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status.value} after {timeout} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
