"""The deployment page's two routes over HTTP, on SQLite and PostgreSQL: a deployment's
traffic as its gateways report it, and the "try it" call's refusals (the calls that reach
a gateway are in test_observability.py, in the browser)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaon.server.routers.console import GATEWAY_ENV
from tests.conftest import RunningServer, free_port
from tests.console.conftest import Api
from tests.console.test_console import SERVICE

BASE = "/api/v1/workspaces/default/deployments/web"


@pytest.fixture
def deployed(quiet_server: RunningServer, tmp_path: Path) -> Iterator[Api]:
    """A deployment whose replicas never start (no reconcilers): only its rows exist."""
    (tmp_path / "model.py").write_text(SERVICE)
    quiet_server.client().deployments.create("web", service="model:Model", path=tmp_path)
    api = Api(quiet_server.url)
    yield api
    api.http.close()


def report(api: Api, gateway_id: str, rps: float, p99: float, errors: float) -> None:
    load = {"name": "web", "workspace": "default", "in_flight": 1, "queued": 0}
    load |= {"requests_per_s": rps}
    load |= {"p50_ms": p99 / 2, "p99_ms": p99, "errors_per_s": errors}
    body = {"gateway_id": gateway_id, "time": time.time(), "window_s": 1.0}
    r = api.http.post("/api/v1/gateway/report", json={**body, "deployments": [load]})
    assert r.status_code == 204, r.text


class TestTimeline:
    def test_reports_become_samples_summed_over_gateways(self, deployed: Api) -> None:
        assert deployed.get(f"{BASE}/timeline")["samples"] == []
        report(deployed, "gw-a", rps=3.0, p99=40.0, errors=0.5)
        report(deployed, "gw-b", rps=2.0, p99=90.0, errors=0.0)
        samples = deployed.get(f"{BASE}/timeline")["samples"]
        # Both within a second or straddling one: the total and the worst p99 are kept.
        assert sum(s["requests_per_s"] for s in samples) == pytest.approx(5.0)
        assert sum(s["errors_per_s"] for s in samples) == pytest.approx(0.5)
        assert max(s["p99_ms"] for s in samples) == 90.0

    def test_another_workspace_gets_404(self, deployed: Api) -> None:
        deployed.post("/api/v1/workspaces", {"name": "team-b"})
        bob = deployed.post("/api/v1/tokens", {"name": "bob", "workspaces": ["team-b"]})
        other = Api(str(deployed.http.base_url), bob["token"])
        assert other.http.get(f"{BASE}/timeline").status_code == 404
        assert other.http.post(f"{BASE}/try", json={"handler": "predict"}).status_code == 404
        other.http.close()


class TestTry:
    @pytest.mark.parametrize("handler", ["../x", "a/../../b", "predict?x=1", "", "a b"])
    def test_a_handler_that_is_no_path_is_refused_naming_the_field(
        self, deployed: Api, handler: str
    ) -> None:
        r = deployed.http.post(f"{BASE}/try", json={"handler": handler, "body": {}})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "handler"

    def test_an_unknown_field_is_refused(self, deployed: Api) -> None:
        r = deployed.http.post(f"{BASE}/try", json={"handler": "predict", "bdy": {}})
        assert r.status_code == 422 and "bdy" in r.text

    def test_no_gateway_answers_503_saying_where_it_looked(
        self, deployed: Api, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        nowhere = f"http://127.0.0.1:{free_port()}"
        monkeypatch.setenv(GATEWAY_ENV, nowhere)
        r = deployed.http.post(f"{BASE}/try", json={"handler": "predict", "body": {"x": [1]}})
        assert r.status_code == 503, r.text
        assert nowhere in r.json()["detail"] and GATEWAY_ENV in r.json()["detail"]
