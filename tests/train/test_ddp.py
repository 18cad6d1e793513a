"""DDP over gloo on the CPU: two real processes, configured only by the environment
variables a Kaon job gets, end with identical weights; only rank 0 logs and saves."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.train.conftest import same_weights
from tests.train.test_resume_process import Run

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_workers_end_with_identical_weights(tmp_path: Path) -> None:
    port = str(free_port())
    runs = [
        Run(
            tmp_path,
            "--epochs",
            "2",
            env={
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "WORLD_SIZE": "2",
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
            },
        )  # fmt: skip
        for rank in (0, 1)
    ]
    weights = [run.weights(rank) for rank, run in enumerate(runs)]
    assert same_weights(weights[0], weights[1])
    assert "2 process(es): 12 steps of 16 samples" in runs[0].output()
    assert "epoch 2/2" in runs[0].output()
    assert "epoch" not in runs[1].output()  # rank 0 alone logs
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[-1] == "step-000000012"
