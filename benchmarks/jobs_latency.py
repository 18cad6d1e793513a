"""Job start latency: Kaon against Ray Jobs, side by side in one run on this machine.

For each system: submit-to-running and submit-to-succeeded latency of a trivial job
(``python -c pass``), one at a time, and the wall time of a burst of jobs submitted at
once. Ray Jobs runs against a local head started here (``ray start --head``), driven by
its Python SDK (JobSubmissionClient), the same API ``ray job submit`` uses.

    .venv/bin/python benchmarks/jobs_latency.py [--runs 10] [--burst 200] [--json]

Needs ``pip install 'ray[default]'`` for the Ray side (skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

POLL_S = 0.005
TRIVIAL = [sys.executable, "-c", "pass"]


@dataclass
class Result:
    system: str
    to_running_ms: float
    to_succeeded_ms: float
    burst_jobs: int
    burst_wall_s: float
    burst_done: int = 0  # how many of the burst finished within the time allowed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(check: Callable[[], bool], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        time.sleep(POLL_S)


# -- Kaon ---------------------------------------------------------------------------------


def bench_kaon(runs: int, burst: int) -> Result:
    from kaon.core.jobs import JobStatus
    from kaon.sdk.client import Client

    home = Path(tempfile.mkdtemp(prefix="kaon-bench-"))
    port, token = _free_port(), "kaon_bench-" + os.urandom(8).hex()
    env = {
        **os.environ,
        "KAON_HOME": str(home),
        "KAON_PORT": str(port),
        "KAON_BOOTSTRAP_TOKEN": token,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "kaon.server"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = Client(f"http://127.0.0.1:{port}", token=token)
    try:
        _until(client.healthy, 60)
        running, succeeded = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            job = client.jobs.submit(TRIVIAL, cpu=0.05)
            seen_running = None
            while True:
                status = client.jobs.get(job.id).status
                if seen_running is None and status in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
                    seen_running = time.perf_counter() - t0
                if status.is_terminal():
                    break
                time.sleep(POLL_S)
            assert status is JobStatus.SUCCEEDED, status
            running.append(seen_running or 0.0)
            succeeded.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ids = [client.jobs.submit(TRIVIAL, cpu=0.05).id for _ in range(burst)]
        _until(
            lambda: all(
                j.status.is_terminal() for j in client.jobs.list(limit=1000) if j.id in set(ids)
            )
        )
        wall = time.perf_counter() - t0
        failed = [
            j
            for j in client.jobs.list(limit=1000)
            if j.id in set(ids) and j.status is not JobStatus.SUCCEEDED
        ]
        assert not failed, f"{len(failed)} burst jobs did not succeed"
        return Result(
            "kaon",
            statistics.median(running) * 1e3,
            statistics.median(succeeded) * 1e3,
            burst,
            wall,
            burst,
        )
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(home, ignore_errors=True)


# -- Ray Jobs -----------------------------------------------------------------------------


def bench_ray(runs: int, burst: int, burst_timeout: float) -> Result | None:
    try:
        from ray.job_submission import JobStatus as RayStatus
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        print("ray[default] is not installed; skipping Ray Jobs", file=sys.stderr)
        return None
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a local head on loopback, like Kaon's
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    port, dash = _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
    subprocess.run(
        [
            ray,
            "start",
            "--head",
            f"--port={port}",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            "--include-dashboard=true",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = JobSubmissionClient(f"http://127.0.0.1:{dash}")
        entry = f"{sys.executable} -c pass"
        client.get_job_status(client.submit_job(entrypoint=entry))  # warm up the head
        running, succeeded = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            job = client.submit_job(entrypoint=entry)
            seen_running = None
            while True:
                status = client.get_job_status(job)
                if seen_running is None and status in (RayStatus.RUNNING, RayStatus.SUCCEEDED):
                    seen_running = time.perf_counter() - t0
                if status.is_terminal():
                    break
                time.sleep(POLL_S)
            assert status == RayStatus.SUCCEEDED, status
            running.append(seen_running or 0.0)
            succeeded.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ids = [client.submit_job(entrypoint=entry) for _ in range(burst)]
        pending = set(ids)
        while pending and time.perf_counter() - t0 < burst_timeout:
            pending = {j for j in pending if not client.get_job_status(j).is_terminal()}
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        if pending:
            print(f"ray jobs: {len(pending)} of {burst} still unfinished after {wall:.0f} s",
                  file=sys.stderr)  # fmt: skip
        done = burst - len(pending)
        return Result(
            "ray jobs",
            statistics.median(running) * 1e3,
            statistics.median(succeeded) * 1e3,
            burst,
            wall,
            done,
        )
    finally:
        subprocess.run(
            [ray, "stop", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        shutil.rmtree(temp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10, help="sequential trivial jobs per system")
    parser.add_argument("--burst", type=int, default=200, help="jobs submitted at once")
    parser.add_argument("--burst-timeout", type=float, default=900, help="give up on a burst")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kaon = bench_kaon(args.runs, args.burst)
    print(f"kaon: {asdict(kaon)}", file=sys.stderr, flush=True)
    ray = bench_ray(args.runs, args.burst, args.burst_timeout)
    results = [r for r in (kaon, ray) if r]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
        return
    print(
        f"{'system':<10} {'submit->running':>16} {'submit->succeeded':>18} "
        f"{'burst':>7} {'burst wall':>11}"
    )
    for r in results:
        print(
            f"{r.system:<10} {r.to_running_ms:>13.0f} ms {r.to_succeeded_ms:>15.0f} ms "
            f"{r.burst_jobs:>7} {r.burst_wall_s:>9.1f} s"
            + ("" if r.burst_done == r.burst_jobs else f" ({r.burst_done} done, gave up)")
        )
    if len(results) == 2:
        k, ray = results
        print(
            f"\nKaon vs Ray Jobs: submit->succeeded "
            f"{ray.to_succeeded_ms / k.to_succeeded_ms:.1f}x faster, "
            f"burst of {k.burst_jobs} {ray.burst_wall_s / k.burst_wall_s:.1f}x faster"
            + ("" if ray.burst_done == ray.burst_jobs else " (at least: Ray did not finish)")
        )


if __name__ == "__main__":
    main()
