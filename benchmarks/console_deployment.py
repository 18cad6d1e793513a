"""The console's deployment page: how long its requests take, and what "try it" adds.

Serves the real control plane on a fresh SQLite home with a real gateway process and one
ready replica of a small service, fills the deployment's traffic history to its bound (600
samples, 100 scaling events), then times, from send to last byte on loopback, over --runs
repetitions: the two requests the page polls (the deployment, its timeline), and one call
of its handler sent to the gateway directly and through the control plane's "try it"
route (which adds one hop, the caller's visibility check and the JSON envelope).

    .venv/bin/python benchmarks/console_deployment.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import uvicorn

from kaon.core.gateway import DeploymentLoad, GatewayReport
from kaon.sdk.client import Client
from kaon.server.app import create_app
from kaon.server.config import Settings, normalize_database_url
from kaon.server.context import ControlPlane

TOKEN = "kaon_bench-admin-" + "x" * 24
SERVICE = """
import kaon


class Model(kaon.Service):
    @kaon.handler
    def predict(self, x: list[float]) -> list[float]:
        return [2 * v for v in x]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the deployment did not come up")
        time.sleep(0.2)


def timed(runs: int, send: Callable[[], httpx.Response]) -> tuple[float, float]:
    """Median and p95 in ms of `runs` sends, after three to warm up."""
    for _ in range(3):
        send().raise_for_status()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        r = send()
        times.append((time.perf_counter() - started) * 1000)
        r.raise_for_status()
    times.sort()
    return statistics.median(times), times[max(0, round(0.95 * len(times)) - 1)]


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kaon-bench-"))
    port = free_port()
    settings = Settings(
        home=home,
        database_url=normalize_database_url(str(home / "kaon.db")),
        bootstrap_token=TOKEN,
        port=port,
        reconcile_interval_s=0.2,
        stop_grace_s=1.0,
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    until(lambda: server.started, 30)
    url = f"http://127.0.0.1:{port}"
    gateway = f"http://127.0.0.1:{free_port()}"
    os.environ["KAON_GATEWAY_URL"] = gateway
    argv = [sys.executable, "-m", "kaon.gateway", "--port", gateway.rsplit(":", 1)[1]]
    gw = subprocess.Popen(
        [*argv, "--control-plane", url, "--poll", "0.25"],
        env={**os.environ, "KAON_GATEWAY_TOKEN": TOKEN},
        stderr=subprocess.DEVNULL,
    )
    try:
        until(lambda: healthy(f"{gateway}/healthz"), 30)
        (home / "svc").mkdir()
        (home / "svc" / "model.py").write_text(SERVICE)
        admin = Client(url, token=TOKEN)
        spec = {"resources": {"cpu": 0.5, "memory": "1Gi"}}
        admin.deployments.create("doubler", service="model:Model", path=home / "svc", spec=spec)
        until(lambda: admin.deployments.get("doubler").ready_replicas >= 1)
        plane: ControlPlane = app.state.plane
        now = time.time()
        for i in range(600):  # the bound: a full history, as after ten busy minutes
            load = DeploymentLoad(
                name="doubler", in_flight=1, queued=0, requests_per_s=10.0, p50_ms=5.0
            )
            report = GatewayReport(gateway_id="g", time=now, window_s=1.0, deployments=[load])
            plane.timeline.record(report, now - 600 + i)
        for i in range(100):
            plane.timeline.scaled("doubler", 1 + i % 2, 2 - i % 2, "wanted up for 3 s", now)
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"})
        base = "/api/v1/workspaces/default/deployments/doubler"
        body = {"x": [1.0, 2.0, 3.0]}
        cases = {
            "the deployment (polled)": lambda: http.get(base),
            "its timeline, 600 samples (polled)": lambda: http.get(f"{base}/timeline"),
            "predict, to the gateway directly": lambda: http.post(
                f"{gateway}/doubler/predict", json=body
            ),
            "predict, through try it": lambda: http.post(
                f"{base}/try", json={"handler": "predict", "body": body}
            ),
        }
        print(f"| request ({args.runs} runs) | median | p95 |")
        print("|---|---:|---:|")
        for name, send in cases.items():
            median, p95 = timed(args.runs, send)
            print(f"| {name} | {median:.1f} ms | {p95:.1f} ms |")
        admin.deployments.delete("doubler")
        time.sleep(2)
    finally:
        gw.terminate()
        gw.wait(timeout=30)
        server.should_exit = True


if __name__ == "__main__":
    main()
