"""`next_step`: the reconciler's pure decision for a job that holds resources.

Each case gives what the database says about the job and what the executor observed of
its workers, and the one step the reconciler must take.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from kaon.core.jobs import EXIT_CODE_RESUME, JobStatus, StopReason
from kaon.executors.base import WorkerState
from kaon.server.reconcilers.job_steps import JobFacts, Step, next_step

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
S, R = JobStatus, StopReason


def job(
    status: JobStatus = S.RUNNING,
    stop_reason: StopReason | None = None,
    workers: int = 2,
    max_retries: int = 0,
    retries_used: int = 0,
    started_s_ago: float | None = 10.0,
    timeout_s: float | None = None,
) -> JobFacts:
    started = None if started_s_ago is None else NOW - timedelta(seconds=started_s_ago)
    return JobFacts(status, stop_reason, workers, max_retries, retries_used, started, timeout_s)


def alive(index: int) -> WorkerState:
    return WorkerState(f"j-1/1/{index}", alive=True, pid=1000 + index)


def exited(index: int, code: int | None, reason: str | None = None) -> WorkerState:
    return WorkerState(
        f"j-1/1/{index}", alive=False, pid=1000 + index, exit_code=code, reason=reason
    )


@dataclass(frozen=True)
class Case:
    name: str
    job: JobFacts
    states: list[WorkerState]
    step: Step


OOM = "out of memory: the worker used 400 MiB, over its limit of 150 MiB"

CASES = [
    # -- running normally ---------------------------------------------------------------
    Case("all exited 0 -> succeeded", job(), [exited(0, 0), exited(1, 0)],
         Step(S.SUCCEEDED, message="every worker exited 0")),
    Case("finished before seen running", job(S.STARTING), [exited(0, 0), exited(1, 0)],
         Step(S.SUCCEEDED, message="every worker exited 0")),
    Case("all launched and alive -> running", job(S.STARTING), [alive(0), alive(1)],
         Step(S.RUNNING)),
    Case("running and alive -> nothing", job(), [alive(0), alive(1)], Step()),
    Case("one done, one alive -> nothing", job(), [exited(0, 0), alive(1)], Step()),
    Case("half launched -> nothing", job(S.STARTING), [alive(0)], Step()),
    # -- failures -----------------------------------------------------------------------
    Case("failure, retries left, others alive -> retrying and stop",
         job(max_retries=2), [exited(0, 1), alive(1)],
         Step(S.RETRYING, R.RETRY, stop_workers=True,
              message="worker 0 exited with code 1; retrying (2 left)")),
    Case("failure, retries left, none alive -> queued again",
         job(max_retries=3, retries_used=1), [exited(0, 0), exited(1, 4)],
         Step(S.QUEUED, R.RETRY, message="worker 1 exited with code 4; retrying (2 left)")),
    Case("failure, no retries left, others alive -> stop first",
         job(max_retries=1, retries_used=1), [alive(0), exited(1, 2)],
         Step(None, R.FAILED, stop_workers=True, message="worker 1 exited with code 2")),
    Case("failure, no retries left, none alive -> failed",
         job(), [exited(0, 2), exited(1, 0)],
         Step(S.FAILED, R.FAILED, message="worker 0 exited with code 2")),
    Case("killed for memory: the reason is the message",
         job(workers=1), [exited(0, 137, OOM)],
         Step(S.FAILED, R.FAILED, message=f"worker 0 {OOM}")),
    Case("worker lost with no word",
         job(workers=1), [exited(0, None)],
         Step(S.FAILED, R.FAILED, message="worker 0 was lost")),
    Case("worker lost with a reason",
         job(workers=1, max_retries=1), [exited(0, None, "lost: the worker's supervisor died")],
         Step(S.QUEUED, R.RETRY,
              message="worker 0 lost: the worker's supervisor died; retrying (1 left)")),
    # -- resume (exit 75) does not spend a retry -----------------------------------------
    Case("exit 75, others alive -> preempted and stop",
         job(), [exited(0, EXIT_CODE_RESUME), alive(1)],
         Step(S.PREEMPTED, R.RESUME, stop_workers=True, message="worker 0 asked to be resumed")),
    Case("exit 75, none alive -> queued again",
         job(), [exited(0, EXIT_CODE_RESUME), exited(1, EXIT_CODE_RESUME)],
         Step(S.QUEUED, R.RESUME, message="worker 0 asked to be resumed")),
    # -- timeout ------------------------------------------------------------------------
    Case("over the timeout, alive -> stop",
         job(started_s_ago=10, timeout_s=5), [alive(0), alive(1)],
         Step(None, R.TIMEOUT, stop_workers=True, message="timed out after 5 s")),
    Case("within the timeout -> nothing",
         job(started_s_ago=4, timeout_s=5), [alive(0), alive(1)], Step()),
    Case("timeout before the job started counts nothing",
         job(S.STARTING, started_s_ago=None, timeout_s=5), [alive(0), alive(1)],
         Step(S.RUNNING)),
    Case("finished on its own, seen after the timeout -> succeeded",
         job(started_s_ago=10, timeout_s=5), [exited(0, 0), exited(1, 0)],
         Step(S.SUCCEEDED, message="every worker exited 0")),
    # -- stopping for a reason already decided ------------------------------------------
    Case("cancel while alive -> stop workers", job(stop_reason=R.CANCEL),
         [alive(0), exited(1, 143)], Step(stop_workers=True)),
    Case("cancel, all gone -> cancelled", job(stop_reason=R.CANCEL),
         [exited(0, 143), exited(1, 137)], Step(S.CANCELLED, R.CANCEL)),
    Case("cancel wins over a failure", job(stop_reason=R.CANCEL, max_retries=5),
         [exited(0, 1), exited(1, 0)], Step(S.CANCELLED, R.CANCEL)),
    Case("preempted, all gone -> queued", job(S.PREEMPTED, R.PREEMPT),
         [exited(0, 143), exited(1, 143)], Step(S.QUEUED, R.PREEMPT)),
    Case("preempted, still alive -> keep stopping", job(S.PREEMPTED, R.PREEMPT),
         [alive(0), alive(1)], Step(stop_workers=True)),
    Case("retrying, all gone -> queued", job(S.RETRYING, R.RETRY),
         [exited(0, 1), exited(1, 143)], Step(S.QUEUED, R.RETRY)),
    Case("timed out, all gone -> failed", job(stop_reason=R.TIMEOUT, timeout_s=5),
         [exited(0, 137), exited(1, 143)], Step(S.FAILED, R.TIMEOUT)),
    Case("failed, still alive -> keep stopping", job(stop_reason=R.FAILED),
         [exited(0, 1), alive(1)], Step(stop_workers=True)),
]  # fmt: skip


class TestNextStep:
    @pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
    def test_table(self, case: Case) -> None:
        assert next_step(case.job, case.states, NOW) == case.step

    @pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
    def test_every_step_respects_the_lifecycle(self, case: Case) -> None:
        """A job moves only along the documented transitions (to QUEUED through RETRYING
        or PREEMPTED, as the reconciler does)."""
        step = next_step(case.job, case.states, NOW)
        if step.status is None or step.status is case.job.status:
            return
        current = case.job.status
        if step.status is S.QUEUED and current in (S.STARTING, S.RUNNING):
            middle = S.RETRYING if step.stop_reason is R.RETRY else S.PREEMPTED
            assert current.can_become(middle)
            current = middle
        assert current.can_become(step.status)

    def test_requeue_only_for_queued(self) -> None:
        assert Step(S.QUEUED).requeue
        assert not Step(S.FAILED).requeue
        assert not Step().requeue

    def test_a_resume_is_taken_even_with_no_retries(self) -> None:
        facts = job(workers=1, max_retries=0, retries_used=0)
        assert next_step(facts, [exited(0, EXIT_CODE_RESUME)], NOW).status is S.QUEUED

    def test_the_deadline_is_measured_from_started_at(self) -> None:
        facts = job(workers=1, started_s_ago=None, timeout_s=5)
        facts = replace(facts, started_at=NOW - timedelta(seconds=5.001))
        assert next_step(facts, [alive(0)], NOW).stop_reason is R.TIMEOUT
        facts = replace(facts, started_at=NOW - timedelta(seconds=4.999))
        assert next_step(facts, [alive(0)], NOW) == Step()


class TestLostWorkers:
    def test_a_worker_lost_with_its_node_requeues_without_a_retry(self) -> None:
        lost = WorkerState("j-1/1/1", alive=False, reason="lost: its node died", lost=True)
        step = next_step(job(max_retries=0), [alive(0), lost], NOW)
        assert step == Step(
            status=S.PREEMPTED,
            stop_reason=R.LOST,
            stop_workers=True,
            message="worker 1 lost: its node died; queued again to resume on other nodes",
        )

    def test_once_the_rest_are_gone_it_is_queued(self) -> None:
        lost = WorkerState("j-1/1/1", alive=False, reason="lost", lost=True)
        step = next_step(job(S.PREEMPTED, stop_reason=R.LOST), [exited(0, 137), lost], NOW)
        assert step.status is S.QUEUED and step.stop_reason is R.LOST
