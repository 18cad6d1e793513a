"""One control plane and one Chromium for the console's browser tests of a module.

The browser is Debian's `chromium` driven by Playwright through `executable_path`: no
browser is ever downloaded. Without it (or without Playwright) the browser tests skip and
say why; `.ci/run` installs it, so in CI they run.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from kaon.server.app import create_app
from kaon.server.config import Settings, normalize_database_url
from tests.conftest import ADMIN_TOKEN, RunningServer, ThreadServer, test_settings

CHROMIUM_ENV = "KAON_TEST_CHROMIUM"  # another browser binary than the system chromium


def chromium_path() -> str | None:
    return os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The real control plane (reconcilers and local executor included) on SQLite, shared
    by a module's tests: starting one per test would cost more than the tests."""
    tmp = tmp_path_factory.mktemp("console")
    url = normalize_database_url(str(tmp / "kaon.db"))
    # Usage sampled every second, so a job's CPU and memory charts show within a test.
    settings = test_settings(tmp / "home", url, usage_interval_s=1.0)
    with ThreadServer(settings) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per module; each test opens a fresh context (its own
    sessionStorage, so its own sign-in)."""
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium: apt-get install -y chromium (or set KAON_TEST_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, console_server: RunningServer) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # A refused API call logs an error too (the tests make some); a blocked script does not
    # raise, so the page's own Content-Security-Policy refusals are caught here.
    page.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    yield page
    context.close()
    assert not errors, f"the console failed in the browser: {errors}"


class Api:
    """The REST API with a token: how tests set up what the console then shows."""

    def __init__(self, url: str, token: str = ADMIN_TOKEN) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})

    def post(self, path: str, body: object | None = None) -> Any:
        r = self.http.post(path, json=body)
        assert r.status_code < 300, r.text
        return r.json()

    def get(self, path: str) -> Any:
        r = self.http.get(path)
        assert r.status_code == 200, r.text
        return r.json()

    def submit(self, workspace: str = "default", **spec: object) -> str:
        return str(self.post(f"/api/v1/workspaces/{workspace}/jobs", spec)["id"])


@pytest.fixture
def api(console_server: RunningServer) -> Iterator[Api]:
    a = Api(console_server.url)
    yield a
    a.http.close()


def sign_in(page: Any, url: str, token: str = ADMIN_TOKEN) -> None:
    page.goto(f"{url}/console/")
    page.fill("[data-testid=token]", token)
    page.click("[data-testid=sign-in]")
    page.wait_for_selector("[data-testid=whoami]")


class QuietServer(ThreadServer):
    """`ThreadServer` without the reconcilers: submitted jobs stay queued, so tests of
    listing and paging see exactly the rows they made."""

    def __init__(self, settings: Settings) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", settings.port))
        self.settings = settings.with_(port=self.sock.getsockname()[1])
        app = create_app(self.settings, run_reconcilers=False)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )


@pytest.fixture
def quiet_server(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    """A control plane whose reconcilers do not run, on SQLite and on PostgreSQL."""
    with QuietServer(test_settings(tmp_path / "home", db_url)) as running:
        yield running
