"""The console's jobs page with 10,000 jobs in the database: how long the server takes.

The jobs page asks the API for one page of 50 jobs (newest first, optionally of one
state) and reads the page's total from X-Total-Count; the next page is asked for with
the previous page's cursor. This fills a fresh SQLite (or the PostgreSQL named by
--database-url) with --jobs jobs spread over every state and two workspaces, serves the
real app on loopback (its reconcilers off, so nothing changes the rows meanwhile), and
times each request the page makes, from send to last byte, over --runs repetitions.
Loopback adds well under a millisecond, so these are the server's times. The goal is
under 300 ms.

    .venv/bin/python benchmarks/console_jobs.py [--jobs 10000] [--runs 30] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import uvicorn
from sqlalchemy import select

from kaon.core.jobs import JobSpec, JobStatus
from kaon.server.app import create_app
from kaon.server.config import Settings, normalize_database_url
from kaon.server.db.models import Job, Workspace
from kaon.server.db.session import Database

TOKEN = "kaon_bench-admin-" + "x" * 24
PAGE = 50
GOAL_MS = 300.0


async def fill(url: str, n: int) -> None:
    """`n` jobs, a minute apart, cycling through every state; a tenth in a second
    workspace (which the default workspace's page must skip)."""
    db = Database(url)
    spec = JobSpec(command=["python", "train.py"]).model_dump(mode="json")
    states = list(JobStatus)
    start = datetime.now(UTC) - timedelta(minutes=n)
    async with db.unit_of_work() as s:
        default = await s.scalar(select(Workspace.id).where(Workspace.name == "default"))
        other = Workspace(id="w-bench-other", name="other")
        s.add(other)
        await s.flush()
        s.add_all(
            Job(
                id=f"j-bench{i:08d}",
                workspace_id=other.id if i % 10 == 9 else default,
                name=f"job-{i}",
                spec=spec,
                status=states[i % len(states)].value,
                waiting_reason="needs 8 CPUs; 2 free"
                if states[i % len(states)] is JobStatus.QUEUED
                else None,
                submitted_at=start + timedelta(minutes=i),
            )
            for i in range(n)
        )
        await s.commit()
    await db.dispose()


def serve(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = settings.with_(port=port)
    app = create_app(settings, run_reconcilers=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{port}"


def timed(http: httpx.Client, path: str, runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r = http.get(path)
        times.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1),
        "max_ms": round(times[-1], 1),
    }


def deep_cursor(http: httpx.Client, path: str, pages: int) -> str:
    """The cursor of page `pages + 1`, reached by following the pages before it."""
    cursor = ""
    for _ in range(pages):
        r = http.get(f"{path}&cursor={cursor}" if cursor else path)
        cursor = r.headers["X-Next-Cursor"]
    return cursor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--database-url", help="a PostgreSQL URL (default: a fresh SQLite)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kaon-bench-console-"))
    url = normalize_database_url(args.database_url or str(home / "kaon.db"))
    settings = Settings(home=home, database_url=url, bootstrap_token=TOKEN, audit_log=False)
    server, thread, base = serve(settings)  # migrates and makes the default workspace
    asyncio.run(fill(url, args.jobs))
    jobs = f"/api/v1/workspaces/default/jobs?limit={PAGE}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        total = http.get(jobs).headers["X-Total-Count"]
        cases = {
            "first page": jobs,
            "first page, state=queued": f"{jobs}&status=queued",
            "page 100 (by cursor)": f"{jobs}&cursor={deep_cursor(http, jobs, 99)}",
            "running + starting": f"{jobs}&status=running&status=starting",
        }
        results = {name: timed(http, path, args.runs) for name, path in cases.items()}
    server.should_exit = True
    thread.join(timeout=30)
    if args.json:
        print(json.dumps({"jobs": args.jobs, "workspace_total": int(total), **results}))
        return
    db = "PostgreSQL" if args.database_url else "SQLite"
    print(f"{args.jobs} jobs on {db} ({total} in the workspace shown), {args.runs} runs each:")
    for name, r in results.items():
        ok = "ok" if r["p95_ms"] < GOAL_MS else f"OVER the {GOAL_MS:.0f} ms goal"
        print(f"  {name:28} median {r['median_ms']:6.1f} ms  p95 {r['p95_ms']:6.1f} ms  {ok}")


if __name__ == "__main__":
    main()
