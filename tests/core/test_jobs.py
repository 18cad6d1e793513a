"""The job lifecycle and the job spec: pure models, table-driven."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from pydantic import ValidationError

from kaon.core.errors import IllegalTransitionError
from kaon.core.jobs import JobSpec, JobStatus
from kaon.core.resources import Resources

S = JobStatus

# The documented lifecycle, written out here independently of the code's table.
LEGAL: set[tuple[JobStatus, JobStatus]] = {
    (S.QUEUED, S.STARTING),
    (S.QUEUED, S.FAILED),
    (S.QUEUED, S.CANCELLED),
    (S.STARTING, S.RUNNING),
    (S.STARTING, S.SUCCEEDED),
    (S.STARTING, S.RETRYING),
    (S.STARTING, S.PREEMPTED),
    (S.STARTING, S.FAILED),
    (S.STARTING, S.CANCELLED),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.RETRYING),
    (S.RUNNING, S.PREEMPTED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
    (S.RETRYING, S.QUEUED),
    (S.RETRYING, S.FAILED),
    (S.RETRYING, S.CANCELLED),
    (S.PREEMPTED, S.QUEUED),
    (S.PREEMPTED, S.FAILED),
    (S.PREEMPTED, S.CANCELLED),
}
ILLEGAL = sorted(set(itertools.product(JobStatus, JobStatus)) - LEGAL)


def _id(pair: tuple[JobStatus, JobStatus]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


class TestJobStatusTransitions:
    @pytest.mark.parametrize("move", sorted(LEGAL), ids=_id)
    def test_legal_move_is_allowed(self, move: tuple[JobStatus, JobStatus]) -> None:
        old, new = move
        assert old.can_become(new)
        old.check_transition(new)  # does not raise

    @pytest.mark.parametrize("move", ILLEGAL, ids=_id)
    def test_illegal_move_raises(self, move: tuple[JobStatus, JobStatus]) -> None:
        old, new = move
        assert not old.can_become(new)
        with pytest.raises(IllegalTransitionError, match=f"from {old.value} to {new.value}"):
            old.check_transition(new)

    def test_the_table_covers_well_known_mistakes(self) -> None:
        for mistake in [
            (S.SUCCEEDED, S.RUNNING),
            (S.FAILED, S.QUEUED),
            (S.CANCELLED, S.RUNNING),
            (S.QUEUED, S.RUNNING),  # must pass through STARTING
            (S.QUEUED, S.SUCCEEDED),
            (S.RUNNING, S.QUEUED),  # must pass through RETRYING or PREEMPTED
            (S.RETRYING, S.RUNNING),
            (S.RUNNING, S.STARTING),
        ]:
            assert mistake in ILLEGAL

    @pytest.mark.parametrize("status", list(JobStatus), ids=lambda s: s.value)
    def test_terminal_statuses_go_nowhere(self, status: JobStatus) -> None:
        terminal = {S.SUCCEEDED, S.FAILED, S.CANCELLED}
        assert status.is_terminal() is (status in terminal)
        if status in terminal:
            assert not any(status.can_become(new) for new in JobStatus)
        else:  # every live job can be cancelled or failed
            assert status.can_become(S.CANCELLED) and status.can_become(S.FAILED)

    def test_holding_resources(self) -> None:
        holding = {s for s in JobStatus if s.holds_resources()}
        assert holding == {S.STARTING, S.RUNNING, S.RETRYING, S.PREEMPTED}

    def test_illegal_transition_is_a_500(self) -> None:
        assert IllegalTransitionError.status_code == 500


def _spec(**fields: Any) -> dict[str, Any]:
    return {"command": ["python", "train.py"], **fields}


# (case id, spec fields, the field the error must name)
INVALID: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("no-command", {}, ("command",)),
    ("empty-command", _spec(command=[]), ("command",)),
    ("empty-program", _spec(command=[""]), ("command",)),
    ("blank-program", _spec(command=["   ", "x"]), ("command",)),
    ("nul-in-argument", _spec(command=["python", "a\x00b"]), ("command",)),
    ("unknown-field", _spec(gpus=1), ("gpus",)),
    ("zero-workers", _spec(workers=0), ("workers",)),
    ("too-many-workers", _spec(workers=1025), ("workers",)),
    ("negative-retries", _spec(max_retries=-1), ("max_retries",)),
    ("too-many-retries", _spec(max_retries=101), ("max_retries",)),
    ("zero-timeout", _spec(timeout_s=0), ("timeout_s",)),
    ("priority-too-high", _spec(priority=1001), ("priority",)),
    ("uppercase-name", _spec(name="Train"), ("name",)),
    ("name-with-space", _spec(name="my job"), ("name",)),
    ("name-starting-with-dash", _spec(name="-x"), ("name",)),
    ("name-too-long", _spec(name="a" * 64), ("name",)),
    ("snapshot-not-hex", _spec(snapshot="z" * 64), ("snapshot",)),
    ("snapshot-too-short", _spec(snapshot="ab" * 31), ("snapshot",)),
    ("env-rank", _spec(env={"RANK": "0"}), ("env",)),
    ("env-world-size", _spec(env={"WORLD_SIZE": "4"}), ("env",)),
    ("env-master-port", _spec(env={"MASTER_PORT": "1"}), ("env",)),
    ("env-cuda-visible", _spec(env={"CUDA_VISIBLE_DEVICES": "0"}), ("env",)),
    ("env-kaon-prefix", _spec(env={"KAON_X": "1"}), ("env",)),
    ("env-kaon-job-token", _spec(env={"KAON_JOB_TOKEN": "x"}), ("env",)),
    ("env-bad-name", _spec(env={"A-B": "1"}), ("env",)),
    ("env-leading-digit", _spec(env={"1A": "1"}), ("env",)),
    ("env-nul-value", _spec(env={"A": "x\x00"}), ("env",)),
    ("zero-cpu", _spec(resources={"cpu": 0}), ("resources", "cpu")),
    ("negative-cpu", _spec(resources={"cpu": -0.5}), ("resources", "cpu")),
    ("zero-memory", _spec(resources={"memory": 0}), ("resources", "memory")),
    ("negative-memory", _spec(resources={"memory": -1}), ("resources", "memory")),
    ("memory-lots", _spec(resources={"memory": "lots"}), ("resources", "memory")),
    ("memory-negative-string", _spec(resources={"memory": "-1Gi"}), ("resources", "memory")),
    ("memory-bool", _spec(resources={"memory": True}), ("resources", "memory")),
    ("negative-gpus", _spec(resources={"gpus": -1}), ("resources", "gpus")),
    ("fractional-gpus", _spec(resources={"gpus": 0.5}), ("resources", "gpus")),
    ("unknown-resource", _spec(resources={"tpus": 1}), ("resources", "tpus")),
]


class TestJobSpec:
    def test_defaults(self) -> None:
        spec = JobSpec.model_validate(_spec())
        assert spec.workers == 1
        assert spec.max_retries == 0
        assert spec.timeout_s is None
        assert spec.env == {} and spec.labels == {}
        assert spec.resources == Resources(cpu=1.0, memory=2**30, gpus=0)

    def test_full_spec_round_trips_through_json(self) -> None:
        spec = JobSpec.model_validate(
            _spec(
                name="llm.pretrain_v2",
                snapshot="0f" * 32,
                env={"LR": "3e-4", "_private": "1"},
                resources={"cpu": 2.5, "memory": "4Gi", "gpus": 2, "gpu_type": "H100"},
                workers=4,
                max_retries=3,
                timeout_s=3600,
                priority=-5,
                labels={"zone": "a"},
            )
        )
        assert spec.resources.memory == 4 * 2**30
        assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec

    @pytest.mark.parametrize("env", [{"RANKING": "1"}, {"MY_KAON_X": "1"}, {"kaon_x": "1"}])
    def test_names_that_only_look_reserved_are_fine(self, env: dict[str, str]) -> None:
        assert JobSpec.model_validate(_spec(env=env)).env == env

    @pytest.mark.parametrize(
        ("data", "loc"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
    )
    def test_invalid_spec_names_the_field(
        self, data: dict[str, Any], loc: tuple[str, ...]
    ) -> None:
        with pytest.raises(ValidationError) as info:
            JobSpec.model_validate(data)
        assert loc in [e["loc"] for e in info.value.errors()]

    def test_reserved_env_says_why(self) -> None:
        with pytest.raises(ValidationError, match="set by Kaon"):
            JobSpec.model_validate(_spec(env={"LOCAL_RANK": "0"}))

    def test_resources_are_frozen(self) -> None:
        resources = Resources(cpu=1)
        with pytest.raises(ValidationError):
            resources.cpu = 2  # type: ignore[misc]
