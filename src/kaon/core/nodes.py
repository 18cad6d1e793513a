"""Nodes of the resource pool: capacity, allocation, free."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class GpuInfo(BaseModel):
    index: int
    model: str
    memory: int = Field(description="bytes")


class NodeView(BaseModel):
    """A node as the API returns it: capacity, what jobs hold, and what is free."""

    id: str
    name: str
    executor: str = Field(description="the pool the node belongs to ('local': this machine)")
    address: str
    state: str = Field(description="'ready' when it takes work; otherwise `message` says why")
    message: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    cpu: float
    memory: int
    gpus: list[GpuInfo] = Field(default_factory=list)
    cpu_allocated: float = 0.0
    memory_allocated: int = 0
    gpus_allocated: list[int] = Field(default_factory=list)
    heartbeat_at: datetime | None = None

    @property
    def cpu_free(self) -> float:
        return self.cpu - self.cpu_allocated

    @property
    def memory_free(self) -> int:
        return self.memory - self.memory_allocated

    @property
    def gpus_free(self) -> list[int]:
        held = set(self.gpus_allocated)
        return [g.index for g in self.gpus if g.index not in held]
