"""GPU allocation through the whole stack, on a node that declares GPUs (this machine has
none; the declaration is the one thing mocked). Each worker sees exactly its GPUs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaon.core.errors import InvalidSpecError
from kaon.core.jobs import JobStatus
from tests.conftest import RunningServer, ThreadServer, test_settings

PY = sys.executable
SHOW = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"


@pytest.fixture
def gpu_server(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    settings = test_settings(tmp_path / "home", db_url, node_gpus="H100:4")
    with ThreadServer(settings) as running:
        yield running


def test_workers_see_exactly_their_gpus(gpu_server: RunningServer) -> None:
    client = gpu_server.client()
    node = client.nodes.list()[0]
    assert [g.model for g in node.gpus] == ["H100"] * 4
    job = client.jobs.submit([PY, "-c", SHOW], workers=2, gpus=2, cpu=1)
    done = client.jobs.wait(job.id, timeout=60)
    assert done.status is JobStatus.SUCCEEDED
    seen = [client.jobs.logs(job.id, worker=i).strip() for i in range(2)]
    indices = [sorted(int(g) for g in s.split(",")) for s in seen]
    assert all(len(i) == 2 for i in indices)
    assert sorted(indices[0] + indices[1]) == [0, 1, 2, 3]  # disjoint, all four used
    assert [w.gpus for w in done.workers] == indices


def test_cpu_job_sees_no_gpu(gpu_server: RunningServer) -> None:
    client = gpu_server.client()
    job = client.jobs.submit([PY, "-c", SHOW], cpu=1)
    assert client.jobs.wait(job.id, timeout=60).status is JobStatus.SUCCEEDED
    assert client.jobs.logs(job.id) == "\n"


def test_more_gpus_than_a_node_has_is_422(gpu_server: RunningServer) -> None:
    with pytest.raises(InvalidSpecError) as e:
        gpu_server.client().jobs.submit([PY, "-c", "pass"], gpus=5)
    assert e.value.field == "resources.gpus"


def test_gpu_type_mismatch_can_never_fit(gpu_server: RunningServer) -> None:
    with pytest.raises(InvalidSpecError):
        gpu_server.client().jobs.submit(
            [PY, "-c", "pass"], spec={"resources": {"gpus": 1, "gpu_type": "A100"}}
        )
