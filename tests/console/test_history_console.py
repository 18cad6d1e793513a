"""The overview's and quotas page's history in real Chromium: the charts draw the points
the control plane recorded, and a workspace over its quota shows what it borrows and
the one under its quota what it lends."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from kaon.server.config import normalize_database_url
from kaon.server.services.history import INTERVAL_ENV
from tests.conftest import RunningServer, ThreadServer, test_settings
from tests.console.conftest import Api, sign_in

pytestmark = pytest.mark.e2e

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The module's control plane, sampling its pool every 0.5 s (15 s by default), so a
    test sees a history of several points within seconds."""
    tmp = tmp_path_factory.mktemp("console-history")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(INTERVAL_ENV, "0.5")
        url = normalize_database_url(str(tmp / "kaon.db"))
        settings = test_settings(tmp / "home", url)
        server = ThreadServer(settings)  # reads the interval here, once
    with server as running:
        yield running


def test_the_overview_charts_the_recorded_history(
    page: Any, console_server: RunningServer, api: Api
) -> None:
    api.submit(command=SLEEP, resources={"cpu": 2})
    sign_in(page, console_server.url)
    page.wait_for_function(
        "() => +document.querySelector('[data-testid=history]')?.dataset.points >= 4"
    )
    chart = page.wait_for_selector("[data-testid=history] [data-metric='CPUs allocated']")
    assert chart.query_selector("canvas") is not None
    assert "default" in chart.inner_text()  # the workspace's own line, in the legend
    assert "restart forgets it" in page.inner_text("[data-testid=history-retention]")
    page.click("[data-testid=history] button >> text=24 h")
    page.wait_for_selector("[data-testid=history] button.active >> text=24 h")


def test_the_quotas_page_shows_what_is_borrowed_and_lent(
    page: Any, console_server: RunningServer, api: Api
) -> None:
    for name in ("small", "big"):
        api.post("/api/v1/workspaces", {"name": name})
    quotas = {"small": {"cpus": 1, "borrow_cpus": 4}, "big": {"cpus": 4}}
    for name, quota in quotas.items():
        assert api.http.put(f"/api/v1/quotas/{name}", json=quota).status_code == 200
    for _ in range(3):
        api.submit("small", command=SLEEP, resources={"cpu": 1})
    sign_in(page, console_server.url)
    page.click("[data-nav=quotas]")
    borrowed = "tr[data-workspace=small] [data-testid=borrowed]"
    page.wait_for_selector(f"{borrowed} >> text=2 CPUs")
    assert page.inner_text("tr[data-workspace=big] [data-testid=lent]") == "2 CPUs"
    assert page.inner_text("tr[data-workspace=small] [data-testid=lent]") == "none"
    assert page.inner_text("tr[data-workspace=big] [data-testid=borrowed]") == "none"
    page.wait_for_selector("[data-testid=quota-history] [data-metric='small: CPUs']")
