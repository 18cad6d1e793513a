"""Services the tests serve, in-process and as real replica processes."""

from __future__ import annotations

import asyncio
import os
import threading
import time

from pydantic import BaseModel, ConfigDict

import kaon


class Point(BaseModel):
    x: float
    y: float


class Sum(BaseModel):
    total: float


class Tagged(BaseModel):
    """A body model that opts in to unknown fields: they reach the handler."""

    model_config = ConfigDict(extra="allow")
    name: str


class Classifier(kaon.Service):
    """The README example: a typed sync handler, and a few more shapes."""

    def setup(self) -> None:
        self.bias = 1.0

    @kaon.handler
    def predict(self, x: list[list[float]]) -> list[float]:
        return [sum(row) + self.bias for row in x]

    @kaon.handler(path="/add")
    async def add(self, point: Point) -> Sum:
        return Sum(total=point.x + point.y)

    @kaon.handler
    def point_type(self, point: Point) -> dict[str, bool]:
        return {"is_point": type(point) is Point, "equal": point == Point(x=point.x, y=point.y)}

    @kaon.handler
    def tag(self, item: Tagged) -> dict[str, object]:
        return {"name": item.name, "extra": item.model_extra, "is_tagged": type(item) is Tagged}

    @kaon.handler(method="GET")
    def scale(self, value: float, factor: float = 2.0) -> float:
        return value * factor

    @kaon.handler(max_body_bytes=64)
    def small(self, text: str) -> int:
        return len(text)

    @kaon.handler(timeout_s=0.2)
    async def slow(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    @kaon.handler
    def boom(self) -> str:
        raise RuntimeError("kaboom")

    @kaon.handler
    def whoami(self) -> dict[str, str]:
        return {"replica": os.environ.get("KAON_REPLICA_ID", ""), "pid": str(os.getpid())}

    @kaon.handler
    def sleep(self, seconds: float) -> dict[str, str]:
        time.sleep(seconds)
        return {"replica": os.environ.get("KAON_REPLICA_ID", "")}


class Batched(kaon.Service):
    """Records the size of every batch it gets."""

    def setup(self) -> None:
        self.batches: list[int] = []

    @kaon.handler(max_batch_size=8, max_wait_ms=100)
    def double(self, x: list[float]) -> list[float]:
        self.batches.append(len(x))
        return [v * 2 for v in x]

    @kaon.handler(max_batch_size=8, max_wait_ms=1)
    def sums(self, points: list[Point]) -> list[float]:
        return [p.x + p.y for p in points]


class SlowSetup(kaon.Service):
    """Ready only once `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def setup(self) -> None:
        self.release.wait(10)

    @kaon.handler
    def ping(self) -> str:
        return "pong"


class BrokenSetup(kaon.Service):
    def setup(self) -> None:
        raise FileNotFoundError("weights.pt is missing")

    @kaon.handler
    def ping(self) -> str:
        return "pong"


def tiny_mlp() -> object:
    """The seed's 2-5-1 MLP, as a model factory named in a model card."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(2, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1), torch.nn.Sigmoid()
    )


class Placement(kaon.Service):
    """Sync handlers for the inline rule: one whose cost the test sets, and two pinned."""

    @kaon.handler
    def compute(self, seconds: float = 0.0) -> dict[str, bool]:
        if seconds:
            time.sleep(seconds)
        return {"main_thread": threading.current_thread() is threading.main_thread()}

    @kaon.handler(run_inline=False)
    def pooled(self) -> dict[str, bool]:
        return {"main_thread": threading.current_thread() is threading.main_thread()}

    @kaon.handler(run_inline=True)
    def pinned(self) -> dict[str, bool]:
        return {"main_thread": threading.current_thread() is threading.main_thread()}
