"""What encryption and the API cost an artifact: push and pull of one large file, against
``cp`` of the same file in the same run.

A control plane runs in a process of its own on loopback (SQLite, the local blob store,
the audit log on, no reconcilers), so the client and the server do not share one Python
interpreter. The file is random bytes (nothing compresses). Each round times, in turn:

- ``cp``: the file to a new file on the same disk (no fsync, as ``cp`` does not), and
  ``cp+fsync``: the same, then fsync'ed, as the blob store does with every value, and
  ``py-copy``: a read and write loop in Python, a MiB at a time (``cp`` copies inside the
  kernel, with ``copy_file_range``; anything that touches the bytes, as hashing and
  encryption must, pays for bringing them into user space);
- push: ``client.artifacts.push`` (the client hashes the file, the server receives it,
  recomputes its sha256, seals it in 1 MiB AES-256-GCM records and writes it, fsync'ed);
- pull: ``client.artifacts.download`` (the server opens and verifies every record and
  re-hashes the plaintext; the client hashes it again and writes it);
- http: a PUT of the same file to a bare Starlette endpoint under the same uvicorn that
  only counts the bytes: the transport's own ceiling on this machine, for reading the
  two above (what is left between http and push is hashing, sealing and writing).

Push, pull and http also report the CPU seconds per GiB that the client and the server
each spent (user and system, every thread): unlike wall time, that barely moves with what
else the machine runs, so it is the number to compare between versions on a busy machine.

Each push is of new bytes (the last 8 bytes of the file change between rounds), so none
is skipped as a duplicate. The median of the rounds is reported; the goal is push and
pull at 0.5x the speed of ``cp`` or better.

    .venv/bin/python benchmarks/artifacts.py [--size 1Gi] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from kaon.core.resources import parse_memory
from kaon.sdk.client import Client

TOKEN = "kaon_bench-admin-" + "x" * 24
GOAL_RATIO = 0.5
MiB = 2**20

SERVE = """
import sys, uvicorn
from pathlib import Path
from kaon.server.app import create_app
from kaon.server.config import Settings, normalize_database_url
home, port = Path(sys.argv[1]), int(sys.argv[2])
settings = Settings(home=home, database_url=normalize_database_url(str(home / "kaon.db")),
                    port=port, bootstrap_token=sys.argv[3])
uvicorn.run(create_app(settings, run_reconcilers=False), host="127.0.0.1", port=port,
            log_level="warning")
