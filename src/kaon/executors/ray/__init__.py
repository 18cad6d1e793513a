"""The Ray executor: Kaon's workers on the nodes of a Ray cluster.

Kaon stays the brain: the scheduler picks each worker's node and GPUs; this executor
starts the worker there, through the node's agent (`agent.NodeAgent`), under the same
supervisor as the local executor. Ray provides the nodes (their discovery, death and
addresses), the process launch on them, and growth and shrinking through its autoscaler.

Ray never imports into the control plane: this class talks to a bridge process
(`bridge`) that runs the Ray driver, with JSON lines over its stdin and stdout (`wire`).
A bridge that dies is started again on the next call; until it answers, calls raise
`TemporaryBackendError`, so jobs on the pool wait with the reason and none is failed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from kaon.core.errors import BackendError, PermanentBackendError, TemporaryBackendError
from kaon.executors.base import GangLaunch, NodeInventory, WorkerState
from kaon.executors.ray import wire

logger = logging.getLogger("kaon.executors.ray")

ENDED_KEPT = 10_000  # final worker states kept in memory
LOG_KEPT_BYTES = 64 << 20  # of an ended worker's log, copied to the control plane
LOG_CHUNK = 4 << 20
CONNECT_S = 150.0  # joining a cluster as a node takes a few seconds, ray start up to two minutes
RESTART_AFTER_S = 5.0  # a bridge that failed is not started again sooner than this
TIMEOUTS_S = {"inventory": 60.0, "launch": 330.0, "logs": 30.0}
DEFAULT_TIMEOUT_S = 45.0
# Bounded connection attempts: a plain ray.init on a dead address blocks for minutes.
RAY_ENV = {
    "RAY_gcs_server_port_wait_time_s": "1",
    "RAY_py_gcs_connect_timeout_s": "5",
    "RAY_gcs_rpc_server_connect_timeout_s": "2",
    "RAY_gcs_server_request_timeout_seconds": "10",
    "RAY_USAGE_STATS_ENABLED": "0",
}


@dataclass(frozen=True)
class RayPool:
    """How to reach one Ray cluster, and where things go."""

    name: str
    address: str
    state_dir: Path  # this machine: the bridge's log and the node it may join
    node_dir: str = "~/.kaon/nodes"  # each node: run folders, code cache, checkpoints
    api_url: str | None = None  # how its nodes reach the control plane, if not as workers do
    # The control plane listens on every address: tell nodes the one on their route.
    listens_everywhere: bool = False


class RayExecutor:
    """One Ray cluster as an executor. Thread-safe."""

    def __init__(self, pool: RayPool, checkpoints_dir: Path) -> None:
        self.pool = pool
        self.name = pool.name
        self.checkpoints_dir = checkpoints_dir
        self.elastic = False
        self._local_ip = ""  # this machine's address on the route to the cluster
        self._bridge: _Bridge | None = None
        self._failed_at = 0.0
        self._last_error: BackendError | None = None
        self._lock = threading.Lock()
        self._listener: Callable[[], None] | None = None
        self._ended: dict[str, WorkerState] = {}  # final states the bridge sent, newest last
        self._logs = _LogArchive(pool.state_dir / "logs", self._read_node_log)

    # -- the Executor interface --------------------------------------------------------

    def inventory(self) -> list[NodeInventory]:
        return [wire.node_from_wire(n) for n in self._call("inventory")]

    def launch(self, gang: GangLaunch) -> list[WorkerState]:
        api_url = self.pool.api_url or gang.env.get("KAON_API_URL", "")
        if not self.pool.api_url and self.pool.listens_everywhere:
            api_url = _reachable(api_url, self._local_ip)
        gang = replace(gang, env={**gang.env, "KAON_API_URL": api_url})
        states = self._call("launch", gang=wire.gang_to_wire(gang))
        return [wire.state_from_wire(s) for s in states]

    def status(self, handles: list[str]) -> list[WorkerState]:
        """Workers whose end the bridge has told of come from memory (an end is final);
        the others are asked for."""
        with self._lock:
            known = {h: self._ended[h] for h in handles if h in self._ended}
        ask = [h for h in handles if h not in known]
        if ask:
            for st in self._call("status", handles=ask):
                known[st["handle"]] = found = wire.state_from_wire(st)
                if not found.alive:
                    self._logs.keep(found.handle)  # an end seen while no event came
        return [known[h] for h in handles]

    def stop(self, handles: list[str], grace_s: float) -> None:
        self._call("stop", handles=handles, grace_s=grace_s)

    def logs(self, handle: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        """An ended worker's log from the copy kept here once it is made, so it outlives
        its node (an autoscaler removes idle nodes, and their disks with them); else
        from the node."""
        kept = self._logs.read(handle, offset, limit)
        if kept is not None:
            return kept
        return self._read_node_log(handle, offset, limit)

    def _read_node_log(self, handle: str, offset: int, limit: int) -> bytes:
        return wire.decode_bytes(self._call("logs", handle=handle, offset=offset, limit=limit))

    def checkpoint_dir(self, job_id: str) -> Path:
        return self.checkpoints_dir / job_id

    def set_listener(self, callback: Callable[[], None]) -> None:
        self._listener = callback

    def request_capacity(self, bundles: list[dict[str, float]]) -> None:
        self._call("request_capacity", bundles=bundles)

    def close(self) -> None:
        self._logs.close()
        with self._lock:
            bridge, self._bridge = self._bridge, None
        if bridge is not None:
            bridge.close()

    # -- the bridge --------------------------------------------------------------------

    def _call(self, op: str, **args: Any) -> Any:
        bridge = self._ready_bridge()
        try:
            return bridge.call(op, args, TIMEOUTS_S.get(op, DEFAULT_TIMEOUT_S))
        except BackendError:
            if not bridge.alive():
                self._forget(bridge)
            raise

    def _ready_bridge(self) -> _Bridge:
        with self._lock:
            bridge = self._bridge
            if bridge is None or not bridge.alive():
                if bridge is not None:
                    self._last_error = bridge.error or self._last_error
                if time.monotonic() - self._failed_at < RESTART_AFTER_S and self._last_error:
                    raise self._last_error
                bridge = self._bridge = _Bridge(self.pool, self._changed)
        try:
            ready = bridge.wait_ready(CONNECT_S)
        except BackendError as e:
            self._forget(bridge, e)
            raise
        self.elastic = bool(ready.get("elastic"))
        self._local_ip = str(ready.get("local_ip") or "")
        return bridge

    def _forget(self, bridge: _Bridge, error: BackendError | None = None) -> None:
        with self._lock:
            if self._bridge is bridge:
                self._bridge = None
                self._failed_at = time.monotonic()
                self._last_error = (
                    error
                    or bridge.error
                    or TemporaryBackendError(
                        f"the connection to Ray cluster {self.pool.address} was lost"
                    )
                )
        bridge.close()

    def _changed(self, ended: list[dict[str, Any]]) -> None:
        with self._lock:
            for data in ended:
                st = wire.state_from_wire(data)
                if not st.alive:
                    self._ended[st.handle] = st
                    self._logs.keep(st.handle)
            while len(self._ended) > ENDED_KEPT:
                del self._ended[next(iter(self._ended))]
        if self._listener is not None:
            self._listener()


class _LogArchive:
    """Ended workers' logs, copied from their nodes to the control plane's disk.

    A worker's log lives on its node; the copy starts as soon as the worker's end is
    known (the node's agent lingers a while after its last worker, so the node is still
    there) and is read instead of the node once complete. The first `LOG_KEPT_BYTES` are
    kept, so offsets stay those of the node's log. A copy that fails leaves nothing
    behind, and reads go to the node as before.
    """

    def __init__(self, folder: Path, read: Callable[[str, int, int], bytes]) -> None:
        self.folder = folder
        self._read = read
        self._lock = threading.Lock()
        self._started: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kaon-logs")

    def keep(self, handle: str) -> None:
        path = self._path(handle)
        with self._lock:
            if path is None or handle in self._started or path.exists():
                return
            self._started.add(handle)
        with contextlib.suppress(RuntimeError):  # closed: the next control plane copies it
            self._pool.submit(self._copy, handle, path)

    def read(self, handle: str, offset: int, limit: int) -> bytes | None:
        """The bytes from the kept copy, or None while there is none."""
        path = self._path(handle)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except OSError:
            return None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _copy(self, handle: str, path: Path) -> None:
        part = path.with_name(path.name + ".part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(part, "wb") as f:
                while f.tell() < LOG_KEPT_BYTES:
                    data = self._read(handle, f.tell(), min(LOG_CHUNK, LOG_KEPT_BYTES - f.tell()))
                    if not data:
                        break
                    f.write(data)
            os.replace(part, path)
        except Exception as e:  # the node went first: reads fall back to it
            logger.warning("could not keep the log of %s: %s", handle, e)
            part.unlink(missing_ok=True)
            with self._lock:
                self._started.discard(handle)

    def _path(self, handle: str) -> Path | None:
        """Where a handle's copy goes; None for a handle that is not a plain relative
        path (handles come from the bridge, but a path is never built from a stranger)."""
        parts = handle.split("/")
        if not parts or any(p in ("", ".", "..") or "\\" in p for p in parts):
            return None
        return self.folder.joinpath(*parts[:-1], f"{parts[-1]}.log")


_LOOPBACK = ("127.0.0.1", "localhost", "0.0.0.0", "::1", "[::1]", "::")


def _reachable(api_url: str, local_ip: str) -> str:
    """The control plane's URL as another machine can use it, when the control plane
    listens on every address: a loopback or wildcard host becomes this machine's address
    on the route to the cluster."""
    parts = urlsplit(api_url)
    if not local_ip or parts.hostname not in _LOOPBACK or local_ip.startswith("127."):
        return api_url
    netloc = f"{local_ip}:{parts.port}" if parts.port else local_ip
    return urlunsplit(parts._replace(netloc=netloc))


class _Bridge:
    """One bridge process and the calls in flight to it."""

    def __init__(self, pool: RayPool, on_changed: Callable[[list[dict[str, Any]]], None]) -> None:
        pool.state_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "pool": pool.name,
            "address": pool.address,
            "node_dir": pool.node_dir,
            "state_dir": str(pool.state_dir),
        }
        env = {**os.environ, **RAY_ENV, "KAON_RAY_BRIDGE": json.dumps(config)}
        env.pop("KAON_DATABASE_URL", None)
        env.pop("KAON_BOOTSTRAP_TOKEN", None)
        self._log = open(pool.state_dir / "bridge.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kaon.executors.ray.bridge"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,
        )
        self.error: BackendError | None = None
        self._ready: Future[dict[str, Any]] = Future()
        self._calls: dict[int, Future[Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._on_changed = on_changed
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def alive(self) -> bool:
        return self.proc.poll() is None and self.error is None

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        try:
            return self._ready.result(timeout)
        except TimeoutError:
            raise TemporaryBackendError(
                f"still connecting to the Ray cluster after {timeout:g} s"
            ) from None

    def call(self, op: str, args: dict[str, Any], timeout: float) -> Any:
        rid = next(self._ids)
        future: Future[Any] = Future()
        with self._lock:
            self._calls[rid] = future
        line = json.dumps({"id": rid, "op": op, "args": args}) + "\n"
        try:
            assert self.proc.stdin is not None
            with self._lock:
                self.proc.stdin.write(line.encode())
                self.proc.stdin.flush()
            return future.result(timeout)
        except (OSError, ValueError):
            raise TemporaryBackendError("the connection to the Ray cluster was lost") from None
        except TimeoutError:
            raise TemporaryBackendError(
                f"the Ray cluster did not answer {op} within {timeout:g} s"
            ) from None
        finally:
            with self._lock:
                self._calls.pop(rid, None)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # the bridge leaves the cluster and exits
                self.proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self._log.close()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            self._dispatch(message)
        self.error = self.error or TemporaryBackendError("the Ray bridge exited")
        with self._lock:
            calls = list(self._calls.values())
        for future in [*calls, self._ready]:
            if not future.done():
                future.set_exception(self.error)

    def _dispatch(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "ready":
            self._ready.set_result(message)
        elif event == "fatal":
            self.error = wire.error_from_wire(message.get("error", {}))
            self._ready.set_exception(self.error)
        elif event == "changed":
            self._on_changed(list(message.get("ended", [])))
        else:
            with self._lock:
                future = self._calls.get(int(message.get("id", 0)))
            if future is None or future.done():
                return
            if "error" in message:
                future.set_exception(wire.error_from_wire(message["error"]))
            else:
                future.set_result(message.get("ok"))


__all__ = ["PermanentBackendError", "RayExecutor", "RayPool"]
