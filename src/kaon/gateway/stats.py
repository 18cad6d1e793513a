"""What the gateway measures per deployment: Prometheus series for people and dashboards,
and a rolling window (arrivals, latencies) summarised into each `DeploymentLoad` report for
the autoscaler.

The window is reset by each periodic report, so ``requests_per_s`` and the percentiles
describe the last second or so: recent enough to scale on, long enough not to be noise.

A deployment is known by its key, ``{workspace}/{name}`` (`kaon.core.gateway.deployment_key`):
that is the value of each series' ``deployment`` label, and `render` shows a caller the
series of the deployments it may call only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from kaon.core.gateway import DeploymentLoad
from kaon.gateway.routing import DeploymentState

__all__ = ["GatewayMetrics", "StreamSeries", "StreamTimer", "Window", "percentile"]

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class Window:
    """Arrivals and latencies of one deployment since the last reset."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.arrivals = 0
        self.errors = 0  # answers with a 5xx status
        self.latencies_s: list[float] = []

    def summary(self, state: DeploymentState, now: float) -> DeploymentLoad:
        elapsed = max(now - self.started, 1e-3)
        values = sorted(self.latencies_s)
        return DeploymentLoad(
            name=state.name,
            workspace=state.route.workspace,
            in_flight=state.in_flight,
            queued=state.queued,
            requests_per_s=self.arrivals / elapsed,
            p50_ms=percentile(values, 50) * 1000 if values else None,
            p99_ms=percentile(values, 99) * 1000 if values else None,
            errors_per_s=self.errors / elapsed,
            waiting_for_replica=state.waiting_for_replica,
        )


class _Series:
    """The bound label children of one deployment."""

    def __init__(self, metrics: GatewayMetrics, state: DeploymentState) -> None:
        name = state.key
        self._metrics = metrics
        self._name = name
        self.latency = metrics.latency.labels(name)
        self._by_code: dict[int, Counter] = {}
        metrics.in_flight.labels(name).set_function(lambda: state.in_flight)
        metrics.queued.labels(name).set_function(lambda: state.queued)

    def observe(self, status: int, seconds: float) -> None:
        counter = self._by_code.get(status)
        if counter is None:
            counter = self._metrics.requests.labels(self._name, str(status))
            self._by_code[status] = counter
        counter.inc()
        self.latency.observe(seconds)


class StreamSeries:
    """The streaming series of one deployment, bound once."""

    def __init__(self, metrics: GatewayMetrics, name: str) -> None:
        self.first_chunk = metrics.first_chunk.labels(name)
        self.chunk_gap = metrics.chunk_gap.labels(name)
        self.chunks = metrics.chunks.labels(name)


class StreamTimer:
    """Times one streamed reply: the first chunk from the request's arrival (time to first
    token, as the client sees it less the network), then the gaps between chunks."""

    def __init__(self, series: StreamSeries, started: float) -> None:
        self._series = series
        self._last = started
        self._first = True

    def chunk(self) -> None:
        now = time.perf_counter()
        if self._first:
            self._series.first_chunk.observe(now - self._last)
            self._first = False
        else:
            self._series.chunk_gap.observe(now - self._last)
        self._last = now
        self._series.chunks.inc()


class GatewayMetrics:
    """Per-deployment series on ``/metrics`` and the windows behind each report."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "kaon_gateway_requests", "Requests answered, by deployment and status code.",
            ["deployment", "code"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "kaon_gateway_request_duration_seconds", "Time in the gateway, queue included.",
            ["deployment"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "kaon_gateway_in_flight", "Requests at a replica now.",
            ["deployment"], registry=self.registry,
        )  # fmt: skip
        self.queued = Gauge(
            "kaon_gateway_queued", "Requests waiting for a replica now.",
            ["deployment"], registry=self.registry,
        )  # fmt: skip
        self.first_chunk = Histogram(
            "kaon_gateway_stream_first_chunk_seconds",
            "Streamed replies: arrival of the request to the first chunk out (time to first "
            "token).", ["deployment"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.chunk_gap = Histogram(
            "kaon_gateway_stream_chunk_gap_seconds",
            "Streamed replies: time between two chunks out (inter-token latency).",
            ["deployment"], buckets=(0.0005, *LATENCY_BUCKETS), registry=self.registry,
        )  # fmt: skip
        self.chunks = Counter(
            "kaon_gateway_stream_chunks", "Chunks streamed (its rate is chunks per second).",
            ["deployment"], registry=self.registry,
        )  # fmt: skip
        self._streams: dict[str, StreamSeries] = {}
        self._series: dict[str, _Series] = {}
        self._windows: dict[str, Window] = {}

    def attach(self, state: DeploymentState) -> None:
        if state.key not in self._series:
            self._series[state.key] = _Series(self, state)
            self._windows[state.key] = Window()

    def streams(self, key: str) -> StreamSeries:
        series = self._streams.get(key)
        if series is None:
            series = self._streams[key] = StreamSeries(self, key)
        return series

    def arrived(self, key: str) -> None:
        self._windows[key].arrivals += 1

    def answered(self, key: str, status: int, seconds: float) -> None:
        self._series[key].observe(status, seconds)
        window = self._windows[key]
        window.latencies_s.append(seconds)
        if status >= 500:
            window.errors += 1

    def loads(self, states: list[DeploymentState], reset: bool) -> list[DeploymentLoad]:
        now = time.monotonic()
        loads = [self._windows[s.key].summary(s, now) for s in states]
        if reset:
            for s in states:
                self._windows[s.key] = Window()
        return loads

    def render(self, keys: frozenset[str] | None = None) -> bytes:
        """The Prometheus text of every series, or of the deployments in `keys` only."""
        if keys is None:
            return generate_latest(self.registry)
        shown = CollectorRegistry(auto_describe=False)
        shown.register(_Only(self.registry, keys))
        return generate_latest(shown)


class _Only(Collector):
    """Another registry's metrics, with the samples of the deployments in `keys` only.
    Built per scrape: scrapes are seconds apart, requests are not."""

    def __init__(self, registry: CollectorRegistry, keys: frozenset[str]) -> None:
        self._registry = registry
        self._keys = keys

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = list(_samples_of(family.samples, self._keys))
            yield kept


def _samples_of(samples: Iterable[Sample], keys: frozenset[str]) -> Iterator[Sample]:
    return (s for s in samples if s.labels.get("deployment") in keys)
