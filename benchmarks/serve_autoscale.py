"""Autoscaling on a real arrival trace: the gateway, the pure policy and real replicas.

Replays the arrival times of the Azure LLM inference trace 2023 (code; 8,818 requests over
about an hour; CC-BY-4.0), compressed to ``--duration`` seconds, against a handler with a
fixed service time and a fixed concurrency per replica (a stand-in for a model that keeps
one accelerator busy). The pieces are the production ones, wired the phase-2 way:

- the gateway runs as its own process (``python -m kaon.gateway --control-plane ...``);
- a stand-in control plane in this process serves ``GET /api/v1/gateway/routes`` and takes
  ``POST /api/v1/gateway/report``;
- on each report, `kaon.gateway.autoscale.decide` picks the replica count, and a small
  driver starts replica processes (``python -m kaon.serving.runtime``) or stops them, and
  publishes the ready ones in the route table.

    .venv/bin/python benchmarks/serve_autoscale.py                  # ~3 minutes
    .venv/bin/python benchmarks/serve_autoscale.py --duration 60 --max-replicas 4

Reports p50/p99 latency, errors, replica-seconds and cold starts, and the replica-seconds
a fixed fleet sized for the peak would have used.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

import kaon
from kaon.core.deployments import GatewayReport, Route, RouteTable, ScalingPolicy, hash_token
from kaon.gateway.autoscale import ScalingState, decide, load_of
from kaon.gateway.upstream import UpstreamError, UpstreamPool

HERE = Path(__file__).resolve().parent
TRACE = HERE.parent / ".." / "shared" / "data" / "traces" / "azure_llm_code_2023.csv"
TOKEN = "bench-token"
GATEWAY_TOKEN = "bench-gateway"
HEADERS = f"authorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\n".encode()
BODY = b'{"x": [[0.5, -1.0]]}'
SERVICE_S = float(os.environ.get("BENCH_SERVICE_S", "0.1"))
CONCURRENCY = 2  # requests one replica serves at once: 20 req/s per replica at 100 ms


class FixedTime(kaon.Service):
    """A handler that takes SERVICE_S, at most CONCURRENCY at a time per replica."""

    @kaon.handler(max_concurrency=CONCURRENCY)
    def predict(self, x: list[list[float]]) -> list[float]:
        time.sleep(SERVICE_S)
        return [0.0 for _ in x]


def arrivals(path: Path, duration_s: float) -> list[float]:
    """Arrival offsets from the trace, scaled to fit `duration_s`."""
    with path.open() as f:
        stamps = [datetime.fromisoformat(row["TIMESTAMP"][:26]) for row in csv.DictReader(f)]
    start = stamps[0]
    offsets = [(s - start).total_seconds() for s in stamps]
    scale = duration_s / offsets[-1]
    return [o * scale for o in offsets]


# --- a stand-in control plane -----------------------------------------------------------


class ControlPlane:
    """Route table out, reports in: the two endpoints the gateway talks to."""

    def __init__(self) -> None:
        self.table = RouteTable(version=0, routes=[self._route([])])
        self.reports: queue.Queue[GatewayReport] = queue.Queue()
        self._lock = threading.Lock()

    def _route(self, replicas: list[str]) -> Route:
        return Route(
            name="trace",
            replicas=replicas,
            token_hashes=[hash_token(TOKEN)],
            max_concurrency=CONCURRENCY,
            max_queue=10_000,
            request_timeout_s=60,
            cold_start_timeout_s=60,
        )

    def publish(self, replicas: list[str]) -> None:
        with self._lock:
            self.table = RouteTable(version=self.table.version + 1, routes=[self._route(replicas)])

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route as Path_

        async def routes(_: Request) -> Response:
            with self._lock:
                body = self.table.model_dump_json()
            return Response(body, media_type="application/json")

        async def report(request: Request) -> Response:
            self.reports.put(GatewayReport.model_validate_json(await request.body()))
            return Response(status_code=204)

        return Starlette(
            routes=[
                Path_("/api/v1/gateway/routes", routes),
                Path_("/api/v1/gateway/report", report, methods=["POST"]),
            ]
        )


def serve_in_thread(app: Any, port: int) -> Any:
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server


# --- the replica pool -------------------------------------------------------------------


@dataclass
class ReplicaProc:
    proc: subprocess.Popen[bytes]
    url: str
    started: float
    ready_at: float | None = None
    stopped: float | None = None


@dataclass
class Pool:
    """Replica processes, started and stopped on the policy's word."""

    cp: ControlPlane
    replicas: list[ReplicaProc] = field(default_factory=list)
    retired: list[ReplicaProc] = field(default_factory=list)
    cold_starts: int = 0
    from_zero: int = 0
    ready_times: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.replicas)

    def scale_to(self, n: int) -> None:
        if self.count == 0 and n > 0:
            self.from_zero += 1
        while self.count < n:
            self._start()
        while self.count > n:
            self._stop(self._victim())

    def _start(self) -> None:
        from serve_compare import free_port  # same folder

        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "kaon.serving.runtime",
            "--service",
            "serve_autoscale:FixedTime",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        proc = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.DEVNULL)
        self.replicas.append(ReplicaProc(proc, f"http://127.0.0.1:{port}", time.monotonic()))
        self.cold_starts += 1

    def _victim(self) -> ReplicaProc:
        starting = [r for r in self.replicas if r.ready_at is None]
        return (starting or self.replicas)[-1]

    def _stop(self, r: ReplicaProc) -> None:
        self.replicas.remove(r)
        self.publish()  # out of the table first; SIGTERM drains what is in flight
        r.proc.send_signal(signal.SIGTERM)
        r.stopped = time.monotonic()
        self.retired.append(r)

    async def watch_ready(self, client: httpx.AsyncClient) -> None:
        while True:
            for r in [r for r in self.replicas if r.ready_at is None]:
                try:
                    if (await client.get(f"{r.url}/ready", timeout=0.5)).status_code == 200:
                        r.ready_at = time.monotonic()
                        self.ready_times.append(r.ready_at - r.started)
                        self.publish()
                except httpx.HTTPError:
                    pass
            await asyncio.sleep(0.05)

    def publish(self) -> None:
        self.cp.publish([r.url for r in self.replicas if r.ready_at is not None])

    def replica_seconds(self, end: float) -> float:
        every = self.replicas + self.retired
        return sum((r.stopped or end) - r.started for r in every)

    def shutdown(self) -> None:
        for r in self.replicas:
            r.proc.send_signal(signal.SIGTERM)
        for r in self.replicas + self.retired:
            try:
                r.proc.wait(10)
            except subprocess.TimeoutExpired:
                r.proc.kill()


