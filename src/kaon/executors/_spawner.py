"""The spawner: a small, single-threaded process that forks a worker's supervisor on
request, so a launch does not pay for a Python start.

A supervisor (`_shim`) started as ``python _shim.py`` costs a Python start and its
imports: 25-50 ms on a busy machine, most of a trivial job's life. The spawner has that
code loaded already; for each launch it forks (about a millisecond), and the child, in a
session of its own, becomes the supervisor. Supervisors are orphans of nobody that
matters: the spawner may die, and so may whoever started it (the control plane, a node
agent), and they carry on.

Protocol, one line each way over a Unix socket::

    -> spawn <worker dir>          <- pid <pid>          (or: error <why>)
                                   <- ended <pid>        (to every connection, when a
                                                          supervisor it forked exits)

The ``ended`` lines tell the executor at once that a worker's end is on disk, instead of
it finding out at its next poll. The spawner leaves when it has had no connection and no
living supervisor for `IDLE_EXIT_S` (its executor has gone: a new one starts another).

Standard library only (and the supervisor's own lazy psutil), as `_shim`.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time

from kaon.executors import _shim, _usage  # noqa: F401  # loaded once, used by every fork

IDLE_EXIT_S = 2.0  # no connection and no living supervisor for this long: leave
TICK_S = 1.0  # a supervisor's end wakes the loop at once (SIGCHLD); this is for idling


class Spawner:
    def __init__(self, path: str) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.clients: dict[int, socket.socket] = {}
        self.buffers: dict[int, bytes] = {}
        self.children: set[int] = set()
        self.idle_since = time.monotonic()
        self.inode = 0
        # SIGCHLD writes a byte here (set_wakeup_fd), so select returns when one ends.
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def bind(self) -> None:
        tmp = f"{self.path}.{os.getpid()}"
        self.listener.bind(tmp)
        os.chmod(tmp, 0o600)
        self.listener.listen(64)
        os.replace(tmp, self.path)  # atomically: a client never sees a half-made socket
        self.inode = os.stat(self.path).st_ino

    def serve(self) -> None:
        while True:
            sockets = [self.listener, *self.clients.values()]
            readable, _, _ = select.select(
                [self.wake_r, *(s.fileno() for s in sockets)], [], [], TICK_S
            )
            by_fd = {s.fileno(): s for s in sockets}
            for fd in readable:
                if fd == self.wake_r:
                    self._drain_wakeups()
                    continue
                sock = by_fd[fd]
                if sock is self.listener:
                    conn, _ = self.listener.accept()
                    self.clients[conn.fileno()] = conn
                    self.buffers[conn.fileno()] = b""
                else:
                    self._read(sock)
            self._reap()
            if self.clients or self.children:
                self.idle_since = time.monotonic()
            elif time.monotonic() - self.idle_since > IDLE_EXIT_S:
                return
            if not self._still_mine():
                return  # replaced or removed: another spawner serves this folder now

    def _drain_wakeups(self) -> None:
        while True:
            try:
                os.read(self.wake_r, 512)
            except BlockingIOError:
                return

    def _still_mine(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except FileNotFoundError:
            return False

    def _read(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        data = sock.recv(65536)
        if not data:
            sock.close()
            del self.clients[fd], self.buffers[fd]
            return
        buffer = self.buffers[fd] + data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            self._handle(sock, line.decode())
        self.buffers[fd] = buffer

    def _handle(self, sock: socket.socket, line: str) -> None:
        verb, _, arg = line.partition(" ")
        if verb != "spawn" or not os.path.isfile(os.path.join(arg, "launch.json")):
            sock.sendall(f"error not a worker folder: {arg!r}\n".encode())
            return
        pid = os.fork()
        if pid == 0:
            self._become_supervisor(arg)
        self.children.add(pid)
        sock.sendall(f"pid {pid}\n".encode())

    def _become_supervisor(self, worker_dir: str) -> None:
        code = 1
        try:
            os.setsid()
            signal.set_wakeup_fd(-1)
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.listener.close()
            for client in self.clients.values():
                client.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            log = os.open(
                os.path.join(worker_dir, "supervisor.log"),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                0o600,
            )
            os.dup2(log, 2)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            code = _shim.main(worker_dir)
        finally:
            os._exit(code)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            for client in list(self.clients.values()):
                try:
                    client.sendall(f"ended {pid}\n".encode())
                except OSError:
                    pass


def main(path: str) -> int:
    spawner = Spawner(path)
    spawner.bind()
    try:
        spawner.serve()
    finally:
        if spawner._still_mine():
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
