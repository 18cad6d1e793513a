"""The deployment page's "try it" form, traffic and scaling; the secrets and audit pages; in
real Chromium against the real control plane and a real gateway process.

One deployment serves the module: its replicas start and stop as real processes, which
costs seconds, so the tests that need it share it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kaon.server.routers.console import GATEWAY_ENV
from tests.conftest import RunningServer
from tests.console.conftest import Api, sign_in
from tests.console.test_console import SERVICE
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

SECRET_VALUE = "s3cr3t-value-that-must-never-show"


@pytest.fixture(scope="module")
def gateway(console_server: RunningServer) -> Iterator[Gateway]:
    """The gateway as `kaon up` runs it, and the control plane told where it is."""
    gw = Gateway(console_server)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(GATEWAY_ENV, gw.url)
        yield gw
    gw.close()


@pytest.fixture(scope="module")
def echo(
    console_server: RunningServer, gateway: Gateway, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A deployment that scales to zero after a second idle, so scaling happens in a test:
    down once it has been idle, and up again at the next call."""
    code = tmp_path_factory.mktemp("echo")
    (code / "model.py").write_text(SERVICE)
    client = console_server.client()
    spec = {
        "resources": {"cpu": 0.5, "memory": "1Gi"},
        "autoscaling": {"min_replicas": 0, "max_replicas": 1, "scale_to_zero_after_s": 1},
    }
    client.deployments.create("echo", service="model:Model", path=code, spec=spec)
    yield "echo"
    client.deployments.delete("echo")


