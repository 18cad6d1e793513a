"""The supervisor asked to stop before its worker exists: it writes why and exits, and
the worker never starts (before, SIGTERM's default action killed it with no exit status,
and the worker read as lost)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import kaon.executors._shim as shim


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


def test_a_stop_while_the_secrets_are_fetched_ends_it_before_the_worker_starts(
    tmp_path: Path,
) -> None:
    started = tmp_path / "started"
    env = {
        "PATH": os.environ["PATH"],
        "KAON_API_URL": f"http://127.0.0.1:{closed_port()}",  # unreachable: it retries
        "KAON_JOB_ID": "j-000000000001",
        "KAON_JOB_TOKEN": "t",
        "KAON_SECRET_ENV": "API_KEY",
    }
    launch = {
        "command": [sys.executable, "-c", f"open({str(started)!r}, 'w').close()"],
        "env": env,
        "cwd": str(tmp_path),
        "grace_s": 3,
    }
    (tmp_path / "launch.json").write_text(json.dumps(launch))
    proc = subprocess.Popen([sys.executable, shim.__file__, str(tmp_path)])
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "log").exists():  # past start-up, into the fetch
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0  # it exits by itself, not by the signal
    finally:
        proc.kill()
    ended = json.loads((tmp_path / "exit.json").read_text())
    assert ended == {"exit_code": None, "reason": "stopped before it started"}
    assert not started.exists() and not (tmp_path / "child.json").exists()
