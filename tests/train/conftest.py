"""Fixtures for kaon.train's tests: a clean environment and small real datasets.

The trainer reads the Kaon job environment (KAON_CHECKPOINT_DIR, WORLD_SIZE, RANK, ...);
these tests must not inherit it from whatever runs them, so it is removed for each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch.utils.data import TensorDataset

JOB_ENV = (
    "KAON_CHECKPOINT_DIR", "KAON_API_URL", "KAON_JOB_ID", "KAON_JOB_TOKEN",
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _no_job_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in JOB_ENV:
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only cost
    yield
    torch.set_num_threads(threads)


def blobs(n: int = 64, seed: int = 0) -> TensorDataset:
    """Two separable Gaussian blobs, labels as (n, 1) floats for binary cross-entropy."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 2).float().unsqueeze(1)
    return TensorDataset((labels * 2 - 1) * 2 + torch.randn(n, 2, generator=generator), labels)


def mlp(seed: int = 0, sigmoid: bool = True) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = [torch.nn.Linear(2, 8), torch.nn.ReLU()]
    layers += [torch.nn.Dropout(0.1), torch.nn.Linear(8, 1)]
    return torch.nn.Sequential(*layers, *([torch.nn.Sigmoid()] if sigmoid else []))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
