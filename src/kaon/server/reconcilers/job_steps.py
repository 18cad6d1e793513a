"""What to do next with a job that holds resources: a pure function of what the database
says and what the executor observed. The reconciler only carries the answer out.

A job that must stop for a reason (cancel, preempt, retry, timeout, failure) first gets a
`stop_reason`; its workers are asked to stop every pass until none is alive, and only
then does the job move on (terminal, or back to QUEUED). So resources are released only
when nothing runs any more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kaon.core.jobs import EXIT_CODE_RESUME, JobStatus, StopReason
from kaon.executors.base import WorkerState

# Where a job goes once every worker is gone, and the status it shows while stopping.
_AFTER_STOP = {
    StopReason.CANCEL: JobStatus.CANCELLED,
    StopReason.PREEMPT: JobStatus.QUEUED,
    StopReason.RESUME: JobStatus.QUEUED,
    StopReason.RETRY: JobStatus.QUEUED,
    StopReason.TIMEOUT: JobStatus.FAILED,
    StopReason.FAILED: JobStatus.FAILED,
    StopReason.LOST: JobStatus.QUEUED,
}
_WHILE_STOPPING = {
    StopReason.PREEMPT: JobStatus.PREEMPTED,
    StopReason.RESUME: JobStatus.PREEMPTED,
    StopReason.RETRY: JobStatus.RETRYING,
    StopReason.LOST: JobStatus.PREEMPTED,
}


@dataclass(frozen=True)
class JobFacts:
    status: JobStatus
    stop_reason: StopReason | None
    workers: int  # gang size
    max_retries: int
    retries_used: int
    started_at: datetime | None
    timeout_s: float | None


@dataclass(frozen=True)
class Step:
    """The reconciler's next move for one job. `status` None means unchanged."""

    status: JobStatus | None = None
    stop_reason: StopReason | None = None
    stop_workers: bool = False
    message: str | None = None

    @property
    def requeue(self) -> bool:
        return self.status is JobStatus.QUEUED


def next_step(job: JobFacts, states: list[WorkerState], now: datetime) -> Step:
    alive = [s for s in states if s.alive]
    if job.stop_reason is not None:
        if alive:
            return Step(stop_workers=True)
        return Step(status=_AFTER_STOP[job.stop_reason], stop_reason=job.stop_reason)
    # Only workers still running can be timed out: ones that ended on their own before we
    # looked are judged by their exit codes, not by when this pass happened to run.
    if (
        alive
        and job.timeout_s
        and job.started_at
        and (now - job.started_at).total_seconds() > job.timeout_s
    ):
        return _stopping(StopReason.TIMEOUT, alive, f"timed out after {job.timeout_s:g} s", job)
    lost = [s for s in states if not s.alive and s.lost]
    if lost:
        index = lost[0].handle.rsplit("/", 1)[-1]
        why = lost[0].reason or "was lost with its node"
        message = f"worker {index} {why}; queued again to resume on other nodes"
        return _stopping(StopReason.LOST, alive, message, job)
    failed = [s for s in states if not s.alive and s.exit_code != 0]
    if failed:
        return _on_failure(job, failed, alive)
    launched = len(states) == job.workers
    if launched and not alive:
        return Step(status=JobStatus.SUCCEEDED, message="every worker exited 0")
    if launched and job.status is JobStatus.STARTING:
        return Step(status=JobStatus.RUNNING)
    return Step()


def _on_failure(job: JobFacts, failed: list[WorkerState], alive: list[WorkerState]) -> Step:
    first = failed[0]
    index = first.handle.rsplit("/", 1)[-1]
    if first.exit_code == EXIT_CODE_RESUME:
        return _stopping(StopReason.RESUME, alive, f"worker {index} asked to be resumed", job)
    what = first.reason or f"exited with code {first.exit_code}"
    if first.exit_code is None and first.reason is None:
        what = "was lost"
    if job.retries_used < job.max_retries:
        left = job.max_retries - job.retries_used
        return _stopping(
            StopReason.RETRY, alive, f"worker {index} {what}; retrying ({left} left)", job
        )
    return _stopping(StopReason.FAILED, alive, f"worker {index} {what}", job)


def _stopping(reason: StopReason, alive: list[WorkerState], message: str, job: JobFacts) -> Step:
    if alive:
        return Step(
            status=_WHILE_STOPPING.get(reason),
            stop_reason=reason,
            stop_workers=True,
            message=message,
        )
    return Step(status=_AFTER_STOP[reason], stop_reason=reason, message=message)


def _path(current: JobStatus, final: JobStatus, reason: StopReason | None) -> list[JobStatus]:
    """The statuses a job passes through to reach `final` in one step (RUNNING -> QUEUED
    goes through RETRYING or PREEMPTED, so the documented machine is respected)."""
    if final is JobStatus.QUEUED and current in (JobStatus.STARTING, JobStatus.RUNNING):
        middle = JobStatus.RETRYING if reason is StopReason.RETRY else JobStatus.PREEMPTED
        return [middle, final]
    return [final]


def check_path(current: JobStatus, final: JobStatus, reason: StopReason | None) -> None:
    """Raise IllegalTransitionError unless the job's state machine allows the move."""
    for status in _path(current, final, reason):
        current.check_transition(status)
        current = status
