"""`Pools`: every executor of a control plane behind one interface. Calls go to the pool
that owns the nodes or the workers they are about; a pool that is not attached knows
nothing, which is a temporary state, never a lost worker."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from kaon.core.errors import PermanentBackendError, TemporaryBackendError
from kaon.executors.base import GangLaunch, NodeInventory, WorkerLaunch
from kaon.executors.local import LocalExecutor
from kaon.executors.pools import Pools, handle_pool
from kaon.executors.ray import RayExecutor, RayPool


def local(root: Path, node: str) -> LocalExecutor:
    inventory = NodeInventory(id=node, name=node, address="127.0.0.1", cpu=2.0, memory=2**30)
    return LocalExecutor(root / node / "runs", root / "checkpoints", inventory)


def gang(job: str, *nodes: str) -> GangLaunch:
    workers = tuple(WorkerLaunch(i, n, 0.5, 2**20) for i, n in enumerate(nodes))
    return GangLaunch(job, 1, (sys.executable, "-c", "print('hi')"), {}, workers)


def wait_ended(pools: Pools, handle: str) -> None:
    deadline = time.monotonic() + 30
    while pools.status([handle])[0].alive:
        assert time.monotonic() < deadline
        time.sleep(0.02)


class TestPools:
    def test_calls_go_to_the_pool_that_owns_the_nodes_and_handles(self, tmp_path: Path) -> None:
        pools = Pools(local(tmp_path, "here"), tmp_path / "checkpoints")
        pools.attach("other", local(tmp_path, "there"))
        assert {n.id for n in pools.inventory()} == {"here", "there"}
        mine = pools.launch(gang("j1", "here"))[0]
        theirs = pools.launch(gang("j2", "there"))[0]
        assert handle_pool(mine.handle) == ("local", "j1/1/0")  # local handles stay as they were
        assert handle_pool(theirs.handle) == ("other", "j2/1/0")
        for handle in (mine.handle, theirs.handle):
            wait_ended(pools, handle)
        states = pools.status([theirs.handle, mine.handle])
        assert [s.handle for s in states] == [theirs.handle, mine.handle]
        assert all(s.exit_code == 0 for s in states)
        assert pools.logs(theirs.handle) == b"hi\n"

    def test_a_gang_over_two_pools_is_refused(self, tmp_path: Path) -> None:
        pools = Pools(local(tmp_path, "here"), tmp_path / "checkpoints")
        pools.attach("other", local(tmp_path, "there"))
        pools.inventory()
        with pytest.raises(PermanentBackendError, match="two pools"):
            pools.launch(gang("j", "here", "there"))

    def test_workers_of_a_pool_not_attached_are_unknown_not_lost(self, tmp_path: Path) -> None:
        pools = Pools(local(tmp_path, "here"), tmp_path / "checkpoints")
        with pytest.raises(TemporaryBackendError, match="not attached"):
            pools.status(["gpu:node-1/j/1/0"])
        with pytest.raises(TemporaryBackendError, match="has not reported"):
            pools.launch(gang("j", "node-1"))  # a node no pool has reported yet
        assert pools.logs("gpu:node-1/j/1/0") == b""


class TestRayExecutor:
    def test_an_unreachable_cluster_is_a_temporary_error_with_the_reason(
        self, tmp_path: Path
    ) -> None:
        executor = RayExecutor(RayPool("far", "127.0.0.1:1", tmp_path / "far"), tmp_path)
        try:
            started = time.monotonic()
            with pytest.raises(
                TemporaryBackendError, match="cannot reach a Ray cluster at 127.0.0.1:1"
            ):
                executor.inventory()
            assert time.monotonic() - started < 30  # bounded, not Ray's minutes
            with pytest.raises(TemporaryBackendError):  # not retried at once
                executor.status(["n/j/1/0"])
        finally:
            executor.close()
