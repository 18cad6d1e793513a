"""`kaon up` / `kaon down`: the control plane as a background process with a pid file
and a log file under ``~/.kaon``. The CLI starts it as a separate program
(``python -m kaon.server``); it never imports the server.

Starting one can fail in ways a new user should hear about at once, not after a minute's
wait: the port is taken (by another program, or by the Kaon of another ``KAON_HOME``), or
the process exits at start. So the port is checked before starting (`port_free`), the
holder is named where this user may see it (`port_holder`, `describe`), and the wait for
readiness also watches the process (`Daemon.wait_ready`).
"""

from __future__ import annotations

import enum
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

KAON_PROGRAMS = {"kaon.server": "Kaon control plane", "kaon.gateway": "Kaon gateway"}


class Started(enum.Enum):
    """How the wait for a freshly started daemon ended."""

    READY = "ready"
    EXITED = "exited"  # before it was ready: its log says why
    TIMED_OUT = "timed out"  # still running, never ready


@dataclass(frozen=True)
class Daemon:
    """A background process named `name`, with ``NAME.pid`` and ``NAME.log`` in `home`."""

    home: Path
    name: str
    module: str

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / f"{self.name}.log"

    def pid(self) -> int | None:
        """The running process's pid, or None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and self._ours(proc):
                return pid
        except (psutil.Error, OSError):
            pass
        self.pid_file.unlink(missing_ok=True)
        return None

    def _ours(self, proc: psutil.Process) -> bool:
        """Whether the pid file's process is this daemon, not another program that got the
        pid later. A process that is executing itself anew (the control plane does, to
        drop its credentials from its environment) shows no command line for a moment:
        it is ours when it started no later than its pid file was written."""
        cmdline = proc.cmdline()
        if cmdline:
            return self.module in " ".join(cmdline)
        return proc.create_time() <= self.pid_file.stat().st_mtime + 1.0

    def start(self, env: dict[str, str], args: list[str] | None = None) -> int:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *(args or [])],
                env={**_inherited(), **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM, wait, then SIGKILL. False if it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGTERM)
            psutil.Process(pid).wait(timeout)
        except psutil.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
        self.pid_file.unlink(missing_ok=True)
        return True

    def wait_ready(self, ready: Callable[[], bool], timeout: float) -> Started:
        """Wait until `ready()`, but no longer than the process lives: a server that
        cannot bind its port exits within a second, and saying so then beats a timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return Started.READY
            if self.pid() is None:
                return Started.EXITED
            time.sleep(0.1)
        return Started.TIMED_OUT

    def log_size(self) -> int:
        """Where the log ends now: what a start writes comes after (the log is appended)."""
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def listening_ports(self) -> set[int]:
        """The TCP ports the running process listens on (none while it starts)."""
        pid = self.pid()
        if pid is None:
            return set()
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:
            return set()
        return {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN and c.laddr}


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on `host`:`port` now. With SO_REUSEADDR, as uvicorn
    binds, so a port a stopped server left in TIME_WAIT counts as free; only "in use"
    counts as taken (any other bind error is the server's to report)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            return e.errno != errno.EADDRINUSE
    return True


def free_ports_near(port: int, count: int = 2) -> int | None:
    """A port P such that P .. P+count-1 are all free on loopback, at port+100, +200, ...:
    something to suggest that keeps the ports recognisable (8570, 8571)."""
    for candidate in range(port + 100, min(port + 2000, 65536 - count), 100):
        if all(port_free("127.0.0.1", candidate + i) for i in range(count)):
            return candidate
    return None


def port_holder(port: int) -> psutil.Process | None:
    """The process listening on TCP `port`, where this user may see it (on Linux: their
    own processes; elsewhere it may take root). None when unknown."""
    try:
        conns = psutil.net_connections(kind="inet")
    except psutil.Error:
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            try:
                return psutil.Process(conn.pid) if conn.pid else None
            except psutil.Error:
                return None
    return None


def describe(proc: psutil.Process) -> str:
    """A port's holder as a person would name it: a Kaon control plane or gateway with its
    home (the home is what tells two Kaons apart), or any program by name and pid."""
    try:
        cmdline, name = " ".join(proc.cmdline()), proc.name()
    except psutil.Error:
        return f"another program (pid {proc.pid})"
    for module, what in KAON_PROGRAMS.items():
        if f"-m {module}" in cmdline:
            home = process_home(proc)
            where = f", home {home}" if home else ""
            return f"another {what} (pid {proc.pid}{where})"
    return f"another program ({name}, pid {proc.pid})"


def process_home(proc: psutil.Process) -> str | None:
    """The KAON_HOME a Kaon process runs with (``~/.kaon`` when it has none), or None if
    this user may not read its environment."""
    try:
        return proc.environ().get("KAON_HOME") or "~/.kaon"
    except psutil.Error:
        return None


def says_address_in_use(log: str) -> bool:
    """Whether a server's log says it could not bind its port (uvicorn on Linux and macOS:
    ``[Errno 98] ... address already in use``)."""
    return "address already in use" in log.lower()


CLIENT_CREDENTIALS = ("KAON_TOKEN", "KAON_GATEWAY_TOKEN")
"""Tokens a shell may hold for the CLI (or a gateway started by hand): never passed on
to a process `kaon up` starts, whose environment other processes of the user can read.
What a process needs is given to it explicitly, in `Daemon.start`'s `env`."""


def _inherited() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CLIENT_CREDENTIALS}
