"""Autoscaling on a real arrival trace: Kaon's gateway and policy with real replicas, and
Ray Serve's default autoscaler, on the same arrivals in one run.

Replays the arrival times of the Azure LLM inference trace 2023 (code; 8,819 requests over
about an hour; CC-BY-4.0), compressed to ``--duration`` seconds, against a handler with a
fixed service time and a fixed concurrency per replica (a stand-in for a model that keeps
one accelerator busy). Arms (``--arms``, run one after the other):

- ``kaon``: the production pieces, wired the phase-2 way. The gateway runs as its own
  process (``python -m kaon.gateway --control-plane ...``); a stand-in control plane in
  this process serves ``GET /api/v1/gateway/routes`` and takes ``POST
  /api/v1/gateway/report``; on each report `kaon.autoscaling.decide` picks the
  replica count, and a small driver starts replica processes (``python -m
  kaon.serving.runtime``) or stops them, and publishes the ready ones in the route table.
  Policy delays are compressed like the trace (up after 1 s, down after 10 s, to zero
  after 20 s idle); ``kaon-defaults`` is the same with Kaon's default delays.
- ``fixed``: the same with ``--fixed`` (8) warm replicas and no scaling.
- ``ray``: Ray Serve, the same handler (``max_ongoing_requests`` 2), ``autoscaling_config``
  with only ``min_replicas`` (``--ray-min``, 0) and ``max_replicas`` (8) set: Ray's
  default policy, in wall-clock time. Requests go to Ray's HTTP proxy.

    .venv/bin/python benchmarks/serve_autoscale.py                       # kaon, ray: ~8 min
    .venv/bin/python benchmarks/serve_autoscale.py --arms fixed --fixed 8
    .venv/bin/python benchmarks/serve_autoscale.py --keep 0.5            # half the requests

Reports p50/p99 latency, errors, replica-seconds, replicas started (and from zero) per arm.
``--keep`` sends only that share of the trace's requests (its shape at a lower rate), for
a machine where one arm cannot keep up with the full rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

import kaon
from kaon.autoscaling import LoadBoard, ScalingState, decide
from kaon.core.deployments import ScalingPolicy
from kaon.core.gateway import GatewayReport, Route, RouteTable
from kaon.core.tokens import hash_token
from kaon.gateway.upstream import UpstreamError, UpstreamPool

HERE = Path(__file__).resolve().parent
TRACE = HERE.parent / ".." / "shared" / "data" / "traces" / "azure_llm_code_2023.csv"
TOKEN = "bench-token"
GATEWAY_TOKEN = "bench-gateway"
HEADERS = f"authorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\n".encode()
BODY = b'{"x": [[0.5, -1.0]]}'
SERVICE_S = float(os.environ.get("BENCH_SERVICE_S", "0.1"))
CONCURRENCY = 2  # requests one replica serves at once: 20 req/s per replica at 100 ms
DRAIN_S = 1.5  # from leaving the route table to SIGTERM (the reconciler's drain_s)


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
        """Out of the route table first, SIGTERM `DRAIN_S` later, as the control plane's
        reconciler does: by then the gateway has polled the new table (every 0.5 s) and
        sends the replica nothing new; SIGTERM drains what is still in flight."""
        self.replicas.remove(r)
        self.publish()
        asyncio.get_running_loop().call_later(DRAIN_S, _terminate, r.proc)
        r.stopped = time.monotonic() + DRAIN_S
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
        return sum(min(r.stopped or end, end) - r.started for r in every)

    def shutdown(self) -> None:
        for r in self.replicas + self.retired:
            _terminate(r.proc)
        for r in self.replicas + self.retired:
            try:
                r.proc.wait(10)
            except subprocess.TimeoutExpired:
                r.proc.kill()


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)


# --- the run ----------------------------------------------------------------------------


async def autoscaler(cp: ControlPlane, pool: Pool, policy: ScalingPolicy, log: list[Any]) -> None:
    state = ScalingState(replicas=0)
    board = LoadBoard()
    while True:
        try:
            report = cp.reports.get_nowait()
        except queue.Empty:
            await asyncio.sleep(0.05)
            continue
        now = time.monotonic()
        board.record(report, now)
        load = board.load("trace", now)
        decision = decide(policy, state.observe(load, replicas=pool.count), now)
        state = decision.state
        if decision.replicas != pool.count:
            log.append((now, pool.count, decision.replicas, decision.reason))
            pool.scale_to(decision.replicas)


async def fire(pool: UpstreamPool, port: int, results: list[tuple[float, int]]) -> None:
    start = time.perf_counter()
    try:
        reply = await pool.request("127.0.0.1", port, "POST", b"/trace/predict", HEADERS, BODY)
        status = reply.status
    except (UpstreamError, TimeoutError):
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


def thin(offsets: list[float], keep: float) -> list[float]:
    """Every request's share `keep` of the arrivals, evenly: the trace's shape at a lower rate."""
    if keep >= 1:
        return offsets
    return [o for i, o in enumerate(offsets) if int((i + 1) * keep) != int(i * keep)]


@dataclass
class Arm:
    """What one system did with the trace."""

    name: str
    results: list[tuple[float, int]]
    elapsed: float
    replica_seconds: float
    started: int
    from_zero: int
    peak: int
    ready_times: list[float] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


def kaon_policy(arm: str, args: argparse.Namespace) -> ScalingPolicy:
    """``kaon``: delays compressed like the trace; ``kaon-defaults``: Kaon's own delays;
    ``fixed``: N warm replicas all along. The target is 2 in flight per replica in all,
    the replica's concurrency (Ray's default target_ongoing_requests is 2 as well)."""
    if arm == "fixed":
        n = args.fixed
        return ScalingPolicy(min_replicas=n, max_replicas=n, target_in_flight=CONCURRENCY)
    if arm == "kaon-defaults":
        return ScalingPolicy(
            min_replicas=0, max_replicas=args.max_replicas, target_in_flight=CONCURRENCY
        )
    return ScalingPolicy(
        min_replicas=0,
        max_replicas=args.max_replicas,
        target_in_flight=CONCURRENCY,
        scale_up_delay_s=1,
        scale_down_delay_s=10,
        scale_to_zero_after_s=20,
    )


async def run_kaon(args: argparse.Namespace, offsets: list[float], arm: str) -> Arm:
    from serve_compare import free_port, spawn, stop, wait_http

    policy = kaon_policy(arm, args)
    low = policy.min_replicas
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
    events = [
        f"t={when - t0:6.1f}s  {before} -> {after}  {reason}"
        for when, before, after, reason in log
    ]
    return Arm(
        name=arm,
        results=results,
        elapsed=end - t0,
        replica_seconds=pool.replica_seconds(end),
        started=pool.cold_starts,
        from_zero=pool.from_zero,
        peak=max([n for _, _, n, _ in log] + [low]),
        ready_times=pool.ready_times,
        events=events,
    )


# --- Ray Serve, default autoscaling -----------------------------------------------------


class ReplicaCounter:
    """Polls ``serve.status()`` and integrates the live replica count over time.

    Live: starting or running (Ray's STARTING, UPDATING, RECOVERING, RUNNING,
    PENDING_MIGRATION); a replica stops counting when it is told to stop, as in the Kaon
    arm. A rise of the count is that many replicas started.
    """

    LIVE = ("STARTING", "UPDATING", "RECOVERING", "RUNNING", "PENDING_MIGRATION")

    def __init__(self, app: str, interval_s: float = 0.25) -> None:
        self.app = app
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _count(self) -> int:
        from ray import serve

        app = serve.status().applications.get(self.app)
        if app is None:
            return 0
        states = [d.replica_states for d in app.deployments.values()]
        return sum(n for st in states for state, n in st.items() if str(state) in self.LIVE)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self._count()))
            except Exception as exc:  # a slow controller: skip this sample
                print(f"  serve.status() failed: {exc}", flush=True)
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def summary(self, t0: float, end: float) -> tuple[float, int, int, int, list[str]]:
        """(replica-seconds, started, from zero, peak, changes) over [t0, end]."""
        seconds, started, from_zero, peak, changes = 0.0, 0, 0, 0, []
        prev_t, prev_n = t0, 0
        for t, n in self.samples:
            if t < t0:
                prev_n = n
                continue
            if t > end:
                break
            seconds += prev_n * (t - prev_t)
            if n > prev_n:
                started += n - prev_n
                from_zero += prev_n == 0
            if n != prev_n:
                changes.append(f"t={t - t0:6.1f}s  {prev_n} -> {n}")
            peak = max(peak, n)
            prev_t, prev_n = t, n
        seconds += prev_n * (end - prev_t)
        return seconds, started, from_zero, peak, changes


RAY_APP = "trace"


def start_ray(args: argparse.Namespace, port: int) -> None:
    """Ray Serve with the same handler: SERVICE_S, CONCURRENCY at a time per replica.

    ``autoscaling_config`` sets only min and max replicas; everything else is Ray's
    default (target_ongoing_requests 2, upscale_delay_s 30, downscale_delay_s 600,
    look_back_period_s 30, metrics_interval_s 10). Replicas ask for no CPU, so eight fit
    on two cores, as Kaon's replica processes do here.
    """
    import ray
    from ray import serve

    @serve.deployment(
        max_ongoing_requests=CONCURRENCY,
        ray_actor_options={"num_cpus": 0},
        autoscaling_config={"min_replicas": args.ray_min, "max_replicas": args.max_replicas},
    )
    class FixedTimeRay:
        async def __call__(self, request: Any) -> list[float]:
            await asyncio.sleep(SERVICE_S)
            return [0.0]

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(FixedTimeRay.bind(), name=RAY_APP, route_prefix="/trace", blocking=False)


def stop_ray() -> None:
    import ray
    from ray import serve

    with contextlib.suppress(Exception):
        serve.shutdown()
    with contextlib.suppress(Exception):
        ray.shutdown()
    ray_bin = Path(sys.executable).parent / "ray"
    subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, check=False)


async def run_ray(args: argparse.Namespace, offsets: list[float]) -> Arm:
    from serve_compare import free_port

    try:
        import ray.serve  # noqa: F401
    except ImportError:
        raise SystemExit("ray serve is not installed: pip install 'kaon[ray]'") from None
    port = free_port()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    start_ray(args, port)
    counter = ReplicaCounter(RAY_APP)
    try:
        await asyncio.sleep(2.0)  # the proxy and controller settle
        counter.start()
        t0 = time.monotonic()
        results = await replay(offsets, port, [])
        end = time.monotonic()
        counter.stop()
    finally:
        counter.stop()
        stop_ray()
    seconds, started, from_zero, peak, changes = counter.summary(t0, end)
    return Arm("ray", results, end - t0, seconds, started, from_zero, peak, events=changes)


# --- report -----------------------------------------------------------------------------


def report(args: argparse.Namespace, offsets: list[float], arms: list[Arm]) -> None:
    print(
        f"\ntrace: {len(offsets)} requests over {args.duration:.0f} s "
        f"(mean {len(offsets) / args.duration:.1f} req/s"
        + (f", {args.keep:.0%} of the trace's requests" if args.keep < 1 else "")
        + f"); service time {SERVICE_S * 1000:.0f} ms, {CONCURRENCY} at a time per replica; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'arm':<14} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7} "
        f"{'replica-s':>10} {'started':>8} {'from 0':>7} {'peak':>5} {'ready p50 s':>12}"
    )
    for arm in arms:
        ok = [lat for lat, status in arm.results if status == 200] or [float("nan")]
        errors = len(arm.results) - sum(1 for _, status in arm.results if status == 200)
        ready = f"{pct(arm.ready_times, 50):.2f}" if arm.ready_times else "n/a"
        print(
            f"{arm.name:<14} {pct(ok, 50) * 1000:>8.0f} {pct(ok, 99) * 1000:>8.0f} "
            f"{max(ok) * 1000:>8.0f} {errors:>7} {arm.replica_seconds:>10.0f} "
            f"{arm.started:>8} {arm.from_zero:>7} {arm.peak:>5} {ready:>12}"
        )
    for arm in arms:
        codes = Counter(status for _, status in arm.results if status != 200)
        if codes:
            listed = ", ".join(f"{n} x {code or 'no answer'}" for code, n in sorted(codes.items()))
            print(f"{arm.name} errors: {listed}")
    for arm in arms:
        shown = arm.events[: args.show]
        more = len(arm.events) - len(shown)
        print(
            f"\n{arm.name}: scaling"
            + (f" (first {len(shown)} of {len(arm.events)})" if more else "")
        )
        for line in shown:
            print(f"  {line}")


async def run(args: argparse.Namespace) -> None:
    offsets = thin(arrivals(Path(args.trace), args.duration), args.keep)
    arms = []
    for name in args.arms.split(","):
        print(
            f"arm {name}: replaying {len(offsets)} requests over {args.duration:.0f} s", flush=True
        )
        if name == "ray":
            arms.append(await run_ray(args, offsets))
        elif name in ("kaon", "kaon-defaults", "fixed"):
            arms.append(await run_kaon(args, offsets, name))
        else:
            raise SystemExit(f"unknown arm {name!r}")
    report(args, offsets, arms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(TRACE))
    parser.add_argument("--duration", type=float, default=180.0)
    parser.add_argument("--max-replicas", type=int, default=8)
    parser.add_argument(
        "--arms", default="kaon,ray", help="comma-separated: kaon, kaon-defaults, fixed, ray"
    )
    parser.add_argument("--fixed", type=int, default=8, help="replicas of the 'fixed' arm")
    parser.add_argument("--ray-min", type=int, default=0, help="Ray Serve min_replicas")
    parser.add_argument(
        "--keep", type=float, default=1.0, help="share of the trace's requests to send (rate)"
    )
    parser.add_argument("--log", default="/dev/null", help="gateway log file")
    parser.add_argument("--show", type=int, default=12, help="scaling events to print")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on `timeout` too
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
