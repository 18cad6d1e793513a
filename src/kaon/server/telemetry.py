"""The control plane's Prometheus metrics, scraped at `/metrics` with an admin token.

Two kinds of numbers, measured two ways:

- **What happens in this process** (API latency and errors by route, how long each
  reconciler pass takes and how many fail) is measured as it happens, by an ASGI
  middleware and by timing each reconciler's `run_once`.
- **What the database knows** (jobs by state and workspace, preemptions, how long started
  jobs waited in the queue) is read from the database when Prometheus scrapes, since the
  database is the truth and several control planes may share one: a counter kept in memory
  would miss what another process did. Queue waits are observed once each, for jobs that
  started since the previous scrape.

Each app has its own registry (never prometheus_client's global one), so tests that start
many apps in one process do not collide.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kaon.core.jobs import JobStatus
from kaon.server.db.models import Job, Workspace, utcnow
from kaon.server.reconcilers.loop import Loop

UNMATCHED = "unmatched"  # every path no route matched: one label, not one per URL probed
# Queue waits range from milliseconds (an idle pool) to days (a busy one).
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 7 * 86400)
PASS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class DbSnapshot:
    """What the database said at the last scrape."""

    jobs: dict[tuple[str, str], int] = field(default_factory=dict)  # (workspace, state)
    preemptions: dict[str, int] = field(default_factory=dict)  # workspace -> total


class Telemetry(Collector):
    """The metrics of one control plane. `exposition(session)` refreshes what comes from
    the database and returns the text Prometheus reads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kaon_api_requests",
            "API requests answered, by route template and status code (errors: 4xx, 5xx)",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kaon_api_request_duration_seconds",
            "Time to the first byte of the answer, by route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.passes = Histogram(
            "kaon_reconciler_pass_seconds",
            "Duration of one reconciler pass (jobs: observe, schedule, launch)",
            ["reconciler"],
            buckets=PASS_BUCKETS,
            registry=self.registry,
        )
        self.pass_failures = Counter(
            "kaon_reconciler_pass_failures",
            "Reconciler passes that raised (the loop logs it and goes on)",
            ["reconciler"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "kaon_job_queue_wait_seconds",
            "Time from submission to start, observed once per started job",
            ["workspace"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(self)
        self._last_pass: dict[str, float] = {}
        self._born = time.monotonic()
        self._started_after: datetime = utcnow()  # queue waits already observed up to here
        self._snapshot = DbSnapshot()
        self._lock = asyncio.Lock()

    def watch(self, loop: Loop) -> None:
        """Time every pass of `loop`. Its `run_once` is wrapped on this one instance, so the
        reconcilers stay unaware of metrics and their tests step them unchanged."""
        inner = loop.run_once
        name = loop.name
        self._last_pass.setdefault(name, self._born)

        async def timed() -> bool:
            start = time.perf_counter()
            try:
                return await inner()
            except Exception:
                self.pass_failures.labels(name).inc()
                raise
            finally:
                self.passes.labels(name).observe(time.perf_counter() - start)
                self._last_pass[name] = time.monotonic()

        loop.run_once = timed  # type: ignore[method-assign]

    async def exposition(self, session: AsyncSession) -> bytes:
        async with self._lock:  # two scrapes at once must not observe a queue wait twice
            self._snapshot = await _read_snapshot(session)
            await self._observe_queue_waits(session)
            return generate_latest(self.registry)

    async def _observe_queue_waits(self, session: AsyncSession) -> None:
        rows = await session.execute(
            select(Workspace.name, Job.submitted_at, Job.started_at)
            .join(Workspace, Workspace.id == Job.workspace_id)
            .where(Job.started_at > self._started_after, Job.kind == "job")
        )
        for workspace, submitted, started in rows.tuples():
            assert started is not None
            waited = (started - submitted).total_seconds()
            self.queue_wait.labels(workspace).observe(max(0.0, waited))
            self._started_after = max(self._started_after, started)

    def collect(self) -> Iterable[Metric]:
        """The families read from the database, and each reconciler's lag."""
        jobs = GaugeMetricFamily(
            "kaon_jobs", "Jobs by workspace and state", labels=["workspace", "state"]
        )
        for (workspace, state), n in sorted(self._snapshot.jobs.items()):
            jobs.add_metric([workspace, state], n)
        preempted = CounterMetricFamily(
            "kaon_job_preemptions",
            "Times a job was preempted to make room for another",
            labels=["workspace"],
        )
        for workspace, n in sorted(self._snapshot.preemptions.items()):
            preempted.add_metric([workspace], n)
        lag = GaugeMetricFamily(
            "kaon_reconciler_lag_seconds",
            "Seconds since the reconciler last finished a pass (grows when it is stuck)",
            labels=["reconciler"],
        )
        now = time.monotonic()
        for name, at in sorted(self._last_pass.items()):
            lag.add_metric([name], now - at)
        return [jobs, preempted, lag]


async def _read_snapshot(session: AsyncSession) -> DbSnapshot:
    counts = await session.execute(
        select(Workspace.name, Job.status, func.count(), func.sum(Job.preemptions))
        .join(Workspace, Workspace.id == Job.workspace_id)
        .where(Job.kind == "job")
        .group_by(Workspace.name, Job.status)
    )
    jobs: dict[tuple[str, str], int] = {}
    preemptions: dict[str, int] = {}
    for workspace, state, n, preempted in counts.tuples():
        jobs[(workspace, state)] = n
        preemptions[workspace] = preemptions.get(workspace, 0) + int(preempted or 0)
    names = (await session.execute(select(Workspace.name))).scalars()
    for workspace in names:  # every state of every workspace, zeros included, so a
        for state in JobStatus:  # graph drops to 0 instead of vanishing
            jobs.setdefault((workspace, state.value), 0)
        preemptions.setdefault(workspace, 0)
    return DbSnapshot(jobs, preemptions)


class ApiMetrics:
    """ASGI middleware: count every answer by route template, method and status, and time
    it to its first byte (a followed log streams for hours; its latency is how soon it
    began)."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.telemetry.latency.labels(scope["method"], _route(scope)).observe(
                    time.perf_counter() - start
                )
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.telemetry.requests.labels(
                scope["method"], _route(scope), str(status or 500)
            ).inc()


def _route(scope: Scope) -> str:
    """The matched route's template (`/api/v1/workspaces/{workspace}/jobs/{job_id}`), so
    ids never become labels."""
    return str(getattr(scope.get("route"), "path", None) or UNMATCHED)
