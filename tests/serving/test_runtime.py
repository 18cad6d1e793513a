"""The replica process as the executor starts it: ``python -m kaon.serving.runtime``."""

from __future__ import annotations

import time

import httpx
import pytest

from kaon.serving.endpoint import build_endpoint
from kaon.serving.runtime import load_service
from kaon.serving.service import HandlerOptions, Service, handler
from tests.serving.helpers import HERE, spawn_replica, wait_ready


@pytest.mark.e2e
class TestReplicaProcess:
    def test_serves_a_service_from_a_folder(self) -> None:
        env = {"KAON_REPLICA_ID": "r-1", "KAON_DEPLOYMENT": "clf"}
        with spawn_replica("services:Classifier", env=env) as (proc, url):
            assert httpx.post(f"{url}/predict", json={"x": [[0.5, -1.0]]}).json() == [0.5]
            assert httpx.post(f"{url}/whoami").json()["replica"] == "r-1"
            assert httpx.get(f"{url}/openapi.json").json()["info"]["title"] == "clf"

    def test_failed_setup_reports_503_then_exits_nonzero(self) -> None:
        args = ("--exit-after-setup-failure", "1.5")
        with spawn_replica("services:BrokenSetup", *args, wait=False) as (proc, url):
            wait_ready(url, path="/healthz")
            ready = httpx.get(f"{url}/ready")
            assert ready.status_code == 503
            assert ready.json()["status"] == "failed"
            assert "FileNotFoundError: weights.pt is missing" in ready.json()["reason"]
            start = time.monotonic()
            assert proc.wait(timeout=10) == 1
            assert time.monotonic() - start < 5
            stderr = proc.stderr.read() if proc.stderr else ""
        assert "Traceback (most recent call last)" in stderr
        assert "weights.pt is missing" in stderr

    def test_unknown_service_exits_at_once(self) -> None:
        with spawn_replica("services:Nope", wait=False) as (proc, _url):
            assert proc.wait(timeout=20) != 0
            assert "Nope" in (proc.stderr.read() if proc.stderr else "")


class TestLoadService:
    def test_rejects_a_class_that_is_not_a_service(self) -> None:
        with pytest.raises(TypeError, match="not a subclass"):
            load_service("helpers:HERE", HERE)
        with pytest.raises(ValueError, match="module:Class"):
            load_service("no-colon")


class TestSignatures:
    def test_batched_handler_needs_a_list_parameter(self) -> None:
        class Bad(Service):
            @handler(max_batch_size=4)
            def f(self, x: float) -> list[float]:
                return [x]

        with pytest.raises(TypeError, match=r"list\[T\]"):
            build_endpoint("f", Bad.f, HandlerOptions(max_batch_size=4))

    def test_options_are_validated(self) -> None:
        with pytest.raises(ValueError, match="method"):
            HandlerOptions(method="FETCH")
        with pytest.raises(ValueError, match="max_batch_size"):
            HandlerOptions(max_batch_size=0)


class TestStartCost:
    def test_replica_does_not_import_the_control_plane_models(self) -> None:
        """Every cold start pays for each import; the models cost about 0.1 s."""
        import subprocess
        import sys

        code = "import sys, kaon.serving.runtime; print('kaon.core.deployments' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.stdout.strip() == "False", out.stderr