# --- the run ----------------------------------------------------------------------------


async def autoscaler(cp: ControlPlane, pool: Pool, policy: ScalingPolicy, log: list[Any]) -> None:
    state = ScalingState(replicas=0)
    while True:
        try:
            report = cp.reports.get_nowait()
        except queue.Empty:
            await asyncio.sleep(0.05)
            continue
        loads = [d for d in report.deployments if d.name == "trace"]
        now = time.monotonic()
        decision = decide(policy, state.observe(load_of(loads), replicas=pool.count), now)
        state = decision.state
        if decision.replicas != pool.count:
            log.append((now, pool.count, decision.replicas, decision.reason))
            pool.scale_to(decision.replicas)


async def fire(pool: UpstreamPool, port: int, results: list[tuple[float, int]]) -> None:
    start = time.perf_counter()
    try:
        reply = await pool.request("127.0.0.1", port, "POST", b"/trace/predict", HEADERS, BODY)
        status = reply.status
    except UpstreamError:
        status = 0
    results.append((time.perf_counter() - start, status))


async def replay(
    offsets: list[float], port: int, helpers: list[asyncio.Task[None]]
) -> list[tuple[float, int]]:
    """Send one request at each offset, on the gateway's own lean client: an httpx client
    cannot open hundreds of connections a second on two busy cores."""
    results: list[tuple[float, int]] = []
    pool = UpstreamPool()
    start = time.monotonic()
    tasks = []
    for offset in offsets:
        delay = start + offset - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for helper in helpers:
            if helper.done():  # a crashed driver must not leave requests hanging
                helper.result()
        tasks.append(asyncio.create_task(fire(pool, port, results)))
    await asyncio.gather(*tasks)
    pool.close()
    return results


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def run(args: argparse.Namespace) -> None:
    from serve_compare import free_port, spawn, stop, wait_http

    offsets = arrivals(Path(args.trace), args.duration)
    low = args.fixed or 0  # --fixed N: N warm replicas all along, for comparison
    policy = ScalingPolicy(
        min_replicas=low,
        max_replicas=args.fixed or args.max_replicas,
        target_in_flight=CONCURRENCY,
        scale_up_delay_s=1,
        scale_down_delay_s=10,
        scale_to_zero_after_s=20,
    )
    cp = ControlPlane()
    cp_port, gw_port = free_port(), free_port()
    server = serve_in_thread(cp.app(), cp_port)
    cp_url = f"http://127.0.0.1:{cp_port}"
    gw_cmd = [sys.executable, "-m", "kaon.gateway", "--port", str(gw_port)]
    gateway = spawn([*gw_cmd, "--control-plane", cp_url, "--token", GATEWAY_TOKEN], Path(args.log))
    pool = Pool(cp)
    log: list[Any] = []
    try:
        wait_http(f"http://127.0.0.1:{gw_port}/healthz", 30, gateway)
        async with httpx.AsyncClient() as probe:
            tasks = [
                asyncio.create_task(autoscaler(cp, pool, policy, log)),
                asyncio.create_task(pool.watch_ready(probe)),
            ]
            if low:
                pool.scale_to(low)
                while len(pool.ready_times) < low:  # noqa: ASYNC110 - polled by watch_ready
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # the gateway polls routes every 0.5 s
            t0 = time.monotonic()
            results = await replay(offsets, gw_port, tasks)
            end = time.monotonic()
            for task in tasks:
                task.cancel()
    finally:  # never leave replicas or the gateway behind
        pool.shutdown()
        stop(gateway)
        server.should_exit = True
    summarize(args, offsets, results, pool, end - t0, end, log)


