"""The control plane's whole scheduling tick with many queued jobs in PostgreSQL.

`benchmarks/scheduler_pass.py` times the pure scheduler; this times what the job
reconciler does around it, database reads and writes included: `run_once()` observes
every job that holds resources, loads the pool (queued jobs, nodes, running jobs and
their workers), decides, writes placements and each queued job's waiting reason, and
launches what was placed. The executor is a stand-in that starts nothing (every worker it
is asked about is alive), so the numbers are the control plane's alone.

The pool: 125 nodes x 8 GPUs, each running a 4-, a 2- and a 1-GPU job that started a
minute ago (too recently to be preempted), so one GPU per node is free; the queue mixes
1, 2, 4 and 8-GPU jobs. The first tick places 125 one-GPU jobs, launches them and writes
every waiting reason; the second writes the reasons again (the pool is full now); later
ticks find nothing changed, which is the steady cost of a queue of that length. Each size
gets a fresh database, created and dropped here.

    .venv/bin/python benchmarks/scheduler_tick.py                     # 1k, 10k, 50k queued
    .venv/bin/python benchmarks/scheduler_tick.py --sizes 1000,10000 --profile 10000

Goal: a steady tick under 250 ms with 10,000 queued jobs, growing no faster than n log n.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import math
import os
import pstats
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from kaon.executors.base import GangLaunch, NodeInventory, WorkerState
from kaon.server.app import build_plane, start_plane
from kaon.server.config import Settings
from kaon.server.context import ControlPlane
from kaon.server.db.models import Job, Node, Worker, Workspace, utcnow

NODES, GPUS = 125, 8
RUNNING_SHAPES = (4, 2, 1)  # per node: one GPU stays free
QUEUED_SHAPES = [1] * 6 + [2, 4, 8]
ADMIN_URL = "postgresql+asyncpg://root@127.0.0.1:5432/test"


class IdleExecutor:
    """An executor that starts nothing: launched workers get a handle and stay alive."""

    name = "idle"

    def inventory(self) -> list[NodeInventory]:
        return []

    def launch(self, gang: GangLaunch) -> list[WorkerState]:
        return [
            WorkerState(handle=f"{gang.job_id}-{gang.attempt}-{i}", alive=True, pid=1)
            for i in range(len(gang.workers))
        ]

    def status(self, handles: list[str]) -> list[WorkerState]:
        return [WorkerState(handle=h, alive=True, pid=1) for h in handles]

    def stop(self, handles: list[str], grace_s: float) -> None:
        return None

    def checkpoint_dir(self, job_id: str) -> Path:
        return Path(tempfile.gettempdir()) / job_id

    def logs(self, handle: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        return b""

    def set_listener(self, callback: Callable[[], None]) -> None:
        return None

    def close(self) -> None:
        return None


def _database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _admin(url: str, sql: str) -> None:
    """CREATE and DROP DATABASE, which cannot run inside a transaction."""
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def _spec(gpus: int) -> dict[str, object]:
    resources = {"cpu": 1.0, "memory": 2**30, "gpus": gpus, "gpu_type": None}
    return {"command": ["python", "train.py"], "resources": resources, "workers": 1}


async def fill(plane: ControlPlane, queued: int, seed: int = 0) -> None:
    """Running jobs on every node and `queued` jobs waiting, in bulk inserts."""
    rng = random.Random(seed)
    now = utcnow()
    async with plane.db.session() as s:
        workspace = await s.scalar(select(Workspace.id).where(Workspace.name == "default"))
        nodes = list((await s.execute(select(Node.id).order_by(Node.id))).scalars())
    assert workspace is not None and len(nodes) == NODES
    jobs: list[dict[str, object]] = []
    workers: list[dict[str, object]] = []
    for node in nodes:
        first = 0
        for gpus in RUNNING_SHAPES:
            job_id = uuid.uuid4().hex
            jobs.append(
                {
                    "id": job_id,
                    "workspace_id": workspace,
                    "spec": _spec(gpus),
                    "status": "running",
                    "attempt": 1,
                    "submitted_at": now - timedelta(seconds=120),
                    "started_at": now - timedelta(seconds=60),
                    "message": "running",
                }
            )
            workers.append(
                {
                    "job_id": job_id,
                    "attempt": 1,
                    "index": 0,
                    "node_id": node,
                    "cpu": 1.0,
                    "memory": 2**30,
                    "gpus": list(range(first, first + gpus)),
                    "handle": f"{job_id}-1-0",
                }
            )
            first += gpus
    for _ in range(queued):
        jobs.append(
            {
                "id": uuid.uuid4().hex,
                "workspace_id": workspace,
                "spec": _spec(rng.choice(QUEUED_SHAPES)),
                "status": "queued",
                "submitted_at": now - timedelta(seconds=rng.uniform(0, 86_400)),
                "attained_gpu_seconds": rng.choice([0.0, 0.0, rng.uniform(0, 1e5)]),
            }
        )
    async with plane.db.session() as s:
        for start in range(0, len(jobs), 5000):
            await s.execute(insert(Job), jobs[start : start + 5000])
        await s.execute(insert(Worker), workers)


class GcClock:
    """Time spent in the garbage collector since `spent` was last reset: with tens of
    thousands of objects per tick, full collections are a large part of a tick."""

    def __init__(self) -> None:
        self.spent = 0.0
        self._began = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.spent += time.perf_counter() - self._began

    def stop(self) -> None:
        gc.callbacks.remove(self._callback)


async def measure(
    admin_url: str, queued: int, ticks: int, profile: bool, gc_ms: list[float], freeze: bool
) -> list[float]:
    """Milliseconds of each of `ticks` ticks with `queued` jobs, on a fresh database;
    `gc_ms` gets the garbage collector's share of each."""
    name = f"kaon_tick_{os.getpid()}_{queued}"
    await _admin(admin_url, f"DROP DATABASE IF EXISTS {name}")
    await _admin(admin_url, f"CREATE DATABASE {name}")
    try:
        with tempfile.TemporaryDirectory() as home:
            settings = Settings(
                home=Path(home),
                database_url=_database(admin_url, name),
                port=0,
                local_nodes=NODES,
                node_gpus=str(GPUS),
                node_cpus=64.0,
                node_memory=512 * 2**30,
                bootstrap_token=uuid.uuid4().hex,
            )  # fmt: skip
            plane = build_plane(settings)
            await start_plane(plane)
            plane.jobs.executor = IdleExecutor()
            try:
                await fill(plane, queued)
                if freeze:  # what a server could do once started: old objects are not
                    gc.freeze()  # traversed by each full collection again
                times, collecting = [], GcClock()
                profiler = cProfile.Profile() if profile else None
                for tick in range(ticks):
                    if profiler is not None and tick == ticks - 1:
                        profiler.enable()
                    collecting.spent = 0.0
                    start = time.perf_counter()
                    await plane.jobs.run_once()
                    times.append((time.perf_counter() - start) * 1e3)
                    gc_ms.append(collecting.spent * 1e3)
                collecting.stop()
                if profiler is not None:
                    profiler.disable()
                    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
                return times
            finally:
                gc.unfreeze()
                await plane.db.dispose()
    finally:
        await _admin(admin_url, f"DROP DATABASE IF EXISTS {name}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000", help="queued jobs, comma-separated")
    parser.add_argument("--ticks", type=int, default=7, help="ticks per size (2 warm up)")
    parser.add_argument("--admin-url", default=os.environ.get("KAON_BENCH_PG", ADMIN_URL))
    parser.add_argument("--profile", type=int, default=0, help="profile the last tick of size")
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() after filling, before the ticks"
    )
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    print(f"{NODES} nodes x {GPUS} GPUs, {NODES * len(RUNNING_SHAPES)} running jobs")
    print(f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    for n in sizes:
        gc_ms: list[float] = []
        times = await measure(
            args.admin_url, n, args.ticks, n == args.profile, gc_ms, args.gc_freeze
        )
        steady = statistics.median(times[2:])
        rows.append((n, steady))
        print(
            f"{n:6d} queued  first tick {times[0]:7.1f} ms  second {times[1]:7.1f} ms  "
            f"steady median {steady:7.1f} ms  worst {max(times[2:]):7.1f} ms  "
            f"(garbage collector {statistics.median(gc_ms[2:]):5.1f} ms of it)"
        )
    base_n, base_ms = rows[0]
    for n, ms in rows:
        nlogn = (n * math.log(n)) / (base_n * math.log(base_n))
        print(
            f"{n:6d} queued: {ms / base_ms:5.2f}x the {base_n} tick; n log n grew "
            f"{nlogn:5.2f}x; ratio {ms / base_ms / nlogn:4.2f}"
        )
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
