"""Resource usage of a job's workers: what each worker's supervisor samples and the API
answers with (``kaon job top``).

Samples are stored as metrics with reserved names under ``sys/`` (one series per name,
per job and worker), so they share the metrics table, its index and its cascade, and
`kaon.report` values (any other name) are never mixed up with them. GPU values are absent
where NVML cannot see the worker's GPUs (none allocated, or GPUs only declared with
``KAON_NODE_GPUS``): None means "not measured", never zero.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from kaon.core.jobs import JobStatus

USAGE_PREFIX = "sys/"
CPU = "sys/cpu"  # cores busy, the whole process tree (1.5 = one and a half cores)
RSS = "sys/rss_bytes"  # resident memory of the whole process tree
GPU_UTIL = "sys/gpu_util"  # percent, the mean over the worker's GPUs
GPU_MEM = "sys/gpu_mem_bytes"  # GPU memory in use, summed over the worker's GPUs
USAGE_NAMES = (CPU, RSS, GPU_UTIL, GPU_MEM)


def is_usage(name: str) -> bool:
    """True for a reserved usage name (``sys/...``), false for a reported metric."""
    return name.startswith(USAGE_PREFIX)


class UsageSample(BaseModel):
    """One sample of one worker, at `time` (unix seconds)."""

    time: float
    cpu: float | None = None
    rss_bytes: float | None = None
    gpu_util: float | None = None
    gpu_mem_bytes: float | None = None


class WorkerUsage(BaseModel):
    """One worker's samples, oldest first, and its latest one (None before the first)."""

    worker: int
    latest: UsageSample | None = None
    series: list[UsageSample] = Field(default_factory=list)


class JobUsage(BaseModel):
    """The usage of every worker of a job that has sent any, by worker index."""

    job_id: str
    status: JobStatus
    workers: list[WorkerUsage] = Field(default_factory=list)