def summarize(
    args: argparse.Namespace,
    offsets: list[float],
    results: list[tuple[float, int]],
    pool: Pool,
    elapsed: float,
    end: float,
    log: list[Any],
) -> None:
    ok = [lat for lat, status in results if status == 200]
    errors = len(results) - len(ok)
    peak = max([n for _, _, n, _ in log] + [args.fixed])
    used = pool.replica_seconds(end)
    ready = pool.ready_times or [0.0]
    print(
        f"trace: {len(offsets)} requests replayed in {elapsed:.0f} s "
        f"(mean {len(offsets) / args.duration:.1f} req/s); "
        f"service time {SERVICE_S * 1000:.0f} ms, {CONCURRENCY} at a time per replica"
    )
    print(
        f"latency: p50 {pct(ok, 50) * 1000:.0f} ms  p99 {pct(ok, 99) * 1000:.0f} ms  "
        f"max {max(ok) * 1000:.0f} ms  errors {errors}"
    )
    print(
        f"replicas: peak {peak}, {pool.cold_starts} started ({pool.from_zero} from zero), "
        f"spawn->ready p50 {pct(ready, 50):.2f} s max {max(ready):.2f} s"
    )
    fixed = peak * elapsed
    print(
        f"replica-seconds: {used:.0f} autoscaled vs {fixed:.0f} for a fixed fleet of "
        f"{peak} (the peak) = {used / fixed:.0%}"
    )
    for when, before, after, reason in log[: args.show]:
        print(f"  t={when - log[0][0]:6.1f}s  {before} -> {after}  {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(TRACE))
    parser.add_argument("--duration", type=float, default=180.0)
    parser.add_argument("--max-replicas", type=int, default=8)
    parser.add_argument("--fixed", type=int, default=0, help="no autoscaling: N replicas")
    parser.add_argument("--log", default="/dev/null", help="gateway log file")
    parser.add_argument("--show", type=int, default=12, help="scaling events to print")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on `timeout` too
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
