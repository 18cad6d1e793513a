"""Priority preemption end to end, through the running control plane: the preempted job
checkpoints on SIGTERM, exits 75, is queued again and resumes from its checkpoint. (Gangs
and backfill, decided within one pass, are tested pass by pass in
``tests/server/reconcilers/test_jobs.py``.)"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kaon.core.jobs import JobStatus
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


def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def gpu_server(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    with ThreadServer(test_settings(tmp_path / "home", db_url, node_gpus="H100:2")) as running:
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
