"""A spec's env with references to secrets: what is accepted, what is refused, and what
the launch environment and a stored spec hold."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kaon.core.deployments import DeploymentSpec, replica_job_spec
from kaon.core.jobs import JobSpec
from kaon.core.secrets import (
    SECRET_ENV_MARKER,
    SECRET_FILES_MARKER,
    SecretRef,
    plain_env,
    secret_refs,
)
from kaon.server.db.models import Job
from kaon.server.reconcilers.job_launch import LaunchConfig, gang


class TestSpecEnv:
    def test_plain_values_and_references(self) -> None:
        spec = JobSpec(command=["x"], env={"A": "1", "KEY": {"secret": "openai-key"}})
        assert spec.env["KEY"] == SecretRef(secret="openai-key")
        assert plain_env(spec.env) == {"A": "1"}
        assert secret_refs(spec.env) == {"KEY": "openai-key"}
        stored = spec.model_dump(mode="json")["env"]
        assert stored == {"A": "1", "KEY": {"secret": "openai-key"}}  # only the name

    @pytest.mark.parametrize(
        ("env", "message"),
        [
            ({"KEY": {"secret": "Bad_Name"}}, "secret name"),
            ({"KAON_X": {"secret": "ok"}}, "set by Kaon"),
            ({"RANK": {"secret": "ok"}}, "set by Kaon"),
            ({"1BAD": {"secret": "ok"}}, "not a valid variable name"),
            ({"KEY": {"secret": "ok", "value": "x"}}, "Extra inputs"),
            ({"KEY": {"value": "x"}}, "secret"),
        ],
    )
    def test_refused(self, env: dict[str, object], message: str) -> None:
        with pytest.raises(ValidationError, match=message):
            JobSpec(command=["x"], env=env)

    def test_a_deployments_replicas_keep_the_reference(self) -> None:
        spec = DeploymentSpec(name="d", service="m:C", env={"K": {"secret": "s"}})
        assert secret_refs(replica_job_spec(spec).env) == {"K": "s"}


def test_the_launch_environment_names_the_variables_only() -> None:
    env = {
        "A": "1",
        "K2": {"secret": "b"},
        "K1": {"secret": "a"},
        "F": {"secret": "a", "file": True},
    }
    spec = JobSpec(command=["x"], env=env)
    job = Job(id="j-1", name=None, spec=spec.model_dump(mode="json"), attempt=1)
    job.system_env, job.restart_count = {}, 0
    launch = gang(job, [], LaunchConfig(api_url="http://x", blobs_dir="/b", token_key=b"k"))
    assert launch.env["A"] == "1"
    assert launch.env[SECRET_ENV_MARKER] == "F,K1,K2"
    assert launch.env[SECRET_FILES_MARKER] == "F"
    assert "K1" not in launch.env and "K2" not in launch.env and "F" not in launch.env
