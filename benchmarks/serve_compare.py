"""Serving overhead, side by side: Kaon (gateway + 1 replica), the replica alone, Ray Serve
(1 replica) and one bare Uvicorn/Starlette process (the floor), all on loopback.

The model is the seed's 2-5-1 MLP (ReLU, sigmoid) behind ``POST /predict`` with body
``{"x": [[0.5, -1.0]]}``; each system is loaded with ``wrk -t2 -c16 -d15s`` in turn.

    .venv/bin/python benchmarks/serve_compare.py            # everything (about 2 minutes)
    .venv/bin/python benchmarks/serve_compare.py --only kaon,async,floor --duration 5

wrk, the gateway and the replica share the machine's cores; on a 2-core machine the
gateway path runs three busy processes on two cores, which this benchmark does not hide.
This file is also the service module the replica imports (``serve_compare:MLPService``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kaon

HERE = Path(__file__).resolve().parent
BODY = '{"x": [[0.5, -1.0]]}'
TOKEN = "bench-token"
REPLICA_KEY = "krep_bench-replica-key"
"""Replicas run with a credential, as under the control plane: the gateway adds it to each
request, and the direct runs send it themselves (`kaon.core.replicas.REPLICA_KEY_HEADER`)."""
KEY_HEADERS = {"x-kaon-replica-key": REPLICA_KEY}


def build_model() -> Any:
    """The seed's 2-5-1 MLP with fixed weights; one thread, as a replica on a shared box."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1), torch.nn.Sigmoid()
    )
    return model.eval()


def run_model(model: Any, x: list[list[float]]) -> list[float]:
    import torch

    with torch.inference_mode():
        out: list[float] = model(torch.tensor(x)).squeeze(-1).tolist()
    return out


class MLPService(kaon.Service):
    """The Kaon service: a plain sync handler, as a user would write it."""

    def setup(self) -> None:
        self.model = build_model()

    @kaon.handler
    def predict(self, x: list[list[float]]) -> list[float]:
        return run_model(self.model, x)


class AsyncMLPService(MLPService):
    """The same with ``async def``: runs on the loop, no thread-pool hop (fine for a model
    this small; a big one would stall the loop)."""

    @kaon.handler(path="/predict")
    async def predict_async(self, x: list[list[float]]) -> list[float]:
        return run_model(self.model, x)

    predict = None  # type: ignore[assignment]


# --- the systems under test -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> float:
    """Seconds until `url` answers 200 (raises after `timeout`)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was up")
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"{url} not up after {timeout} s")


def spawn(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(
        args, stdout=out, stderr=subprocess.STDOUT, cwd=HERE, env={**os.environ, **(env or {})}
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_replica(tmp: Path, service: str = "serve_compare:MLPService") -> tuple[Any, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "kaon.serving.runtime", "--service", service, "--port", str(port)]
    env = {"KAON_REPLICA_KEY": REPLICA_KEY}
    proc = spawn([*cmd, "--log-level", "warning"], tmp / f"replica-{port}.log", env)
    wait_http(f"http://127.0.0.1:{port}/ready", 60, proc, KEY_HEADERS)
    return proc, f"http://127.0.0.1:{port}"


def start_gateway(tmp: Path, replicas: list[str]) -> tuple[Any, str]:
    from kaon.core.gateway import Route, RouteTable
    from kaon.core.tokens import hash_token

    table = RouteTable(
        version=1,
        routes=[
            Route(
                name="mlp",
                replicas=replicas,
                token_hashes=[hash_token(TOKEN)],
                replica_keys=dict.fromkeys(replicas, REPLICA_KEY),
            )
        ],
    )
    routes = tmp / "routes.json"
    routes.write_text(table.model_dump_json())
    port = free_port()
    cmd = [sys.executable, "-m", "kaon.gateway", "--port", str(port), "--routes", str(routes)]
    proc = spawn(cmd, tmp / "gateway.log")
    wait_http(f"http://127.0.0.1:{port}/healthz", 30, proc)
    return proc, f"http://127.0.0.1:{port}/mlp"


FLOOR_APP = """
import sys
sys.path.insert(0, {here!r})
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from serve_compare import build_model, run_model

model = build_model()

async def predict(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse(run_model(model, body["x"]))

app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port={port}, loop="uvloop", http="httptools",
            access_log=False, log_level="warning")
"""


def start_floor(tmp: Path) -> tuple[Any, str]:
    port = free_port()
    script = tmp / "floor.py"
    script.write_text(FLOOR_APP.format(here=str(HERE), port=port))
    proc = spawn([sys.executable, str(script)], tmp / "floor.log")
    wait_post(f"http://127.0.0.1:{port}/predict", 30, proc)
    return proc, f"http://127.0.0.1:{port}"


RAY_APP = """
import sys, time
sys.path.insert(0, {here!r})
import ray
from ray import serve
from starlette.requests import Request
from serve_compare import build_model, run_model

