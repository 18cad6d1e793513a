"""Jobs: the spec a user submits, the lifecycle the control plane drives, the views it returns."""

from __future__ import annotations

import enum
import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kaon.core.artifacts import JobInput
from kaon.core.errors import IllegalTransitionError
from kaon.core.resources import Resources
from kaon.core.secrets import SpecEnv
from kaon.core.validation import MAX_INT64, MAX_SECONDS, SnapshotRef

_JOB_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
MAX_WORKERS = 1024
"""The most workers any job may have, whatever the server allows (its own limit, the
``max_workers_per_job`` setting, is at most this)."""


class JobStatus(enum.StrEnum):
    """Lifecycle of a job in the control plane.

    QUEUED -> STARTING -> RUNNING -> SUCCEEDED
    STARTING -> SUCCEEDED                               (finished before we saw it run)
    STARTING | RUNNING -> RETRYING -> QUEUED            (a worker failed, retries are left)
    STARTING | RUNNING -> PREEMPTED -> QUEUED           (the scheduler needs the resources)
    any non-terminal -> FAILED | CANCELLED

    While a job is RETRYING or PREEMPTED its workers are being stopped and it still holds
    its resources; it goes back to QUEUED, with `restart_count` one higher, once every
    worker is gone.
    """

    QUEUED = "queued"  # waiting for resources
    STARTING = "starting"  # placed; workers being launched
    RUNNING = "running"  # every worker launched
    RETRYING = "retrying"  # a worker failed; stopping the rest before queueing again
    PREEMPTED = "preempted"  # stopped to make room; will be queued again
    SUCCEEDED = "succeeded"  # every worker exited 0
    FAILED = "failed"  # a worker failed with no retries left, a timeout, or a bad spec
    CANCELLED = "cancelled"  # a user asked

    def is_terminal(self) -> bool:
        return self in _TERMINAL

    def holds_resources(self) -> bool:
        """True while the job's workers may be alive, so its allocation must stay."""
        return self in _HOLDING

    def can_become(self, new: JobStatus) -> bool:
        return new in _NEXT[self]

    def check_transition(self, new: JobStatus) -> None:
        if not self.can_become(new):
            raise IllegalTransitionError(f"a job cannot go from {self.value} to {new.value}")


_TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
_HOLDING = frozenset(
    {JobStatus.STARTING, JobStatus.RUNNING, JobStatus.RETRYING, JobStatus.PREEMPTED}
)
_STOPPING = frozenset({JobStatus.RETRYING, JobStatus.PREEMPTED})
_END = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
_NEXT: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.STARTING}) | _END,
    JobStatus.STARTING: frozenset({JobStatus.RUNNING, JobStatus.SUCCEEDED}) | _STOPPING | _END,
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED}) | _STOPPING | _END,
    JobStatus.RETRYING: frozenset({JobStatus.QUEUED}) | _END,
    JobStatus.PREEMPTED: frozenset({JobStatus.QUEUED}) | _END,
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class StopReason(enum.StrEnum):
    """Why a job's workers are being stopped; decides where the job goes once they are."""

    CANCEL = "cancel"  # a user (or the job's deployment) asked -> CANCELLED
    PREEMPT = "preempt"  # the scheduler needs the resources -> QUEUED
    RESUME = "resume"  # a worker exited with EXIT_CODE_RESUME -> QUEUED
    RETRY = "retry"  # a worker failed and retries are left -> QUEUED
    TIMEOUT = "timeout"  # -> FAILED
    FAILED = "failed"  # a worker failed and no retries are left -> FAILED
    LOST = "lost"  # its node is gone or unreachable; its workers with it -> QUEUED


