"""Deployment specs, how a replica is launched as a job, the replica state machine, and
the route a gateway receives."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kaon.core.deployments import DeploymentSpec, replica_env, replica_job_spec
from kaon.core.errors import IllegalTransitionError
from kaon.core.gateway import Route
from kaon.core.replicas import ReplicaStatus
from kaon.core.tokens import hash_token


class TestSpec:
    def test_defaults_and_the_replica_job(self) -> None:
        spec = DeploymentSpec(name="clf", service="app:Classifier", env={"MODE": "fast"})
        assert spec.autoscaling.min_replicas == 1 and not spec.public
        job = replica_job_spec(spec)
        assert job.command == ["python", "-m", "kaon.serving.runtime", "--service",
                               "app:Classifier"]  # fmt: skip
        assert job.env == {"MODE": "fast"} and job.resources == spec.resources
        assert replica_env("clf", "r-1") == {"KAON_REPLICA_ID": "r-1", "KAON_DEPLOYMENT": "clf"}

    def test_from_job_serves_the_predictor(self) -> None:
        spec = DeploymentSpec(name="clf", from_job="job-1")
        assert spec.service_ref() == "kaon.serving.predictor:Predictor"
        assert replica_env("clf", "r", "/ckpt")["KAON_MODEL_DIR"] == "/ckpt"

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"name": "Bad_Name", "service": "a:B"}, "deployment name"),
            ({"name": "metrics", "service": "a:B"}, "reserved"),
            ({"name": "a"}, "exactly one of service and from_job"),
            ({"name": "a", "service": "a:B", "from_job": "j"}, "exactly one"),
            ({"name": "a", "service": "no-colon"}, "module.path:ClassName"),
            ({"name": "a", "service": "a:B", "env": {"KAON_X": "1"}}, "set by Kaon"),
            ({"name": "a", "service": "a:B", "env": {"1X": "1"}}, "not a valid variable"),
            ({"name": "a", "service": "a:B", "snapshot": "abc"}, "sha256 hex digest"),
            ({"name": "a", "service": "a:B", "autoscaling": {"min_replicas": 5}}, "exceed"),
        ],
    )
    def test_validation(self, fields: dict[str, Any], message: str) -> None:
        with pytest.raises(ValidationError, match=message):
            DeploymentSpec(**fields)


R = ReplicaStatus


class TestReplicaStatus:
    @pytest.mark.parametrize(
        ("old", "new"),
        [
            (R.STARTING, R.READY),
            (R.STARTING, R.FAILED),  # crashed, or never ready in time
            (R.STARTING, R.STOPPING),
            (R.READY, R.UNHEALTHY),
            (R.UNHEALTHY, R.READY),
            (R.UNHEALTHY, R.FAILED),
            (R.READY, R.STOPPING),
            (R.STOPPING, R.STOPPED),
            (R.STOPPING, R.FAILED),
        ],
    )
    def test_allowed(self, old: ReplicaStatus, new: ReplicaStatus) -> None:
        old.check_transition(new)

    @pytest.mark.parametrize(
        ("old", "new"),
        [
            (R.STOPPED, R.READY),  # gone is gone
            (R.FAILED, R.STARTING),  # a new replica is a new row
            (R.STOPPING, R.READY),  # draining never comes back
            (R.STARTING, R.UNHEALTHY),  # unhealthy means it was ready once
            (R.READY, R.STOPPED),  # always through STOPPING (drain)
        ],
    )
    def test_forbidden(self, old: ReplicaStatus, new: ReplicaStatus) -> None:
        with pytest.raises(IllegalTransitionError, match=f"from {old.value} to {new.value}"):
            old.check_transition(new)

    def test_live_and_terminal(self) -> None:
        assert {s for s in R if s.is_live()} == {R.STARTING, R.READY, R.UNHEALTHY}
        assert {s for s in R if s.is_terminal()} == {R.STOPPED, R.FAILED}


class TestRoute:
    def test_route_wants_digests_not_tokens(self) -> None:
        assert Route(name="a", token_hashes=[hash_token("t")]).token_hashes[0] != "t"
        with pytest.raises(ValidationError, match="sha256"):
            Route(name="a", token_hashes=["plaintext-token"])
