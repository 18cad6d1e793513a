"""The spawner: supervisors forked from a process that has their code loaded, and the
word, at once, that one has ended. Real processes, a real Unix socket."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil

from kaon.executors.spawner import SpawnerClient


def worker_dir(root: Path, name: str, code: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    spec = {"command": [sys.executable, "-c", code], "cwd": str(root), "env": dict(os.environ),
            "memory": 0, "grace_s": 1.0}  # fmt: skip
    (folder / "launch.json").write_text(json.dumps(spec))
    return folder


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path.name}"
        time.sleep(0.01)


class TestSpawner:
    def test_a_forked_supervisor_runs_the_worker_and_says_when_it_ended(
        self, tmp_path: Path
    ) -> None:
        ended: list[int] = []
        seen = threading.Event()
        client = SpawnerClient(
            tmp_path / "runs", on_ended=lambda pid: (ended.append(pid), seen.set())
        )
        try:
            folder = worker_dir(tmp_path, "w0", "print('hello')")
            pid = client.spawn(folder)
            assert seen.wait(20), "no word of the end"
            assert ended == [pid]
            assert json.loads((folder / "exit.json").read_text())["exit_code"] == 0
            assert (folder / "log").read_text() == "hello\n"
            again = client.spawn(worker_dir(tmp_path, "w1", "import sys; sys.exit(3)"))
            wait_for(tmp_path / "w1" / "exit.json")
            assert json.loads((tmp_path / "w1" / "exit.json").read_text())["exit_code"] == 3
            assert again != pid
        finally:
            client.close()

    def test_supervisors_outlive_their_spawner(self, tmp_path: Path) -> None:
        client = SpawnerClient(tmp_path / "runs")
        flag = tmp_path / "go"
        code = f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.02)"
        folder = worker_dir(tmp_path, "w0", code)
        try:
            supervisor = psutil.Process(client.spawn(folder))
            spawner = supervisor.parent()
            assert spawner is not None and "_spawner.py" in " ".join(spawner.cmdline())
            spawner.send_signal(signal.SIGKILL)
            spawner.wait(10)
            assert supervisor.is_running()  # it carries on, and records the real end
            flag.touch()
            wait_for(folder / "exit.json")
            assert json.loads((folder / "exit.json").read_text())["exit_code"] == 0
        finally:
            client.close()

    def test_a_command_that_cannot_start_is_reported_not_hidden(self, tmp_path: Path) -> None:
        client = SpawnerClient(tmp_path / "runs")
        folder = tmp_path / "w0"
        folder.mkdir()
        spec = {"command": ["/no/such/program"], "cwd": str(tmp_path), "env": {}, "memory": 0}
        (folder / "launch.json").write_text(json.dumps(spec))
        try:
            client.spawn(folder)
            wait_for(folder / "exit.json")
            ended = json.loads((folder / "exit.json").read_text())
            assert ended["exit_code"] == 127 and "cannot start" in ended["reason"]
        finally:
            client.close()
