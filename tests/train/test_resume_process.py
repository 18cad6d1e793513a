"""A training process that is killed, or told to stop, resumes to the very same bits.

Each run is a real process (tests/train/run_tiny.py, with dropout, NumPy and Python
randomness in the data, AdamW, a cosine schedule, accumulation and clipping). The
uninterrupted reference run starts first and runs beside the interrupted ones. Starting
a process that imports torch costs seconds, so the scenarios share one chain of runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kaon.core.jobs import EXIT_CODE_RESUME
from tests.train.conftest import JOB_ENV, same_weights

SCRIPT = Path(__file__).with_name("run_tiny.py")
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class Run:
    """One run of run_tiny.py in its own process, output in `out`/log.txt."""

    def __init__(self, out: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.log = out / f"log-{time.monotonic_ns()}.txt"
        clean = {k: v for k, v in os.environ.items() if k not in JOB_ENV}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), "--out", str(out), *args],
                stdout=log, stderr=subprocess.STDOUT, env=clean | (env or {}), cwd=ROOT,
            )  # fmt: skip

    def wait(self) -> int:
        return self.proc.wait(timeout=240)

    def output(self) -> str:
        return self.log.read_text()

    def weights(self, rank: int = 0) -> dict[str, torch.Tensor]:
        assert self.wait() == 0, self.output()
        state: dict[str, torch.Tensor] = torch.load(self.out / f"final-rank{rank}.pt")
        return state

    def wait_for_checkpoint(self) -> None:
        self.wait_for_new_checkpoint(after="")

    def wait_for_new_checkpoint(self, after: str) -> None:
        deadline = time.monotonic() + 240
        while not [
            path
            for path in (self.out / "checkpoints").glob("step-*/manifest.json")
            if path.parent.name > after
        ]:
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.02)


def test_preempted_then_killed_then_finished_matches_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """One chain, to keep the process count down: SIGTERM (checkpoint, exit 75), resume,
    SIGKILL (no warning at all), resume to the end: same bits as never stopping."""
    reference = Run(tmp_path / "reference")  # runs beside the chain
    out = tmp_path / "interrupted"

    stopped = Run(out, "--slow", "0.01")  # ~0.1 s a step: stopped well before the end
    stopped.wait_for_checkpoint()
    stopped.proc.send_signal(signal.SIGTERM)
    assert stopped.wait() == EXIT_CODE_RESUME, stopped.output()
    step = int(stopped.output().split("SIGTERM: stopped after step ")[1].split(" ")[0])
    newest = sorted((out / "checkpoints").glob("step-*"))[-1]
    assert newest.name == f"step-{step:09d}"  # saved on the way out, not only every 5 steps

    killed = Run(out, "--slow", "0.01")
    killed.wait_for_new_checkpoint(after=newest.name)
    killed.proc.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert f"resumed from step-{step:09d}" in killed.output()
    assert not (out / "final-rank0.pt").exists()

    finished = Run(out)
    weights = finished.weights()
    assert "resumed from step-" in finished.output()
    assert same_weights(weights, reference.weights())
