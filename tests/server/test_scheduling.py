"""The scheduler driving real processes: priority preemption with checkpoint and resume,
gangs that start whole or not at all, and backfill that does not delay the head."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kaon.core.jobs import JobStatus, JobView
from kaon.sdk.client import Client
from tests.conftest import RunningServer, ThreadServer, test_settings

PY = sys.executable

RESUMABLE = """
import json, os, signal, sys, time
path = os.path.join(os.environ["KAON_CHECKPOINT_DIR"], "state.json")
state = json.load(open(path)) if os.path.exists(path) else {"count": 0}
print(f"restart {os.environ['KAON_RESTART_COUNT']} from {state['count']}", flush=True)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
while state["count"] < 60:
    if stop:  # preempted: save progress, ask to be resumed
        with open(path + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(path + ".tmp", path)
        print(f"checkpointed at {state['count']}", flush=True)
        sys.exit(75)
    state["count"] += 1
    time.sleep(0.05)
print(f"done at {state['count']}", flush=True)
"""


def _hold(flag: Path) -> list[str]:
    """A job that runs until `flag` exists."""
    code = f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.05)"
    return [PY, "-c", code]


def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _status(client: Client, job: JobView) -> JobStatus:
    return client.jobs.get(job.id).status


@pytest.fixture
def gpu_server(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    with ThreadServer(test_settings(tmp_path / "home", db_url, node_gpus="H100:2")) as running:
        yield running


@pytest.fixture
def two_nodes(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    """This machine as two nodes of 4 CPUs each."""
    settings = test_settings(
        tmp_path / "home", db_url, local_nodes=2, node_cpus=4.0, node_memory=4 * 2**30
    )
    with ThreadServer(settings) as running:
        yield running


def test_priority_preemption_checkpoints_and_resumes(gpu_server: RunningServer) -> None:
    client = gpu_server.client()
    low = client.jobs.submit([PY, "-c", RESUMABLE], gpus=2, cpu=1, priority=0)
    _until(lambda: "restart 0 from 0" in client.jobs.logs(low.id), "the low job to start")
    time.sleep(0.5)
    high = client.jobs.submit([PY, "-c", "print('high done')"], gpus=2, cpu=1, priority=10)
    assert client.jobs.wait(high.id, timeout=60).status is JobStatus.SUCCEEDED
    done = client.jobs.wait(low.id, timeout=60)
    assert done.status is JobStatus.SUCCEEDED
    log = client.jobs.logs(low.id)
    assert log.startswith("restart 1 from ") and "done at 60" in log
    resumed_from = int(log.split()[3])
    assert resumed_from > 0  # it resumed from its checkpoint, not from scratch
    assert done.restart_count == 1 and done.preemptions == 1
    assert done.lost_gpu_seconds > 0
    high_done = client.jobs.get(high.id)
    assert high_done.started_at is not None and done.finished_at is not None
    assert high_done.started_at < done.finished_at


def test_gang_starts_whole_or_not_at_all(two_nodes: RunningServer, tmp_path: Path) -> None:
    client = two_nodes.client()
    release_a, release_b = tmp_path / "a", tmp_path / "b"
    a = client.jobs.submit(_hold(release_a), cpu=3)
    b = client.jobs.submit(_hold(release_b), cpu=3)
    _until(lambda: _status(client, a) is _status(client, b) is JobStatus.RUNNING, "a and b")
    assert {client.jobs.get(j.id).workers[0].node for j in (a, b)} == {"local-0", "local-1"}
    # One CPU is free on each node: a gang of 2 x 2 CPUs must not start in part.
    show = (
        "import os; print(os.environ['RANK'], os.environ['LOCAL_RANK'], os.environ['NODE_RANK'])"
    )
    gang = client.jobs.submit([PY, "-c", show], workers=2, cpu=2)
    _until(lambda: bool(client.jobs.get(gang.id).waiting_reason), "a waiting reason")
    time.sleep(0.5)
    waiting = client.jobs.get(gang.id)
    assert waiting.status is JobStatus.QUEUED and waiting.workers == []
    release_a.touch()
    done = client.jobs.wait(gang.id, timeout=60)
    assert done.status is JobStatus.SUCCEEDED
    assert len({w.node for w in done.workers}) == 1  # it fits one node, so it goes on one
    assert sorted(client.jobs.logs(gang.id, worker=i).strip() for i in range(2)) == [
        "0 0 0",
        "1 1 0",
    ]
    release_b.touch()


def test_backfill_runs_small_jobs_without_delaying_the_head(
    two_nodes: RunningServer, tmp_path: Path
) -> None:
    client = two_nodes.client()
    release_a, release_b, release_s = tmp_path / "a", tmp_path / "b", tmp_path / "s"
    a = client.jobs.submit(_hold(release_a), cpu=3)
    b = client.jobs.submit(_hold(release_b), cpu=3)
    _until(lambda: _status(client, a) is _status(client, b) is JobStatus.RUNNING, "a and b")
    head = client.jobs.submit([PY, "-c", "print('head')"], cpu=4)
    _until(lambda: bool(client.jobs.get(head.id).waiting_reason), "the head to wait")
    small = client.jobs.submit(_hold(release_s), cpu=1)
    # The small job runs ahead of the head, on the node the head does not hold for itself.
    _until(lambda: _status(client, small) is JobStatus.RUNNING, "the small job to backfill")
    assert _status(client, head) is JobStatus.QUEUED
    release_a.touch()
    release_b.touch()
    # The head starts as soon as a node is free, while the backfilled job still runs.
    _until(lambda: _status(client, head) is not JobStatus.QUEUED, "the head to start")
    assert _status(client, small) is JobStatus.RUNNING
    assert client.jobs.wait(head.id, timeout=60).status is JobStatus.SUCCEEDED
    release_s.touch()
    assert client.jobs.wait(small.id, timeout=60).status is JobStatus.SUCCEEDED
