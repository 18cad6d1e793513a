"""Ended workers' logs copied off their Ray nodes, so they outlive the nodes."""

from __future__ import annotations

import time
from pathlib import Path

from kaon.core.errors import TemporaryBackendError
from kaon.executors.ray import _LogArchive

LOG = b"line one\nline two\n" * 1000


class Node:
    """A node's log, as the bridge reads it; it may go away."""

    def __init__(self) -> None:
        self.gone = False
        self.reads = 0

    def read(self, handle: str, offset: int, limit: int) -> bytes:
        self.reads += 1
        if self.gone:
            raise TemporaryBackendError("its node died")
        return LOG[offset : offset + limit]


def until_kept(archive: _LogArchive, handle: str) -> bytes:
    deadline = time.monotonic() + 10
    while (kept := archive.read(handle, 0, 1 << 30)) is None:
        assert time.monotonic() < deadline, "the copy was never made"
        time.sleep(0.01)
    return kept


def test_an_ended_workers_log_is_read_from_the_copy_after_its_node_goes(
    tmp_path: Path,
) -> None:
    node = Node()
    archive = _LogArchive(tmp_path, node.read)
    assert archive.read("pool-n1/j-1/0/0", 0, 100) is None  # nothing kept yet
    archive.keep("pool-n1/j-1/0/0")
    assert until_kept(archive, "pool-n1/j-1/0/0") == LOG
    node.gone = True
    assert archive.read("pool-n1/j-1/0/0", 9, 8) == b"line two"  # the node's offsets
    reads = node.reads
    archive.keep("pool-n1/j-1/0/0")  # kept once, however often its end is seen
    time.sleep(0.1)
    assert node.reads == reads
    archive.close()


def test_a_copy_that_fails_leaves_nothing_and_can_be_tried_again(tmp_path: Path) -> None:
    node = Node()
    node.gone = True
    archive = _LogArchive(tmp_path, node.read)
    archive.keep("pool-n1/j-2/0/0")
    deadline = time.monotonic() + 10
    while node.reads == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert archive.read("pool-n1/j-2/0/0", 0, 100) is None
    assert list(tmp_path.rglob("*.part")) == []
    node.gone = False
    archive.keep("pool-n1/j-2/0/0")
    assert until_kept(archive, "pool-n1/j-2/0/0") == LOG
    archive.close()


def test_a_handle_that_is_not_a_plain_path_is_never_kept(tmp_path: Path) -> None:
    node = Node()
    archive = _LogArchive(tmp_path / "logs", node.read)
    for handle in ("../../etc/passwd", "pool-n1//0", "/abs/0/0", "a/./b"):
        archive.keep(handle)
        assert archive.read(handle, 0, 10) is None
    time.sleep(0.1)
    assert node.reads == 0
    assert not (tmp_path / "logs").exists()
    archive.close()