@pytest.fixture(scope="module")
def registry(
    console_server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """An artifact of two files, and a model version of it under the alias 'production'."""
    folder = tmp_path_factory.mktemp("weights")
    (folder / "config.json").write_text('{"layers": 2}')
    (folder / "model.bin").write_bytes(b"\x00" * 4096)
    client = console_server.client()
    stored = client.artifacts.push("churn-weights", folder, kind="model")
    version = client.models.register("churn", artifact=stored.ref, alias="production")
    return {"artifact": stored.ref, "model": version.model}


def deployment_url(server: RunningServer, name: str, workspace: str = "default") -> str:
    return f"{server.url}/console/#/deployments/{name}?ws={workspace}"


def member_of_another_workspace(api: Api) -> str:
    api.post("/api/v1/workspaces", {"name": "team-b"})
    return str(api.post("/api/v1/tokens", {"name": "bob", "workspaces": ["team-b"]})["token"])


class TestDeploymentPage:
    def test_the_form_calls_the_handler_and_the_page_shows_traffic_and_scaling(
        self, page: Any, console_server: RunningServer, echo: str
    ) -> None:
        sign_in(page, console_server.url)
        page.goto(deployment_url(console_server, echo))
        scaling = page.locator("[data-testid=scaling]")
        # Idle for a second after its first replica was ready: the autoscaler stops it.
        scaling.locator("text=scale to zero").wait_for(timeout=90_000)
        page.fill("[data-testid=try-handler]", "predict")
        page.fill("[data-testid=try-body]", '{"x": [1, 2, 3.5]}')
        page.click("[data-testid=try-send]")
        # The call is the demand that brings a replica back; it waits for it and answers.
        status = page.locator("[data-testid=try-status]")
        status.wait_for(timeout=90_000)
        assert status.inner_text() == "200"
        reply = page.inner_text("[data-testid=try-reply]")
        assert "7" in reply and "2" in reply, reply  # [2, 4, 7.0]
        assert page.inner_text("[data-testid=try-latency]").endswith(" ms")
        scaling.locator("text=demand with no replica").wait_for(timeout=30_000)
        assert "0 → 1" in scaling.inner_text()
        # The call's arrival, reported by the gateway, is on the traffic chart.
        page.wait_for_function(
            "Number(document.querySelector('[data-testid=traffic-now]')?.dataset.peakRps) > 0",
            timeout=30_000,
        )
        assert page.locator("[data-testid=traffic] [data-testid=chart]").count() == 2

    def test_a_wrong_token_in_the_form_is_refused_by_the_gateway(
        self, page: Any, console_server: RunningServer, echo: str
    ) -> None:
        sign_in(page, console_server.url)
        page.goto(deployment_url(console_server, echo))
        page.fill("[data-testid=try-token]", "kaon_not-a-deployment-token")
        page.click("[data-testid=try-send]")
        status = page.locator("[data-testid=try-status]")
        status.wait_for(timeout=60_000)
        assert status.inner_text() == "401"
        assert page.locator("[data-testid=whoami]").is_visible()  # still signed in

    def test_bad_json_is_refused_in_the_page(
        self, page: Any, console_server: RunningServer, echo: str
    ) -> None:
        sign_in(page, console_server.url)
        page.goto(deployment_url(console_server, echo))
        page.fill("[data-testid=try-body]", '{"x": [1,')
        page.click("[data-testid=try-send]")
        assert "not JSON" in page.locator("[data-testid=try] [role=alert]").inner_text()


class TestSecretsAndAudit:
    def test_the_secrets_page_shows_names_and_versions_never_values(
        self, page: Any, console_server: RunningServer, api: Api
    ) -> None:
        path = "/api/v1/workspaces/default/secrets/db-password"
        api.http.put(path, json={"value": "first"}).raise_for_status()
        api.http.put(path, json={"value": SECRET_VALUE}).raise_for_status()
        sign_in(page, console_server.url)
        page.click("[data-nav=secrets]")
        row = page.locator("[data-testid=secrets] tr", has_text="db-password")
        row.wait_for()
        assert "2" in row.locator("td").nth(1).inner_text()  # version 2
        html = page.content()
        assert SECRET_VALUE not in html and "first" not in row.inner_text()

    def test_an_admin_sees_every_record_and_the_chain_verified(
        self, page: Any, console_server: RunningServer, api: Api
    ) -> None:
        api.http.put(
            "/api/v1/workspaces/default/secrets/audited", json={"value": SECRET_VALUE}
        ).raise_for_status()
        sign_in(page, console_server.url)
        page.click("[data-nav=audit]")
        page.locator("[data-testid=verify]", has_text="Chain verified").wait_for()
        page.locator("[data-testid=audit]", has_text="audited").wait_for()
        # Filters: an outcome keeps only its records, a search only the matching ones.
        page.select_option("[data-testid=audit-outcome]", "ok")
        outcomes = page.locator("[data-testid=audit-record] .badge").all_inner_texts()
        assert outcomes and all(o.startswith("ok ") for o in outcomes), outcomes
        page.fill("[data-testid=audit-search]", "audited")
        rows = page.locator("[data-testid=audit-record]").all_inner_texts()
        assert rows and all("audited" in r for r in rows), rows
        assert SECRET_VALUE not in page.content()


class TestRegistry:
    def test_artifacts_and_models_are_listed_with_their_versions(
        self, page: Any, console_server: RunningServer, registry: dict[str, str]
    ) -> None:
        sign_in(page, console_server.url)
        page.click("[data-nav=artifacts]")
        page.click(f"[data-testid=artifacts] >> text={registry['artifact']}")
        files = page.locator("[data-testid=artifact-files]")
        files.locator("text=model.bin").wait_for()
        assert "config.json" in files.inner_text() and "4.0 KiB" in files.inner_text()
        page.click("[data-nav=models]")
        row = page.locator("[data-testid=models] tr", has_text="churn")
        assert "production → 1" in row.inner_text()
        row.locator("a").click()
        versions = page.locator("[data-testid=model-versions]")
        versions.locator(f"text={registry['artifact']}").wait_for()
        assert "production" in versions.inner_text()


class TestAnotherWorkspace:
    def test_a_member_of_another_workspace_sees_none_of_it(
        self,
        page: Any,
        console_server: RunningServer,
        api: Api,
        echo: str,
        registry: dict[str, str],
    ) -> None:
        api.http.put(
            "/api/v1/workspaces/default/secrets/team-a-key", json={"value": SECRET_VALUE}
        ).raise_for_status()
        bob = member_of_another_workspace(api)
        # The API first: the deployment's timeline and its form answer 404, as for none.
        with httpx.Client(
            base_url=console_server.url, headers={"Authorization": f"Bearer {bob}"}
        ) as http:
            base = f"/api/v1/workspaces/default/deployments/{echo}"
            assert http.get(f"{base}/timeline").status_code == 404
            tried = http.post(f"{base}/try", json={"handler": "predict", "body": {"x": [1]}})
            assert tried.status_code == 404, tried.text
        sign_in(page, console_server.url, bob)
        page.goto(deployment_url(console_server, echo))
        assert "not found" in page.wait_for_selector("[role=alert]").inner_text()
        page.goto(f"{console_server.url}/console/#/secrets")
        page.wait_for_selector("[data-testid=secrets] >> text=no secrets in team-b")
        page.click("[data-nav=artifacts]")
        page.wait_for_selector("[data-testid=artifacts] >> text=no artifacts in team-b")
        page.click("[data-nav=models]")
        page.wait_for_selector("[data-testid=models] >> text=no models in team-b")
        page.goto(f"{console_server.url}/console/#/models/churn?ws=default")
        assert "not found" in page.wait_for_selector("[role=alert]").inner_text()
        page.click("[data-nav=audit]")
        page.locator("[data-testid=verify]", has_text="Only an admin").wait_for()
        page.wait_for_selector("[data-testid=audit]")
        html = page.content()
        assert "team-a-key" not in html and "echo" not in html and SECRET_VALUE not in html
        assert registry["artifact"] not in html


class TestTryApi:
    def test_a_handler_path_outside_the_deployment_is_refused_naming_the_field(
        self, console_server: RunningServer, api: Api, echo: str
    ) -> None:
        path = f"/api/v1/workspaces/default/deployments/{echo}/try"
        r = api.http.post(path, json={"handler": "../other/predict", "body": {}})
        assert r.status_code == 422
        assert "handler" in r.text