@serve.deployment(num_replicas=1)
class MLP:
    def __init__(self):
        self.model = build_model()

    async def __call__(self, request: Request):
        body = await request.json()
        return run_model(self.model, body["x"])

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
serve.start(http_options={{"host": "127.0.0.1", "port": {port}}})
serve.run(MLP.bind(), route_prefix="/predict")
print("ray serve up", flush=True)
while True:
    time.sleep(60)
"""


def start_ray(tmp: Path) -> tuple[Any, str]:
    port = free_port()
    script = tmp / "ray_app.py"
    script.write_text(RAY_APP.format(here=str(HERE), port=port))
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    proc = spawn([sys.executable, str(script)], tmp / "ray.log", env)
    wait_post(f"http://127.0.0.1:{port}/predict", 180, proc)
    return proc, f"http://127.0.0.1:{port}"


def stop_ray(proc: Any) -> None:
    stop(proc)
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    subprocess.run([ray, "stop", "--force"], capture_output=True, check=False, timeout=60)


def wait_post(url: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was up")
        try:
            request = urllib.request.Request(url, data=BODY.encode(), method="POST")
            with urllib.request.urlopen(request, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not up after {timeout} s")


# --- load -------------------------------------------------------------------------------

LUA = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
wrk.headers["X-Kaon-Replica-Key"] = "{key}"
"""


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float | None = None  # CPU time of the measured processes per request


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids`, from /proc (Linux): robust to a noisy machine."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _ms(text: str, label: str) -> float:
    match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def load(
    name: str, url: str, tmp: Path, duration: int, connections: int, pids: list[int] | None = None
) -> Result:
    script = tmp / "post.lua"
    script.write_text(LUA.format(body=BODY, token=TOKEN, key=REPLICA_KEY))
    # warm up (connections, caches, lazy imports), then measure
    warm = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", "-d2s", "-s", str(script), url]
    if subprocess.run(warm, capture_output=True, check=False).returncode != 0:
        print(f"  {name:<36} unreachable (process gone?), skipped", flush=True)
        return Result(name, float("nan"), float("nan"), float("nan"), -1)
    cmd = [
        "wrk",
        f"-t{min(2, connections)}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(script),
    ]
    cpu_before = cpu_seconds(pids or [])
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pids or []) - cpu_before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors:.*?timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (int(sock.group(1)) if sock else 0)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    cpu_us = cpu / total * 1e6 if pids and total else None
    result = Result(name, rps, _ms(out, "50%"), _ms(out, "99%"), errors, cpu_us)
    print(
        f"  {name:<36} {rps:>7.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
        f"p99 {result.p99_ms:6.2f} ms  errors {errors}"
        + (f"  cpu {cpu_us:5.0f} us/req" if cpu_us is not None else ""),
        flush=True,
    )
    return result


def bench_kaon(tmp: Path, service: str, tag: str, duration: int, conns: int) -> dict[str, Result]:
    """Replica alone and gateway + replica, at `conns` connections and at one."""
    replica, base = start_replica(tmp, service)
    gateway, gw_url = start_gateway(tmp, [base])
    both = [replica.pid, gateway.pid]
    runs = [
        ("direct", f"replica direct{tag}", f"{base}/predict", conns, [replica.pid]),
        ("kaon", f"kaon gateway + replica{tag}", f"{gw_url}/predict", conns, both),
        ("direct-c1", f"replica direct{tag}, 1 conn", f"{base}/predict", 1, [replica.pid]),
        ("kaon-c1", f"kaon gateway{tag}, 1 conn", f"{gw_url}/predict", 1, both),
    ]
    prefix = "async-" if tag else ""
    try:
        results = {prefix + k: load(n, url, tmp, duration, c, pids) for k, n, url, c, pids in runs}
        print(f"  where the handler ran: {where_handler_ran(base)}", flush=True)
        return results
    finally:
        stop(gateway)
        stop(replica)


def where_handler_ran(base: str) -> str:
    """From the replica's metrics: on the loop (a cheap def handler), or in the pool."""
    request = urllib.request.Request(f"{base}/metrics", headers=KEY_HEADERS)
    with urllib.request.urlopen(request, timeout=5) as r:
        text = r.read().decode()
    match = re.search(r'kaon_replica_handler_on_loop\{handler="(\w+)"\} ([\d.]+)', text)
    moves = re.search(r"kaon_replica_handler_moves_total\{[^}]*\} ([\d.]+)", text)
    if match is None:
        return "unknown"
    where = "on the loop" if float(match.group(2)) else "in the pool"
    return (
        f"{match.group(1)}: {where} at the end, {float(moves.group(1)) if moves else 0:.0f} moves"
    )


def bench(only: set[str], duration: int, connections: int) -> dict[str, Result]:
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="kaon-bench-") as name:
        tmp = Path(name)
        if "kaon" in only:
            results |= bench_kaon(tmp, "serve_compare:MLPService", "", duration, connections)
        if "async" in only:
            service = "serve_compare:AsyncMLPService"
            results |= bench_kaon(tmp, service, " (async def)", duration, connections)
        if "floor" in only:
            floor, base = start_floor(tmp)
            try:
                url = f"{base}/predict"
                results["floor"] = load(
                    "bare uvicorn/starlette", url, tmp, duration, connections, [floor.pid]
                )
                results["floor-c1"] = load(
                    "bare uvicorn/starlette, 1 conn", url, tmp, duration, 1, [floor.pid]
                )
            finally:
                stop(floor)
        if "ray" in only:
            results.update(bench_ray(tmp, duration, connections))
    return results


def bench_ray(tmp: Path, duration: int, connections: int) -> dict[str, Result]:
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        print("  ray serve: not installed, skipped")
        return {}
    proc, base = start_ray(tmp)
    try:
        return {"ray": load("ray serve", f"{base}/predict", tmp, duration, connections)}
    finally:
        stop_ray(proc)


def cold_start(tmp_runs: int = 3) -> list[float]:
    """Seconds from spawning a replica process to its /ready answering 200."""
    times = []
    with tempfile.TemporaryDirectory(prefix="kaon-cold-") as name:
        for _ in range(tmp_runs):
            port = free_port()
            start = time.perf_counter()
            cmd = [
                sys.executable,
                "-m",
                "kaon.serving.runtime",
                "--service",
                "serve_compare:MLPService",
                "--port",
                str(port),
            ]
            proc = spawn(cmd, Path(name) / "cold.log")
            try:
                wait_http(f"http://127.0.0.1:{port}/ready", 60, proc)
                times.append(time.perf_counter() - start)
            finally:
                stop(proc)
    return times


def summarize(results: dict[str, Result]) -> None:
    floor, ray, kaon, direct = (results.get(k) for k in ("floor", "ray", "kaon", "direct"))
    print("\nratios")
    if kaon and floor:
        print(f"  kaon / bare throughput      {kaon.rps / floor.rps:6.2f}  (goal >= 0.5)")
    if kaon and ray:
        print(f"  kaon / ray serve throughput {kaon.rps / ray.rps:6.1f}x (goal >= 10x)")
    if kaon and direct:
        print(f"  gateway adds at p50         {kaon.p50_ms - direct.p50_ms:6.2f} ms under load")
    one, one_direct = results.get("kaon-c1"), results.get("direct-c1")
    if one and one_direct:
        added = one.p50_ms - one_direct.p50_ms
        print(f"  gateway adds at p50         {added:6.2f} ms at 1 connection (goal <= 1 ms)")


def medians(rounds: list[dict[str, Result]]) -> dict[str, Result]:
    """Per system, the round with the median throughput: the box is shared and noisy."""
    keys = {k for r in rounds for k in r}
    out = {}
    for key in sorted(keys, key=lambda k: list(rounds[0]).index(k) if k in rounds[0] else 99):
        runs = sorted(
            (r[key] for r in rounds if key in r and r[key].errors >= 0), key=lambda x: x.rps
        )
        if not runs:
            continue
        out[key] = runs[len(runs) // 2]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="kaon,async,floor,ray,cold")
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="repeat, report the medians")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what we started
    only = set(args.only.split(","))
    print(
        f"wrk -t2 -c{args.connections} -d{args.duration}s, POST /predict {BODY}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    rounds = []
    for i in range(args.rounds):
        print(f"round {i + 1}/{args.rounds}")
        rounds.append(bench(only - {"ray"} if i else only, args.duration, args.connections))
    results = medians(rounds)
    if args.rounds > 1:
        print(f"medians of {args.rounds} rounds (by req/s)")
        for r in results.values():
            print(
                f"  {r.name:<36} {r.rps:>7.0f} req/s  p50 {r.p50_ms:6.2f} ms  "
                f"p99 {r.p99_ms:6.2f} ms  cpu {r.cpu_us or 0:5.0f} us/req"
            )
    summarize(results)
    cold = cold_start() if "cold" in only else []
    if cold:
        print(f"  cold start (spawn -> ready)  {', '.join(f'{t:.2f}' for t in cold)} s")
    if args.json:
        payload = {k: vars(v) for k, v in results.items()} | {"cold_start_s": cold}
        Path(args.json).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
