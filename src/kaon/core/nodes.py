"""Nodes of the resource pool: capacity, allocation, free."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class GpuInfo(BaseModel):
    index: int
    model: str
    memory: int = Field(description="bytes")


class GpuUse(BaseModel):
    """One GPU of a node now: who holds it and what NVML measured there.

    A worker's supervisor measures its GPUs together (`kaon.core.usage`): `util` is the
    mean over the worker's GPUs and `memory_used` their sum shared equally, so both are
    exact for a worker with one GPU. None is "not measured" (a free GPU, GPUs only
    declared with ``KAON_NODE_GPUS``, or no sample in the last minute), never zero. The
    job is named only to a member of its workspace (and to the instance's admin); to
    anyone else the GPU is only `held`."""

    index: int
    held: bool = False
    workspace: str | None = None
    job_id: str | None = None
    job_name: str | None = None
    worker: int | None = None
    util: float | None = Field(default=None, description="percent; None: not measured")
    memory_used: float | None = Field(default=None, description="bytes; None: not measured")
    memory_total: int = Field(description="bytes")


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
    gpu_use: list[GpuUse] = Field(
        default_factory=list, description="each GPU now, in the nodes listing (`GpuUse`)"
    )

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
