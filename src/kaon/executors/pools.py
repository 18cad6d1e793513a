"""Every executor of one control plane behind the one `Executor` interface.

The reconcilers see a single executor; `Pools` sends each call to the executor that owns
the nodes or workers it is about: a launch to the owner of the gang's nodes (a gang never
spans pools: the scheduler keeps it in one network domain), a status, stop or log call to
the owner of each handle. Handles of the local executor stay as they are (``job/attempt/
index``, as the workers adopted after an upgrade have them); every other executor's are
prefixed with its pool's name (``gpu-cluster:...``).

Pools come and go while the control plane runs (``kaon pool add/remove``): the pool
reconciler calls `attach` and `detach`, and nothing else changes the set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from kaon.core.errors import PermanentBackendError, TemporaryBackendError
from kaon.core.pools import LOCAL_POOL
from kaon.executors.base import (
    Executor,
    GangLaunch,
    NodeInventory,
    SupportsCapacityRequests,
    WorkerState,
)

SEPARATOR = ":"


def handle_pool(handle: str) -> tuple[str, str]:
    """(pool, the executor's own handle) of a handle `Pools` gave out."""
    pool, sep, inner = handle.partition(SEPARATOR)
    return (pool, inner) if sep else (LOCAL_POOL, handle)


class Pools:
    """The executors of a control plane, by pool name. Thread-safe: reconcilers call it
    from worker threads while the pool reconciler attaches and detaches executors."""

    name = "pools"

    def __init__(self, local: Executor, checkpoints_dir: Path) -> None:
        self._executors: dict[str, Executor] = {LOCAL_POOL: local}
        self._node_pool: dict[str, str] = {}
        self._lock = threading.Lock()
        self._listener: Callable[[], None] | None = None
        self.checkpoints_dir = checkpoints_dir

    # -- the set of executors ------------------------------------------------------------

    def attach(self, pool: str, executor: Executor) -> None:
        with self._lock:
            self._executors[pool] = executor
        if self._listener is not None:
            executor.set_listener(self._listener)

    def detach(self, pool: str) -> Executor | None:
        with self._lock:
            executor = self._executors.pop(pool, None)
            self._node_pool = {n: p for n, p in self._node_pool.items() if p != pool}
        if executor is not None:
            executor.close()
        return executor

    def get(self, pool: str) -> Executor | None:
        with self._lock:
            return self._executors.get(pool)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._executors)

    def elastic(self) -> dict[str, SupportsCapacityRequests]:
        """The pools whose autoscaler can add nodes."""
        with self._lock:
            items = list(self._executors.items())
        return {p: e for p, e in items if isinstance(e, SupportsCapacityRequests) and e.elastic}

    # -- the Executor interface --------------------------------------------------------

    def inventory_of(self, pool: str) -> list[NodeInventory]:
        """One pool's nodes; TemporaryBackendError when the pool cannot be reached."""
        executor = self._executor(pool)
        nodes = executor.inventory()
        with self._lock:
            for node in nodes:
                self._node_pool[node.id] = pool
        return nodes

    def inventory(self) -> list[NodeInventory]:
        """Every reachable pool's nodes (an unreachable pool's are left out)."""
        nodes: list[NodeInventory] = []
        for pool in self.names():
            try:
                nodes += self.inventory_of(pool)
            except TemporaryBackendError:
                continue
        return nodes

    def launch(self, gang: GangLaunch) -> list[WorkerState]:
        pool = self._pool_of_gang(gang)
        states = self._executor(pool).launch(gang)
        return [_prefixed(pool, st) for st in states]

    def status(self, handles: list[str]) -> list[WorkerState]:
        """States in the order asked. TemporaryBackendError when a pool the handles belong
        to cannot be reached now (the job reconciler asks job by job, so one unreachable
        pool holds up only its own jobs)."""
        by_pool: dict[str, list[tuple[int, str]]] = {}
        for i, handle in enumerate(handles):
            pool, inner = handle_pool(handle)
            by_pool.setdefault(pool, []).append((i, inner))
        out: list[WorkerState | None] = [None] * len(handles)
        for pool, items in by_pool.items():
            # A pool not attached (yet: a control plane that just started attaches its
            # pools on its first pass) knows nothing of its workers: nothing is decided.
            executor = self._executor(pool)
            states = [_prefixed(pool, st) for st in executor.status([inner for _, inner in items])]
            for (i, _), st in zip(items, states, strict=True):
                out[i] = st
        return [st for st in out if st is not None]

    def stop(self, handles: list[str], grace_s: float) -> None:
        by_pool: dict[str, list[str]] = {}
        for handle in handles:
            pool, inner = handle_pool(handle)
            by_pool.setdefault(pool, []).append(inner)
        for pool, inners in by_pool.items():
            executor = self.get(pool)
            if executor is not None:
                executor.stop(inners, grace_s)

    def logs(self, handle: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        pool, inner = handle_pool(handle)
        executor = self.get(pool)
        return b"" if executor is None else executor.logs(inner, offset, limit)

    def checkpoint_dir(self, job_id: str) -> Path:
        return self.checkpoints_dir / job_id

    def set_listener(self, callback: Callable[[], None]) -> None:
        self._listener = callback
        for pool in self.names():
            executor = self.get(pool)
            if executor is not None:
                executor.set_listener(callback)

    def close(self) -> None:
        for pool in self.names():
            executor = self.get(pool)
            if executor is not None:
                executor.close()

    # -- helpers ------------------------------------------------------------------------

    def _executor(self, pool: str) -> Executor:
        executor = self.get(pool)
        if executor is None:
            raise TemporaryBackendError(f"pool {pool!r} is not attached (yet)")
        return executor

    def _pool_of_gang(self, gang: GangLaunch) -> str:
        with self._lock:
            pools = {self._node_pool.get(w.node_id) for w in gang.workers}
        if None in pools:
            raise TemporaryBackendError(
                "the job was placed on a node whose pool has not reported it yet"
            )
        if len(pools) != 1:
            raise PermanentBackendError("a gang was placed on nodes of two pools")
        return str(pools.pop())


def _prefixed(pool: str, state: WorkerState) -> WorkerState:
    if pool == LOCAL_POOL:
        return state
    return replace(state, handle=f"{pool}{SEPARATOR}{state.handle}")
