"""Replicas take traffic only from the gateway: the real control plane, a real replica
process and the real gateway process, over HTTP on loopback.

Each replica is started with a credential of its own (`security.tokens.replica_key`); the
gateway adds it to what it forwards, and the replica refuses anything without it. A local
process that finds the replica's port therefore cannot skip the gateway's token check.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from kaon.core.replicas import REPLICA_KEY_HEADER
from kaon.server.security.tokens import load_token_key, replica_key
from tests.conftest import RunningServer
from tests.e2e.conftest import Gateway

SERVICE = """
import kaon
from kaon.serving.streaming import Request


class Echo(kaon.Service):
    @kaon.handler
    def headers(self, request: Request) -> dict[str, str]:
        return dict(request.headers)
"""


@pytest.fixture
def service_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "echo.py").write_text(SERVICE)
    return folder


def _until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.e2e
def test_only_the_gateway_reaches_a_replica(
    server: RunningServer, gateway: Gateway, service_dir: Path
) -> None:
    client = server.client()
    spec = {"resources": {"cpu": 0.5, "memory": "1Gi"}}
    client.deployments.create("echo", service="echo:Echo", path=service_dir, spec=spec)
    view = client.deployments.wait_ready("echo", timeout=60)  # the probes carry the key
    (replica,) = view.replicas
    assert replica.url is not None
    auth = {"Authorization": f"Bearer {server.token}"}

    def through_gateway(extra: dict[str, str] | None = None) -> httpx.Response:
        headers = {**auth, **(extra or {})}
        return httpx.post(f"{gateway.url}/echo/headers", headers=headers, timeout=10)

    _until(lambda: through_gateway().status_code == 200, 10, "the route")
    key = replica_key(load_token_key(server.settings.home), replica.job_id, 1)

    # Through the gateway: the replica sees its own key, never the caller's token.
    seen = through_gateway().json()
    assert seen[REPLICA_KEY_HEADER] == key
    assert "authorization" not in seen

    # A credential header sent by a client is dropped, not passed on (nor doubled).
    forged = through_gateway({REPLICA_KEY_HEADER: "krep_forged"})
    assert forged.status_code == 200, forged.text
    assert forged.json()[REPLICA_KEY_HEADER] == key

    # Directly to the replica's port: refused, on every path, with or without a bearer
    # token, with a wrong key, and with the key of another attempt.
    other_attempt = replica_key(load_token_key(server.settings.home), replica.job_id, 2)
    for headers in (
        {},
        auth,
        {REPLICA_KEY_HEADER: "krep_forged"},
        {REPLICA_KEY_HEADER: other_attempt},
    ):
        direct = httpx.post(f"{replica.url}/headers", headers=headers, timeout=10)
        assert direct.status_code == 403, direct.text
        for path in ("/ready", "/healthz", "/metrics", "/openapi.json"):
            got = httpx.get(f"{replica.url}{path}", headers=headers, timeout=10)
            assert got.status_code == 403, path

    # With the key (which only the gateway and the control plane hold) it answers.
    ok = httpx.post(f"{replica.url}/headers", headers={REPLICA_KEY_HEADER: key}, timeout=10)
    assert ok.status_code == 200

    # No file keeps the key: not launch.json, not the run folder, not a log.
    home = server.settings.home
    assert list(home.rglob("launch.json")), "the replica left no launch file"
    assert not list(home.rglob("handed.json")), "the credentials file was not deleted"
    holding = [
        str(p.relative_to(home))
        for p in home.rglob("*")
        if p.is_file() and key.encode() in p.read_bytes()
    ]
    assert holding == []
