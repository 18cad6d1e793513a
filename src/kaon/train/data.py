"""Batches in an order that depends only on (seed, epoch), so a run can pick up mid-epoch.

The training order is a `DistributedSampler`'s (with one replica when not distributed):
a permutation seeded by ``seed + epoch``, sharded by rank. A resumed run asks for the same
epoch and skips the batches it already took, by index, without loading them. The loader
gets its own generator, reseeded every epoch, because a `DataLoader` otherwise draws a
seed from torch's global generator each time an epoch starts; that draw would land at a
different point in a resumed run and change every dropout mask after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torch.utils.data.dataloader import default_collate

from kaon.train.runtime import Runtime

__all__ = ["ResumableSampler", "ShardSampler", "eval_loader", "first_batch", "train_loader"]

Collate = Callable[[list[Any]], Any]


class ResumableSampler(DistributedSampler[Any]):
    """DistributedSampler that can start `skip` samples into an epoch."""

    def __init__(self, dataset: Sized, runtime: Runtime, seed: int) -> None:
        super().__init__(
            dataset,  # type: ignore[arg-type]  # only len() is used
            num_replicas=runtime.world_size,
            rank=runtime.rank,
            shuffle=True,
            seed=seed,
        )
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[Any]:
        indices = super().__iter__()
        for _ in range(min(self.skip, self.num_samples)):
            next(indices)
        return indices

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


class ShardSampler(Sampler[int]):
    """Every `world_size`-th index from `rank`: evaluation sees each sample exactly once
    across ranks (DistributedSampler would pad with repeats and skew the mean)."""

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def train_loader(
    dataset: Dataset[Any],
    batch_size: int,
    runtime: Runtime,
    seed: int,
    num_workers: int,
    collate_fn: Collate | None,
) -> tuple[DataLoader[Any], ResumableSampler]:
    sampler = ResumableSampler(dataset, runtime, seed)  # type: ignore[arg-type]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=runtime.device.type == "cuda",
        generator=torch.Generator(),  # see the module docstring
        persistent_workers=False,
    )
    return loader, sampler


def eval_loader(
    dataset: Dataset[Any],
    batch_size: int,
    rank: int,
    world_size: int,
    num_workers: int,
    collate_fn: Collate | None,
) -> DataLoader[Any]:
    size = len(dataset)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(size, rank, world_size),
        num_workers=num_workers,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(0),  # never touch the global generator
    )


def first_batch(dataset: Dataset[Any], batch_size: int, collate_fn: Collate | None) -> Any:
    """The first `batch_size` samples, collated, read straight from the dataset (no
    sampler, no loader state) for the checks before training."""
    count = min(batch_size, len(dataset))  # type: ignore[arg-type]
    return (collate_fn or default_collate)([dataset[i] for i in range(count)])
