"""What the audit log costs a submit: job submit latency with the audit log on and off.

Two control planes run side by side on loopback, each on a fresh SQLite of its own (or a
fresh PostgreSQL database each, with --pg-admin-url, dropped at the end), identical but
for ``KAON_AUDIT_LOG``; their reconcilers are off, so only the API's work is timed (the
submit: authenticate, check the spec, the quota and the pool, insert, commit; with the
log on, the chained record is appended in the same transaction, one more statement).
Submits alternate between the two, one each, so drift of a shared, busy machine falls on
both alike; each round's ratio of medians is reported, and the median of those, so a
burst of load spoils one round, not the result. The goal: the log on costs at most 10%.

    .venv/bin/python benchmarks/audit_overhead.py [--submits 300] [--rounds 5] [--json]
    .venv/bin/python benchmarks/audit_overhead.py --pg-admin-url postgresql://USER@HOST/DB
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import uvicorn
from sqlalchemy import event
from sqlalchemy.engine import Engine

from kaon.server.app import create_app
from kaon.server.config import Settings, normalize_database_url

TOKEN = "kaon_bench-admin-" + "x" * 24
GOAL_RATIO = 1.10
SPEC = {"command": ["python", "-c", "pass"], "resources": {"cpu": 0.1}}


def serve(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    settings = settings.with_(port=sock.getsockname()[1])
    app = create_app(settings, run_reconcilers=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{settings.port}"


def pg_database(admin_url: str, drop: str | None = None) -> str:
    """A fresh, empty PostgreSQL database next to `admin_url`'s (or, with `drop`, drop
    that one)."""
    import asyncpg

    name = drop or f"kaon_bench_{secrets.token_hex(4)}"
    sql = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' if drop else f'CREATE DATABASE "{name}"'

    async def run() -> None:
        conn = await asyncpg.connect(admin_url)
        await conn.execute(sql)
        await conn.close()

    asyncio.run(run())
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


def count_statements(modes: list[str], servers: list[Any]) -> dict[str, int]:
    """SQL statements each control plane sends (counted on its engine): unlike times,
    the same on a quiet machine and a busy one."""
    counts: dict[str, int] = {}
    by_url = {}
    for (server, _), mode in zip(servers, modes, strict=True):
        by_url[str(server.config.app.state.plane.db.engine.url)] = mode

    def count(conn: Any, *_args: Any) -> None:
        mode = by_url.get(str(conn.engine.url))
        if mode is not None:
            counts[mode] = counts.get(mode, 0) + 1

    event.listen(Engine, "before_cursor_execute", count)
    return counts


def submit_ms(http: httpx.Client) -> float:
    t = time.perf_counter()
    r = http.post("/api/v1/workspaces/default/jobs", json=SPEC)
    elapsed = (time.perf_counter() - t) * 1000
    r.raise_for_status()
    return elapsed


def summary(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {
        "p10_ms": round(times[int(0.1 * (len(times) - 1))], 3),
        "median_ms": round(statistics.median(times), 3),
        "mean_ms": round(statistics.fmean(times), 3),
        "p90_ms": round(times[int(0.9 * (len(times) - 1))], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--submits", type=int, default=300, help="timed submits per mode a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=1, help="submits in a row per mode")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--pg-admin-url", help="PostgreSQL to make two fresh databases on")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kaon-bench-audit-"))
    bases: dict[str, str] = {}
    servers = []
    made: list[str] = []
    for mode, audit in (("off", False), ("on", True)):
        home = root / mode
        url = str(home / "kaon.db")
        if args.pg_admin_url:
            url = pg_database(args.pg_admin_url)
            made.append(urlsplit(url).path.lstrip("/"))
        settings = Settings(
            home=home,
            database_url=normalize_database_url(url),
            bootstrap_token=TOKEN,
            node_cpus=10_000.0,  # room for every submit: no quota or capacity refusal
            max_queued_jobs=10**9,  # nothing runs, so every submit stays queued
            audit_log=audit,
        )
        server, thread, bases[mode] = serve(settings)
        servers.append((server, thread))
    statements = count_statements(list(bases), servers)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    clients = {m: httpx.Client(base_url=b, headers=headers) for m, b in bases.items()}
    for http in clients.values():
        for _ in range(args.warmup):
            submit_ms(http)
    rounds = []
    statements.clear()
    for _ in range(args.rounds):
        times: dict[str, list[float]] = {"off": [], "on": []}
        while len(times["on"]) < args.submits:
            for mode, http in clients.items():
                times[mode].extend(submit_ms(http) for _ in range(args.block))
        rounds.append({m: summary(t) for m, t in times.items()})
    for http in clients.values():
        http.close()
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=30)
    for name in made:
        pg_database(args.pg_admin_url, drop=name)
    ratios = [r["on"]["median_ms"] / r["off"]["median_ms"] for r in rounds]
    ratio = statistics.median(ratios)
    fast = [r["on"]["p10_ms"] / r["off"]["p10_ms"] for r in rounds]
    per_submit = {m: round(n / (args.submits * args.rounds), 2) for m, n in statements.items()}
    result = {
        "database": "postgresql" if args.pg_admin_url else "sqlite",
        "submits_per_mode": args.submits * args.rounds,
        "rounds": rounds,
        "round_ratios": [round(r, 3) for r in ratios],
        "ratio": round(ratio, 3),
        "ratio_p10": round(statistics.median(fast), 3),
        "statements_per_submit": per_submit,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"submit latency on {result['database']}, {args.rounds} rounds of {args.submits}"
          " submits each way, alternating:")  # fmt: skip
    for i, r in enumerate(rounds, 1):
        off, on = r["off"], r["on"]
        print(f"  round {i}: off median {off['median_ms']:6.2f} ms (p90 {off['p90_ms']:6.2f})"
              f"  on median {on['median_ms']:6.2f} ms (p90 {on['p90_ms']:6.2f})"
              f"  on/off {ratios[i - 1]:.3f}")  # fmt: skip
    print(f"  on/off of the fastest tenth (p10), median of the rounds: {result['ratio_p10']:.3f}")
    print(f"  SQL statements per submit: off {per_submit['off']}, on {per_submit['on']}")
    verdict = "within" if ratio <= GOAL_RATIO else "OVER"
    print(f"  on/off, median of the rounds: {ratio:.3f}  {verdict} the {GOAL_RATIO:.2f} goal")


if __name__ == "__main__":
    main()