"""

DRAIN = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def drain(request):
    n = 0
    async for chunk in request.stream():
        n += len(chunk)
    return Response(str(n))

app = Starlette(routes=[Route("/drain", drain, methods=["PUT"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def start_server(home: Path, script: str = SERVE) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", script, str(home), str(port), TOKEN])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz")
            return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def put_file(url: str, path: Path) -> None:
    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(MiB):
                yield chunk

    httpx.put(f"{url}/drain", content=chunks(), timeout=600).raise_for_status()


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


def freshen(path: Path) -> None:
    """New bytes at the end, so the next push is not a duplicate of the last."""
    with path.open("r+b") as f:
        f.seek(max(0, path.stat().st_size - 8))
        f.write(secrets.token_bytes(8))


def copy_synced(src: Path, dst: Path) -> None:
    subprocess.run(["cp", src, dst], check=True)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_in_python(src: Path, dst: Path) -> None:
    with src.open("rb") as f, dst.open("wb") as out:
        while chunk := f.read(MiB):
            out.write(chunk)


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user and system, every thread) of this process or of `pid`: what a step
    costs whatever else the machine runs, unlike its wall time."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuMeter:
    """CPU seconds of the client (this process) and of one server, per step."""

    def __init__(self) -> None:
        self.client: dict[str, list[float]] = {}
        self.server: dict[str, list[float]] = {}

    def timed(self, name: str, server_pid: int, fn: Any) -> float:
        c0, s0 = cpu_seconds(), cpu_seconds(server_pid)
        wall = timed(fn)
        self.client.setdefault(name, []).append(cpu_seconds() - c0)
        self.server.setdefault(name, []).append(cpu_seconds(server_pid) - s0)
        return wall


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(size: int, rounds: int, work: Path) -> dict[str, Any]:
    src = work / "big.bin"
    write_random(src, size)
    load_before = os.getloadavg()[0]
    proc, url = start_server(work / "home")
    drain, drain_url = start_server(work, DRAIN)
    cpu = CpuMeter()
    results: dict[str, list[float]] = {
        "cp": [],
        "cp+fsync": [],
        "py-copy": [],
        "http": [],
        "push": [],
        "pull": [],
    }
    try:
        with Client(url, token=TOKEN, workspace="default", timeout=600) as client:
            for i in range(rounds):
                freshen(src)
                dst = work / f"cp-{i}.bin"
                results["cp"].append(timed(lambda: subprocess.run(["cp", src, dst], check=True)))  # noqa: B023
                dst.unlink()
                results["cp+fsync"].append(timed(lambda: copy_synced(src, dst)))  # noqa: B023
                dst.unlink()
                results["py-copy"].append(timed(lambda: copy_in_python(src, dst)))  # noqa: B023
                dst.unlink()
                results["http"].append(
                    cpu.timed("http", drain.pid, lambda: put_file(drain_url, src))
                )
                pushed: dict[str, str] = {}

                def push() -> None:
                    pushed["ref"] = client.artifacts.push("bench", src).ref  # noqa: B023

                results["push"].append(cpu.timed("push", proc.pid, push))
                out = work / f"pull-{i}"
                results["pull"].append(
                    cpu.timed(
                        "pull",
                        proc.pid,
                        lambda: client.artifacts.download(pushed["ref"], out),  # noqa: B023
                    )
                )
                shutil.rmtree(out)
    finally:
        for server in (proc, drain):
            server.terminate()
            server.wait(timeout=30)
    medians = {k: statistics.median(v) for k, v in results.items()}
    speed = {k: size / MiB / t for k, t in medians.items()}
    return {
        "size_bytes": size,
        "rounds": rounds,
        "seconds": medians,
        "MiB_per_s": speed,
        "push_vs_cp": speed["push"] / speed["cp"],
        "pull_vs_cp": speed["pull"] / speed["cp"],
        "push_vs_cp_fsync": speed["push"] / speed["cp+fsync"],
        "goal": GOAL_RATIO,
        "load_average": [load_before, os.getloadavg()[0]],
        "cpu_s_per_GiB": {
            k: {
                "client": statistics.median(cpu.client[k]) * 2**30 / size,
                "server": statistics.median(cpu.server[k]) * 2**30 / size,
            }
            for k in cpu.client
        },
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1Gi", help="file size (1Gi, 256Mi, ...)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dir", type=Path, default=None, help="where to work (a temp dir)")
    args = parser.parse_args()
    size = parse_memory(args.size)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="kaon-bench-artifacts-") as tmp:
        report = run(size, args.rounds, Path(tmp))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"file: {size / MiB:.0f} MiB, median of {args.rounds} rounds")
    before, after = report["load_average"]
    print(f"  machine: {report['cpus']} CPUs, load average {before:.1f} before, {after:.1f} after")
    for key in ("cp", "cp+fsync", "py-copy", "http", "push", "pull"):
        print(f"  {key:8s} {report['seconds'][key]:7.2f} s  {report['MiB_per_s'][key]:8.1f} MiB/s")
    for key, used in report["cpu_s_per_GiB"].items():
        print(
            f"  {key:8s} CPU per GiB: client {used['client']:.2f} s, server {used['server']:.2f} s"
        )
    for key in ("push_vs_cp", "pull_vs_cp", "push_vs_cp_fsync"):
        verdict = "ok" if report[key] >= GOAL_RATIO else "below the goal"
        print(f"  {key}: {report[key]:.2f}x (goal >= {GOAL_RATIO}x: {verdict})")


if __name__ == "__main__":
    main()
