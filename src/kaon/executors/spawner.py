"""The executor's side of the spawner (`_spawner`): start it once per folder, ask it to
fork supervisors, and hear at once when one has ended.

The socket's name carries a digest of the supervisor's code, so an upgraded Kaon starts a
spawner of its own instead of forking supervisors from code loaded before the upgrade
(the old one leaves when idle). The spawner is started as nobody's child (a shell starts
it in the background and exits), because a Ray actor's children die with it.

Anything wrong with the spawner (it cannot start, it died) makes `spawn` raise OSError,
and the executor starts the supervisor the slow way: correctness never depends on it.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent
CODE = HERE / "_spawner.py"
START_WAIT_S = 5.0
CALL_S = 5.0


def _digest() -> str:
    digest = hashlib.sha256()
    for name in ("_spawner.py", "_shim.py", "_usage.py"):
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()[:12]


class SpawnerClient:
    """One connection to the spawner of `folder`, started on first use."""

    def __init__(self, folder: Path, on_ended: Callable[[int], None] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        # In the temp folder, named after the run folder: a socket's path must stay under
        # 108 bytes, which a deep run folder would pass.
        where = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
        self.path = Path(tempfile.gettempdir()) / f"kaon-spawner-{where}-{_digest()}.sock"
        self.log = folder / "spawner.log"
        self.on_ended = on_ended
        self._sock: socket.socket | None = None
        self._replies: list[str] = []
        self._reply = threading.Condition()
        self._lock = threading.Lock()

    def spawn(self, worker_dir: Path) -> int:
        """Fork a supervisor for `worker_dir` (its launch.json written); its pid."""
        with self._lock:
            sock = self._connected()
            with self._reply:
                self._replies.clear()
            try:
                sock.sendall(f"spawn {worker_dir}\n".encode())
            except OSError:
                self._drop()
                raise
            answer = self._await_reply()
        verb, _, value = answer.partition(" ")
        if verb != "pid":
            raise OSError(f"the spawner refused: {value}")
        return int(value)

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- connection ------------------------------------------------------------------------

    def _connected(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
        except OSError:
            self._start()
            sock.connect(str(self.path))
        self._sock = sock
        threading.Thread(target=self._read, args=(sock,), daemon=True).start()
        return sock

    def _start(self) -> None:
        script = 'exec 0</dev/null; "$0" "$1" "$2" >/dev/null 2>>"$3" &'
        subprocess.run(
            ["/bin/sh", "-c", script, sys.executable, str(CODE), str(self.path), str(self.log)],
            start_new_session=True,
            timeout=START_WAIT_S,
            check=True,
        )
        deadline = time.monotonic() + START_WAIT_S
        while not self.path.exists():
            if time.monotonic() > deadline:
                raise OSError(f"the spawner did not start (see {self.log})")
            time.sleep(0.005)

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _await_reply(self) -> str:
        deadline = time.monotonic() + CALL_S
        with self._reply:
            while not self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self._sock is None:
                    self._drop()
                    raise OSError("the spawner did not answer")
                self._reply.wait(left)
            return self._replies.pop(0)

    def _read(self, sock: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self._reply:
                    if self._sock is sock:
                        self._sock = None
                    self._reply.notify_all()
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self._line(line.decode())

    def _line(self, line: str) -> None:
        if line.startswith("ended "):
            if self.on_ended is not None:
                self.on_ended(int(line.split()[1]))
            return
        with self._reply:
            self._replies.append(line)
            self._reply.notify_all()
