"""Workspace quotas: a nominal share of the pool, and how much idle capacity a workspace
may borrow beyond it (borrowed capacity is reclaimed by preemption when its owner needs
it, as in Kueue's cohorts). Unset means unlimited."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kaon.core.resources import parse_memory
from kaon.core.validation import MAX_BYTES


class QuotaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    gpus: float | None = Field(default=None, ge=0, description="nominal GPUs")
    cpus: float | None = Field(default=None, ge=0, description="nominal CPUs")
    memory: int | None = Field(
        default=None, ge=0, le=MAX_BYTES, description="nominal memory, bytes or '256Gi'"
    )
    borrow_limit: float | None = Field(default=None, ge=0, description="GPUs it may borrow")
    borrow_cpus: float | None = Field(default=None, ge=0)
    borrow_memory: int | None = Field(default=None, ge=0, le=MAX_BYTES)
    storage: int | None = Field(
        default=None,
        ge=0,
        le=MAX_BYTES,
        description="bytes the workspace may store (artifacts, code snapshots), or '500Gi'; "
        "unset: the instance's default (KAON_WORKSPACE_STORAGE_LIMIT)",
    )

    @field_validator("memory", "borrow_memory", "storage", mode="before")
    @classmethod
    def _memory(cls, value: object) -> object:
        return parse_memory(value) if isinstance(value, str) else value


class QuotaUsage(BaseModel):
    gpus: float = 0
    cpus: float = 0
    memory: int = 0


class QuotaView(BaseModel):
    workspace: str
    quota: QuotaSpec
    used: QuotaUsage = Field(default_factory=QuotaUsage)
