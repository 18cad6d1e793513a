"""Prometheus metrics of one replica: requests, latency, in-flight, batch sizes and, for
streamed replies, time to first chunk, the gaps between chunks and chunks sent, per handler.

Each app owns its registry (not the global one), so several replicas can live in one test
process. Label children are looked up once per handler, not per request.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["HandlerMetrics", "ReplicaMetrics", "LATENCY_BUCKETS"]

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class HandlerMetrics:
    """The label children of one handler, bound once."""

    def __init__(self, metrics: ReplicaMetrics, handler: str) -> None:
        self._metrics = metrics
        self._handler = handler
        self.latency = metrics.latency.labels(handler)
        self.in_flight = metrics.in_flight.labels(handler)
        self.batch_size = metrics.batch_size.labels(handler)
        self.on_loop = metrics.on_loop.labels(handler)
        self.moves = metrics.moves.labels(handler)
        self.first_chunk = metrics.first_chunk.labels(handler)
        self.chunk_gap = metrics.chunk_gap.labels(handler)
        self.chunks = metrics.chunks.labels(handler)
        self._by_code: dict[int, Counter] = {}

    def observe(self, status: int, seconds: float) -> None:
        counter = self._by_code.get(status)
        if counter is None:
            counter = self._metrics.requests.labels(self._handler, str(status))
            self._by_code[status] = counter
        counter.inc()
        self.latency.observe(seconds)


class ReplicaMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "kaon_replica_requests", "Requests answered, by handler and status code.",
            ["handler", "code"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "kaon_replica_request_duration_seconds", "Time from body read to reply, by handler.",
            ["handler"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "kaon_replica_in_flight", "Requests being handled now, by handler.",
            ["handler"], registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "kaon_replica_batch_size", "Requests per call of a batched handler.",
            ["handler"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry,
        )  # fmt: skip

        self.on_loop = Gauge(
            "kaon_replica_handler_on_loop",
            "1: the handler runs on the event loop (async, or def found cheap); 0: in a thread.",
            ["handler"], registry=self.registry,
        )  # fmt: skip

        self.moves = Counter(
            "kaon_replica_handler_moves", "Moves of a def handler between the loop and a thread.",
            ["handler"], registry=self.registry,
        )  # fmt: skip

        self.first_chunk = Histogram(
            "kaon_replica_stream_first_chunk_seconds",
            "Streamed replies: time from the call to the first chunk (time to first token).",
            ["handler"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.chunk_gap = Histogram(
            "kaon_replica_stream_chunk_gap_seconds",
            "Streamed replies: time between two chunks (inter-token latency).",
            ["handler"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.chunks = Counter(
            "kaon_replica_stream_chunks", "Chunks streamed (its rate is chunks per second).",
            ["handler"], registry=self.registry,
        )  # fmt: skip

    def handler(self, name: str) -> HandlerMetrics:
        return HandlerMetrics(self, name)

    def render(self) -> bytes:
        return generate_latest(self.registry)
