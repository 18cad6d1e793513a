"""The supervisor of one worker: started by the local executor, outlives the server.

It runs as ``python _shim.py WORKER_DIR`` in a session of its own, with only the standard
library and psutil, so it starts in milliseconds and survives a crash of the control
plane. It:

- starts the worker's command in a process group of its own, output into ``WORKER_DIR/log``;
- enforces the worker's memory limit by watching the resident memory of the whole process
  tree, and stops an offender with a reason a user can read;
- on SIGTERM forwards SIGTERM to the group, waits the grace period, then sends SIGKILL;
- writes the true exit status to ``WORKER_DIR/exit.json`` (atomically) when the worker ends,
  so a control plane that restarts later still learns how the worker ended.

On a Ray node it is started out of the node agent's process tree (so it outlives the
agent), and it watches ``watch_pid`` (the node's raylet): when the node leaves the
cluster, the worker is stopped at once and reported lost, so it cannot run on while its
job is placed again elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

MEMORY_CHECK_S = 0.2


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _tree_rss(pid: int) -> int:
    import psutil  # on first use: a worker that ends within one check never pays for it

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _describe(code: int) -> tuple[int, str | None]:
    """Exit code as a shell reports it (128+N for signal N) and a reason for signals."""
    if code >= 0:
        return code, None
    sig = -code
    try:
        name = signal.Signals(sig).name
    except ValueError:  # pragma: no cover
        name = f"signal {sig}"
    return 128 + sig, f"killed by {name}"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def main(worker_dir: Path) -> int:
    spec = json.loads((worker_dir / "launch.json").read_text())
    watch_pid = spec.get("watch_pid")
    grace_s = float(spec.get("grace_s", 10.0))
    memory_limit = int(spec.get("memory", 0))
    log = open(worker_dir / "log", "ab", buffering=0)
    try:
        child = subprocess.Popen(
            spec["command"],
            cwd=spec["cwd"],
            env=spec["env"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    except OSError as e:
        log.write(f"kaon: cannot start {spec['command'][0]!r}: {e}\n".encode())
        _write_json(worker_dir / "exit.json", {"exit_code": 127, "reason": f"cannot start: {e}"})
        return 0
    _write_json(worker_dir / "child.json", {"pid": child.pid})

    done = threading.Event()

    def wait_child() -> None:
        child.wait()
        done.set()

    threading.Thread(target=wait_child, daemon=True).start()
    state: dict[str, Any] = {"kill_at": None, "reason": None, "lost": False}

    def on_term(_sig: int, _frame: Any) -> None:
        if state["kill_at"] is None:
            stop_file = worker_dir / "stop.json"
            grace = grace_s
            if stop_file.exists():
                grace = float(json.loads(stop_file.read_text()).get("grace_s", grace_s))
            state["kill_at"] = time.monotonic() + grace
            _killpg(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while not done.wait(MEMORY_CHECK_S):
        if state["kill_at"] is not None and time.monotonic() >= state["kill_at"]:
            _killpg(child.pid, signal.SIGKILL)
        if watch_pid and not state["lost"] and _gone(int(watch_pid)):
            state["lost"] = True
            state["reason"] = "lost: its node left the Ray cluster"
            log.write(f"\nkaon: {state['reason']}\n".encode())
            _killpg(child.pid, signal.SIGKILL)
        if memory_limit and state["reason"] is None:
            used = _tree_rss(child.pid)
            if used > memory_limit:
                state["reason"] = (
                    f"out of memory: the worker used {_gib(used)}, over its limit of "
                    f"{_gib(memory_limit)}; ask for more with resources.memory"
                )
                log.write(f"\nkaon: {state['reason']}\n".encode())
                _killpg(child.pid, signal.SIGKILL)
    _killpg(child.pid, signal.SIGKILL)  # leftovers of the group
    code, reason = _describe(child.returncode)
    ended = {"exit_code": None if state["lost"] else code, "reason": state["reason"] or reason}
    if state["lost"]:
        ended["lost"] = True
    _write_json(worker_dir / "exit.json", ended)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
