"""Deployments end to end: the real control plane, real replica processes and the real
gateway process, over HTTP on loopback."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer
from tests.e2e.conftest import Gateway

SERVICE = """
import os
import kaon
from pydantic import BaseModel


class Out(BaseModel):
    y: list[float]
    version: str


class Model(kaon.Service):
    def setup(self) -> None:
        if os.environ.get("FAIL_SETUP"):
            raise RuntimeError("the weights file is missing")
        self.version = os.environ.get("VERSION", "1")

    @kaon.handler
    def predict(self, x: list[float]) -> Out:
        return Out(y=[2 * v for v in x], version=self.version)
"""


@pytest.fixture
def service_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "model.py").write_text(SERVICE)
    return folder


def _spec(**extra: object) -> dict[str, object]:
    spec: dict[str, object] = {"resources": {"cpu": 0.5, "memory": "1Gi"}}
    spec.update(extra)
    return spec


def _until(check: object, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.e2e
def test_deploy_and_predict_with_tokens(
    server: RunningServer, gateway: Gateway, service_dir: Path
) -> None:
    client = server.client()
    client.deployments.create("clf", service="model:Model", path=service_dir, spec=_spec())
    view = client.deployments.wait_ready("clf", timeout=60)
    assert view.ready_replicas == 1
    _until(lambda: gateway.predict("clf", server.token, [1.0]).status_code == 200, 10, "the route")
    ok = gateway.predict("clf", server.token, [1.0, 2.5])
    assert ok.json() == {"y": [2.0, 5.0], "version": "1"}
    assert gateway.predict("clf", None, [1.0]).status_code == 401
    assert gateway.predict("clf", "kaon_wrong", [1.0]).status_code == 401
    assert gateway.predict("nope", server.token, [1.0]).status_code == 404
    bad = httpx.post(
        f"{gateway.url}/clf/predict",
        json={"x": "nope"},
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=10,
    )
    assert bad.status_code == 422 and "x" in bad.text
    secret = client.deployments.create_token("clf").token
    # At once: a gateway that does not know a token fetches its routes before a 401.
    assert gateway.predict("clf", secret, [3.0]).status_code == 200
    # A workspace token of another workspace may not call it.
    client.workspaces.create("other")
    outsider = client.tokens.create("outsider", workspaces=["other"]).token
    time.sleep(0.5)
    assert gateway.predict("clf", outsider, [1.0]).status_code == 401


@pytest.mark.e2e
def test_scale_to_zero_and_back(
    server: RunningServer, gateway: Gateway, service_dir: Path
) -> None:
    client = server.client()
    scaling = {
        "min_replicas": 0,
        "max_replicas": 1,
        "scale_to_zero_after_s": 1.0,
        "scale_down_delay_s": 0.5,
        "scale_up_delay_s": 0.5,
    }
    client.deployments.create(
        "zero", service="model:Model", path=service_dir, spec=_spec(autoscaling=scaling)
    )
    client.deployments.wait_ready("zero", timeout=60)
    _until(lambda: client.deployments.get("zero").status == "scaled-to-zero", 60, "scale to zero")
    _until(
        lambda: not [r for r in client.deployments.get("zero").replicas if r.state != "stopped"],
        30,
        "the replica to stop",
    )
    started = time.monotonic()
    response = gateway.predict("zero", server.token, [4.0], timeout=60)
    cold_start = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["y"] == [8.0]
    assert cold_start < 30
    assert client.deployments.get("zero").ready_replicas == 1


@pytest.mark.e2e
def test_rolling_update_fails_no_request(
    server: RunningServer, gateway: Gateway, service_dir: Path
) -> None:
    client = server.client()
    scaling = {"min_replicas": 2, "max_replicas": 2}
    client.deployments.create(
        "roll",
        service="model:Model",
        path=service_dir,
        spec=_spec(autoscaling=scaling, env={"VERSION": "1"}),
    )
    client.deployments.wait_ready("roll", timeout=90)
    _until(
        lambda: gateway.predict("roll", server.token, [1.0]).status_code == 200, 10, "the route"
    )
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set() and len(results) < 20_000:
                r = http.post(
                    f"{gateway.url}/roll/predict",
                    json={"x": [1.0]},
                    headers={"Authorization": f"Bearer {server.token}"},
                )
                results.append(
                    (
                        r.status_code,
                        r.json().get("version", "") if r.status_code == 200 else r.text,
                    )
                )
                time.sleep(0.01)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(1)
        view = client.deployments.update(
            "roll",
            _spec(
                service="model:Model",
                autoscaling=scaling,
                env={"VERSION": "2"},
                snapshot=client.deployments.get("roll").spec.snapshot,
            ),
        )
        assert view.generation == 2

        def rolled() -> bool:
            v = client.deployments.get("roll")
            live = [
                r for r in v.replicas if r.state in ("starting", "ready", "unhealthy", "stopping")
            ]
            return v.status == "ready" and all(r.generation == 2 for r in live) and len(live) == 2

        _until(rolled, 120, "the rollout")
        time.sleep(1.5)
    finally:
        stop.set()
        thread.join(timeout=60)
    failed = [r for r in results if r[0] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:3]}"
    versions = [v for _, v in results]
    assert versions[0] == "1" and versions[-1] == "2"
    assert len(results) > 50


@pytest.mark.e2e
def test_crashed_replica_is_replaced(
    server: RunningServer, gateway: Gateway, service_dir: Path
) -> None:
    client = server.client()
    client.deployments.create("crash", service="model:Model", path=service_dir, spec=_spec())
    view = client.deployments.wait_ready("crash", timeout=60)
    _until(
        lambda: gateway.predict("crash", server.token, [1.0]).status_code == 200, 10, "the route"
    )
    pid = view.replicas[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # Never a hung connection: every request during the crash answers within its timeout,
    # with a retry or a clean 502/503, and service comes back.
    codes = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        code = gateway.predict("crash", server.token, [1.0], timeout=35).status_code
        codes.append(code)
        if code == 200 and len(codes) > 1:
            break
        time.sleep(0.1)
    assert codes[-1] == 200
    assert set(codes) <= {200, 502, 503}
    after = client.deployments.get("crash")
    assert [r.pid for r in after.replicas if r.state == "ready"] != [pid]


@pytest.mark.e2e
def test_setup_failure_shows_why(server: RunningServer, service_dir: Path) -> None:
    client = server.client()
    client.deployments.create(
        "broken", service="model:Model", path=service_dir, spec=_spec(env={"FAIL_SETUP": "1"})
    )
    _until(lambda: client.deployments.get("broken").status == "failing", 90, "the failing status")
    view = client.deployments.get("broken")
    assert "crashed" in view.message
    assert "the weights file is missing" in client.deployments.logs("broken")
    assert "Traceback" in client.deployments.logs("broken")
