"""Cold start from zero through the whole stack: control plane, gateway and a replica of
the seed classifier (examples/binary_classifier, serve:Classifier), all real processes.

The deployment scales to zero; then one request is sent through the gateway and timed
until its answer: demand report, autoscaler, scheduler, executor, replica start (Python,
torch, the model), health probe, route table, and the held request forwarded.

    .venv/bin/python benchmarks/serve_cold_start.py [--runs 3] [--poll 0.25]

Each run is split where the time goes, watched from outside every 10 ms: *to spawn* (the
request held, the demand report, the autoscaler, the scheduler and the executor, until
the replica's process exists), *replica* (that process until its ``/ready`` says 200:
Python, imports, ``setup()``), *to answer* (the control plane's probe, the route table,
the gateway's poll, the forwarded request).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from kaon.sdk.client import Client

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "binary_classifier"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        time.sleep(0.05)


class Watcher:
    """Notes when a new replica process appears and when its /ready first answers 200."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.spawned: float | None = None
        self.ready: float | None = None
        self._seen = set(home.glob("runs/*/*/*/child.json"))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        port: int | None = None
        while not self._stop.wait(0.01):
            if self.spawned is None:
                new = set(self.home.glob("runs/*/*/*/child.json")) - self._seen
                if new:
                    self.spawned = time.perf_counter()
                    port = _port_of(next(iter(new)).parent)
            elif port is not None and self.ready is None and _ready(port):
                self.ready = time.perf_counter()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)


def _port_of(worker_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(json.loads((worker_dir / "pid.json").read_text())["port"])
    return None


def _ready(port: int) -> bool:
    """A bare GET: an httpx client per poll would cost the replica CPU it is starting on."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
    try:
        conn.request("GET", "/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--poll", type=float, default=0.25, help="gateway route poll, s (kaon up: 0.25)"
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kaon-cold-"))
    cp_port, gw_port, token = _port(), _port(), "kaon_bench-" + os.urandom(8).hex()
    env = {
        **os.environ,
        "KAON_HOME": str(home),
        "KAON_PORT": str(cp_port),
        "KAON_BOOTSTRAP_TOKEN": token,
        "KAON_GATEWAY_TOKEN": token,
    }
    cp_url, gw_url = f"http://127.0.0.1:{cp_port}", f"http://127.0.0.1:{gw_port}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kaon.server"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    client = Client(cp_url, token=token)
    try:
        _until(client.healthy, 60)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kaon.gateway",
                    "--port",
                    str(gw_port),
                    "--control-plane",
                    cp_url,
                    "--poll",
                    str(args.poll),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        scaling = {
            "min_replicas": 0,
            "max_replicas": 1,
            "scale_to_zero_after_s": 1,
            "scale_down_delay_s": 0.5,
        }
        client.deployments.create(
            "cold",
            service="serve:Classifier",
            path=EXAMPLE,
            spec={"resources": {"cpu": 1}, "autoscaling": scaling},
        )
        times = []
        for _ in range(args.runs):
            _until(lambda: client.deployments.get("cold").status == "scaled-to-zero", 120)
            _until(
                lambda: all(
                    r.state in ("stopped", "failed")
                    for r in client.deployments.get("cold").replicas
                ),
                60,
            )
            watcher = Watcher(home)
            t0 = time.perf_counter()
            r = httpx.post(
                f"{gw_url}/cold/predict",
                json={"x": [[0.5, -1.0]]},
                headers={"Authorization": f"Bearer {token}"},
                timeout=120,
            )
            t1 = time.perf_counter()
            watcher.stop()
            times.append(t1 - t0)
            assert r.status_code == 200, r.text
            spawn, ready = watcher.spawned or t0, watcher.ready or t1
            print(
                f"cold start from zero: {times[-1]:.2f} s = to spawn {spawn - t0:.2f} "
                f"+ replica {ready - spawn:.2f} + to answer {t1 - ready:.2f} "
                f"(answer {r.json()})",
                flush=True,
            )
        print(
            f"median {statistics.median(times):.2f} s over {len(times)} runs; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
    finally:
        client.deployments.delete("cold")
        time.sleep(3)
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        for path in home.glob("runs/*/*/*/child.json"):
            with contextlib.suppress(OSError, ValueError):
                os.killpg(int(json.loads(path.read_text())["pid"]), signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
