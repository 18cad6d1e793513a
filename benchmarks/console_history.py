"""The pool's history (`GET /api/v1/history`, the overview's and quotas page's charts):
how long the server takes, and how much memory a full day of it holds.

Each answer samples the pool once (ready nodes, active workers, job counts, quotas and
the GPU workers' latest utilisation) and then copies the recorded points of the window
the caller asked for. This fills a fresh SQLite (or the PostgreSQL named by
--database-url) with --nodes nodes, --workspaces workspaces with quotas, --jobs running
one-worker GPU jobs among them, and --usage-hours of each job's GPU utilisation samples
(one every 5 s, as a supervisor sends them); fills the control plane's memory with a full
day of points (one every 15 s, every workspace in each); serves the real app on loopback
(reconcilers off) and times the requests the pages make, send to last byte.

    .venv/bin/python benchmarks/console_history.py [--workspaces 20] [--jobs 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

import httpx
from console_jobs import serve, timed
from sqlalchemy import select

from kaon.core.usage import GPU_UTIL
from kaon.server.config import Settings, normalize_database_url
from kaon.server.db.models import Job, Metric, Node, Quota, Worker, Workspace
from kaon.server.db.session import Database
from kaon.server.services.history import (
    INTERVAL_S,
    RETENTION_S,
    PoolHistory,
    PoolPoint,
    Share,
    SpacePoint,
)

TOKEN = "kaon_bench-admin-" + "x" * 24
SAMPLE_EVERY_S = 5.0  # a supervisor's usage interval


async def fill(url: str, nodes: int, workspaces: int, jobs: int, usage_hours: float) -> None:
    db = Database(url)
    now = time.time()
    async with db.unit_of_work() as s:
        for n in range(nodes):
            gpus = [{"index": i, "model": "H100", "memory": 80 * 2**30} for i in range(8)]
            s.add(
                Node(
                    id=f"n-{n}",
                    name=f"node-{n}",
                    executor="local",
                    address="-",
                    cpu=64.0,
                    memory=2**40,
                    gpus=gpus,
                )
            )
        s.add_all(Workspace(id=f"w-{w}", name=f"team-{w}") for w in range(workspaces))
        await s.flush()
        s.add_all(
            Quota(workspace_id=f"w-{w}", gpus=8, cpu=64, memory=2**39) for w in range(workspaces)
        )
        await s.flush()
        for j in range(jobs):
            job_id = f"j-bench{j:06d}"
            s.add(Job(id=job_id, workspace_id=f"w-{j % workspaces}", spec={}, status="running"))
            await s.flush()
            node, gpu = divmod(j, 8)
            s.add(
                Worker(
                    job_id=job_id,
                    attempt=0,
                    index=0,
                    node_id=f"n-{node % nodes}",
                    cpu=8.0,
                    memory=2**34,
                    gpus=[gpu],
                    active=True,
                )
            )
            count = int(usage_hours * 3600 / SAMPLE_EVERY_S)
            s.add_all(
                Metric(
                    job_id=job_id,
                    worker=0,
                    time=now - i * SAMPLE_EVERY_S,
                    name=GPU_UTIL,
                    value=80.0,
                )
                for i in range(count)
            )
        await s.commit()
        assert await s.scalar(select(Job.id).limit(1)) is not None
    await db.dispose()


def full_day(workspaces: int) -> PoolHistory:
    """A day of points, every workspace busy in each, as the recorder would keep them."""
    history = PoolHistory(INTERVAL_S, RETENTION_S)
    start = time.time() - RETENTION_S
    for i in range(history.points.maxlen or 0):
        spaces = {
            f"w-{w}": SpacePoint(
                name=f"team-{w}",
                cpus=Share(float(i % 70), 64.0, float(max(0, i % 70 - 64)), 0.0),
                memory=Share(float(2**34 + i), float(2**39)),
                gpus=Share(float(i % 9), 8.0, float(max(0, i % 9 - 8)), 0.5),
                running=i % 5,
                queued=i % 3,
                gpu_util=float(i % 100),
            )
            for w in range(workspaces)
        }
        history.record(
            PoolPoint(
                time=start + i * INTERVAL_S,
                capacity=(640.0, 2.0**43, 80.0),
                allocated=(float(i % 600), float(i), float(i % 80)),
                running=i % 50,
                queued=i % 20,
                gpu_util=float(i % 100),
                spaces=spaces,
            )
        )
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--workspaces", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--usage-hours", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--database-url", help="a PostgreSQL URL (default: a fresh SQLite)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kaon-bench-history-"))
    url = normalize_database_url(args.database_url or str(home / "kaon.db"))
    settings = Settings(home=home, database_url=url, bootstrap_token=TOKEN, audit_log=False)
    server, thread, base = serve(settings)  # migrates and makes the default workspace
    asyncio.run(fill(url, args.nodes, args.workspaces, args.jobs, args.usage_hours))
    tracemalloc.start()
    day = full_day(args.workspaces)
    held_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    plane = server.config.app.state.plane  # type: ignore[attr-defined]
    plane.history.points, plane.history.names = day.points, day.names  # as after a day
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        cases = {
            "1 h (the quotas page, the overview)": "/api/v1/history?window_s=3600",
            "24 h": "/api/v1/history?window_s=86400",
        }
        sizes = {name: len(http.get(path).content) for name, path in cases.items()}
        results = {name: timed(http, path, args.runs) for name, path in cases.items()}
    server.should_exit = True
    thread.join(timeout=30)
    shape = {
        "points": len(day.points),
        "workspaces": args.workspaces,
        "jobs": args.jobs,
        "usage_rows": int(args.jobs * args.usage_hours * 3600 / SAMPLE_EVERY_S),
        "memory_mb": round(held_mb, 1),
    }
    if args.json:
        print(json.dumps({**shape, "answers": results, "bytes": sizes}))
        return
    db = "PostgreSQL" if args.database_url else "SQLite"
    print(
        f"{shape['points']} points x {args.workspaces} workspaces in memory: "
        f"{shape['memory_mb']} MiB; {args.jobs} running GPU jobs, {shape['usage_rows']} "
        f"utilisation rows on {db}; {args.runs} runs each:"
    )
    for name, r in results.items():
        kib = sizes[name] / 1024
        line = f"median {r['median_ms']:6.1f} ms  p95 {r['p95_ms']:6.1f} ms"
        print(f"  {name:38} {line}  {kib:7.0f} KiB")


if __name__ == "__main__":
    main()