class JobSpec(BaseModel):
    """What a user asks to run. Given as YAML, CLI flags or through the SDK.

    ``workers`` is a gang: every worker starts together or none does, each with
    ``resources``. ``snapshot`` names an uploaded working directory (its content hash).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str | None = Field(default=None, description="a label; lowercase, digits, . _ -")
    command: list[str] = Field(description="argv of each worker, e.g. ['python', 'train.py']")
    snapshot: SnapshotRef = Field(default=None, description="sha256 of an uploaded folder")
    env: SpecEnv = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    workers: int = Field(default=1, ge=1, le=MAX_WORKERS)
    max_retries: int = Field(default=0, ge=0, le=100)
    timeout_s: float | None = Field(
        default=None, gt=0, le=MAX_SECONDS, description="wall-clock limit per attempt"
    )
    priority: int = Field(default=0, ge=-1000, le=1000, description="higher runs first")
    labels: dict[str, str] = Field(default_factory=dict, description="node labels required")
    inputs: list[JobInput] = Field(
        default_factory=list,
        max_length=64,
        description="artifacts the workers find, read-only, in their working folder",
    )

    @field_validator("command", mode="before")
    @classmethod
    def _not_a_string(cls, value: object) -> object:
        """A string is refused, not split: splitting on spaces breaks quoted arguments
        (``python -c "print(3)"`` would run ``'"print(3)"'``, a no-op), and guessing a
        shell's rules here would differ from the shell the user wrote it for."""
        if isinstance(value, str):
            raise ValueError(
                "command must be a list of arguments, e.g. "
                '["python", "-c", "print(3)"], not a string'
            )
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str]) -> list[str]:
        if not value or not value[0].strip():
            raise ValueError("command must not be empty")
        if any("\x00" in part for part in value):
            raise ValueError("command must not contain NUL characters")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _JOB_NAME.match(value):
            raise ValueError("name must be 1-63 characters of a-z, 0-9, '.', '_' or '-'")
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: list[JobInput]) -> list[JobInput]:
        """Each input at a path of its own, none inside another's."""
        paths = [i.path.rstrip("/") for i in value]
        for i, path in enumerate(paths):
            for other in paths[:i]:
                if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
                    raise ValueError(f"inputs {other!r} and {path!r} overlap")
        return value

    @model_validator(mode="after")
    def _gang(self) -> JobSpec:
        if self.workers > 1 and self.resources.gpus == 0 and self.resources.cpu <= 0:
            raise ValueError("each worker of a gang needs some CPU")  # pragma: no cover
        return self


class WorkerView(BaseModel):
    """One worker of a job's current attempt, as observed."""

    index: int
    node: str
    gpus: list[int] = Field(default_factory=list)
    pid: int | None = None
    exit_code: int | None = None
    reason: str | None = None


class JobView(BaseModel):
    """A job as the API returns it."""

    id: str
    workspace: str
    name: str | None
    status: JobStatus
    spec: JobSpec
    message: str = ""
    waiting_reason: str | None = None
    restart_count: int = 0
    preemptions: int = 0
    lost_gpu_seconds: float = 0.0
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    workers: list[WorkerView] = Field(default_factory=list)

    def is_done(self) -> bool:
        return self.status.is_terminal()


class MetricPoint(BaseModel):
    """One reported value."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    step: int | None = Field(default=None, ge=0, le=MAX_INT64)
    time: float | None = Field(default=None, ge=0, le=MAX_INT64, description="unix time")
    values: dict[str, float]

    @field_validator("values")
    @classmethod
    def _values(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("values must hold at least one metric")
        for key in value:
            if not key or len(key) > 128:
                raise ValueError("metric names must be 1-128 characters")
        return value


class MetricBatch(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    worker: int = Field(default=0, ge=0, lt=MAX_WORKERS)
    points: list[MetricPoint] = Field(max_length=10_000)


class MetricView(BaseModel):
    worker: int
    step: int | None
    time: float
    name: str
    value: float


EXIT_CODE_RESUME = 75
"""A worker that exits with this code (EX_TEMPFAIL) asks to be resumed, not failed: it was
told to stop (SIGTERM), saved a checkpoint, and wants to continue later. The control plane
queues the job again without spending one of its retries. `kaon.train` exits so."""
