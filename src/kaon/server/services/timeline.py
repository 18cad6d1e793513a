"""A short history of each deployment's traffic and scaling, for the console's charts.

The gateways report each deployment's load every second (`kaon.core.gateway`) and the
autoscaler decides replica counts from it; both are snapshots that the next one replaces.
This keeps the last `SAMPLES` seconds of reports (request rate, p50/p99 latency, errors)
and the last `EVENTS` scaling decisions per deployment, in the control plane's memory:
bounded, cheap, and forgotten on a restart (the charts start again from the next report).
Prometheus (`/metrics` of each gateway) is where long histories belong.

Time is passed in (unix seconds), never read, like `kaon.autoscaling.LoadBoard`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pydantic import BaseModel

from kaon.core.gateway import GatewayReport

SAMPLES = 600  # seconds of traffic kept per deployment (one sample a second)
EVENTS = 100  # scaling decisions kept per deployment


class TrafficSample(BaseModel):
    """One second of a deployment's traffic, summed over the gateways that reported in it
    (latencies: the slowest gateway's percentile, an upper bound)."""

    time: float
    requests_per_s: float
    errors_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    in_flight: int
    queued: int


class ScalingEvent(BaseModel):
    """The autoscaler changed a deployment's wanted replica count, and why."""

    time: float
    replicas_before: int
    replicas_after: int
    reason: str


class DeploymentTimelineView(BaseModel):
    """What the console charts: `window_s` seconds of traffic at most, oldest first."""

    name: str
    window_s: int
    samples: list[TrafficSample]
    scaling: list[ScalingEvent]


@dataclass
class _History:
    samples: deque[TrafficSample]
    events: deque[ScalingEvent]


def _merge(a: TrafficSample, b: TrafficSample) -> TrafficSample:
    """Two gateways' reports of the same second: rates add up, percentiles take the worse."""

    def worse(x: float | None, y: float | None) -> float | None:
        return y if x is None else x if y is None else max(x, y)

    return TrafficSample(
        time=a.time,
        requests_per_s=a.requests_per_s + b.requests_per_s,
        errors_per_s=a.errors_per_s + b.errors_per_s,
        p50_ms=worse(a.p50_ms, b.p50_ms),
        p99_ms=worse(a.p99_ms, b.p99_ms),
        in_flight=a.in_flight + b.in_flight,
        queued=a.queued + b.queued,
    )


class DeploymentTimeline:
    """The last `samples` seconds of traffic and `events` scaling decisions per deployment,
    by its key, ``{workspace}/{name}`` (`kaon.core.gateway.deployment_key`)."""

    def __init__(self, samples: int = SAMPLES, events: int = EVENTS) -> None:
        self._samples = samples
        self._events = events
        self._by_name: dict[str, _History] = {}

    def _history(self, name: str) -> _History:
        found = self._by_name.get(name)
        if found is None:
            found = _History(deque(maxlen=self._samples), deque(maxlen=self._events))
            self._by_name[name] = found
        return found

    def record(self, report: GatewayReport, now: float) -> None:
        """A gateway's periodic report (a 'demand' report is a nudge, not a window)."""
        if report.reason != "periodic":
            return
        second = float(int(now))
        for d in report.deployments:
            sample = TrafficSample(
                time=second,
                requests_per_s=d.requests_per_s,
                errors_per_s=d.errors_per_s,
                p50_ms=d.p50_ms,
                p99_ms=d.p99_ms,
                in_flight=d.in_flight,
                queued=d.queued,
            )
            samples = self._history(d.key).samples
            if samples and samples[-1].time == second:
                samples[-1] = _merge(samples[-1], sample)
            else:
                samples.append(sample)

    def scaled(self, name: str, before: int, after: int, reason: str, now: float) -> None:
        self._history(name).events.append(
            ScalingEvent(time=now, replicas_before=before, replicas_after=after, reason=reason)
        )

    def forget(self, name: str) -> None:
        """A deleted deployment's history (a new one of the same name starts afresh)."""
        self._by_name.pop(name, None)

    def view(self, key: str, name: str) -> DeploymentTimelineView:
        """The history of deployment `key` (``{workspace}/{name}``), shown as `name`."""
        found = self._by_name.get(key)
        return DeploymentTimelineView(
            name=name,
            window_s=self._samples,
            samples=list(found.samples) if found else [],
            scaling=list(found.events) if found else [],
        )
