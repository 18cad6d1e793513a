"""A deployment whose env references a secret: its replica gets the value, its view and
its replicas' job specs hold only the name, and its replica log shows ``***``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kaon.core.errors import InvalidSpecError
from kaon.sdk.secrets import secret
from tests.conftest import RunningServer

VALUE = "deploy-canary-0c41be92"
DIGEST = hashlib.sha256(VALUE.encode()).hexdigest()
SERVICE = f"""
import hashlib, os
import kaon


class Model(kaon.Service):
    def setup(self) -> None:
        key = os.environ["API_KEY"]
        if hashlib.sha256(key.encode()).hexdigest() != "{DIGEST}":
            raise RuntimeError("the replica got the wrong value")
        print("setup with", key, flush=True)

    @kaon.handler
    def predict(self, x: list[float]) -> list[float]:
        return x
"""


@pytest.mark.e2e
def test_a_replica_gets_the_value_and_shows_stars(server: RunningServer, tmp_path: Path) -> None:
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "model.py").write_text(SERVICE)
    client = server.client()
    client.secrets.set("api-key", VALUE)
    spec = {"resources": {"cpu": 0.5, "memory": "1Gi"}, "env": {"API_KEY": secret("api-key")}}
    client.deployments.create("sec", service="model:Model", path=folder, spec=spec)
    view = client.deployments.wait_ready("sec", timeout=90)  # setup checked the value
    assert view.spec.model_dump(mode="json")["env"] == {"API_KEY": {"secret": "api-key"}}
    logs = client.deployments.logs("sec")
    assert "setup with ***" in logs and VALUE not in logs
    raw = client.request("GET", client.ws_path("/deployments/sec")).text
    assert VALUE not in raw and "api-key" in raw
    client.deployments.delete("sec")


def test_a_missing_secret_is_refused_at_create(server: RunningServer, tmp_path: Path) -> None:
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "model.py").write_text(SERVICE)
    client = server.client()
    spec = {"resources": {"cpu": 0.5, "memory": "1Gi"}, "env": {"API_KEY": secret("no-such")}}
    with pytest.raises(InvalidSpecError) as e:
        client.deployments.create("nosecret", service="model:Model", path=folder, spec=spec)
    assert e.value.field == "env.API_KEY" and "no-such" in e.value.message
    assert "nosecret" not in [d.name for d in client.deployments.list()]
