"""The console in real Chromium against the real control plane: what a user sees.

Each test drives the pages the way a person would (sign in, open a job, click cancel)
and waits for what the page must show; Playwright's waits time out after 20 s, so a page
that never shows it fails.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer
from tests.console.conftest import Api, sign_in

pytestmark = pytest.mark.e2e

# Prints a numbered line and reports a loss every 0.2 s, for about a minute: long
# enough to watch it live and to cancel it while it runs.
TRAIN = (
    "import time, kaon\n"
    "for i in range(300):\n"
    "    print(f'step {i} loss {1 / (i + 1):.4f}', flush=True)\n"
    "    kaon.report(step=i, loss=1 / (i + 1))\n"
    "    time.sleep(0.2)\n"
)
SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]


def job_url(server: RunningServer, job_id: str, workspace: str = "default") -> str:
    return f"{server.url}/console/#/jobs/{job_id}?ws={workspace}"


class TestSignIn:
    def test_a_token_signs_in_and_the_pages_show_the_pool(
        self, page: Any, console_server: RunningServer
    ) -> None:
        sign_in(page, console_server.url)
        assert page.inner_text("[data-testid=whoami]") == "admin (admin)"
        page.wait_for_selector("[data-testid=allocation] >> text=default")
        page.click("[data-nav=nodes]")
        page.wait_for_selector("[data-testid=nodes] >> text=local")
        assert "8" in page.inner_text("[data-testid=nodes]")  # the test node's 8 CPUs

    def test_a_wrong_token_is_refused(self, page: Any, console_server: RunningServer) -> None:
        page.goto(f"{console_server.url}/console/")
        page.fill("[data-testid=token]", "kaon_not-a-real-token")
        page.click("[data-testid=sign-in]")
        alert = page.wait_for_selector("[role=alert]")
        assert "not valid" in alert.inner_text()
        assert page.query_selector("[data-testid=whoami]") is None


class TestJobDetail:
    def test_logs_arrive_live_the_metric_is_charted_and_cancel_stops_it(
        self, page: Any, console_server: RunningServer, api: Api
    ) -> None:
        job = api.submit(name="train", command=[sys.executable, "-c", TRAIN])
        sign_in(page, console_server.url)
        page.goto(job_url(console_server, job))
        log = page.locator("[data-testid=log]")
        log.get_by_text(re.compile(r"step 3 loss")).wait_for()
        first = log.inner_text()
        # Later lines come on the same page, without a reload: the log is streamed.
        page.wait_for_function(
            "n => document.querySelector('[data-testid=log]').innerText.length > n",
            arg=len(first) + 40,
        )
        assert log.inner_text().startswith(first.split("\n")[0])
        chart = page.wait_for_selector("[data-testid=chart][data-metric=loss] canvas")
        assert chart.bounding_box()["width"] > 100
        # Its resource usage, sampled by the worker's supervisor, is charted beside it.
        page.wait_for_selector('[data-testid=usage] [data-metric="CPU (cores)"] canvas')
        page.wait_for_selector('[data-testid=usage] [data-metric="memory (GiB)"] canvas')
        assert page.query_selector('[data-metric="GPU utilisation (%)"]') is None  # no GPU
        page.click("[data-testid=cancel]")
        page.wait_for_selector("[data-testid=state] >> text=cancelled", timeout=30_000)
        assert api.get(f"/api/v1/workspaces/default/jobs/{job}")["status"] == "cancelled"

    def test_log_search_keeps_only_matching_lines(
        self, page: Any, console_server: RunningServer, api: Api
    ) -> None:
        code = "for i in range(20): print('even' if i % 2 == 0 else 'odd', i)"
        job = api.submit(command=[sys.executable, "-c", code])
        sign_in(page, console_server.url)
        page.goto(job_url(console_server, job))
        page.locator("[data-testid=log]").get_by_text("odd 19").wait_for()
        page.fill("[data-testid=log-search]", "even")
        shown = page.inner_text("[data-testid=log]").split("\n")
        assert shown == [f"even {i}" for i in range(0, 20, 2)]


class TestWaitingJobs:
    def test_a_waiting_job_says_why_in_the_list_and_on_its_page(
        self, page: Any, console_server: RunningServer, api: Api
    ) -> None:
        blocker = api.submit(command=SLEEP, resources={"cpu": 8})
        waiting = api.submit(name="waits", command=SLEEP, resources={"cpu": 8})
        try:
            sign_in(page, console_server.url)
            page.goto(f"{console_server.url}/console/#/jobs?status=queued")
            row = page.locator(f"tr[data-job={waiting}]")
            row.locator("[data-testid=why]").get_by_text(re.compile(r"\w")).wait_for()
            why = row.locator("[data-testid=why]").inner_text()
            assert "cpu" in why.lower(), why
            page.click(f"tr[data-job={waiting}] a")
            reason = page.wait_for_selector("[data-testid=waiting-reason]")
            assert why in reason.inner_text()
        finally:
            for job in (waiting, blocker):
                api.post(f"/api/v1/workspaces/default/jobs/{job}/cancel")


class TestWorkspaces:
    def test_a_member_of_another_workspace_sees_none_of_its_jobs(
        self, page: Any, console_server: RunningServer, api: Api
    ) -> None:
        job = api.submit(name="secret-work", command=[sys.executable, "-c", "print(1)"])
        api.post("/api/v1/workspaces", {"name": "team-b"})
        other = api.post("/api/v1/tokens", {"name": "bob", "workspaces": ["team-b"]})["token"]
        sign_in(page, console_server.url, other)
        assert page.inner_text("[data-testid=whoami]") == "bob (member)"
        options = page.locator("[data-testid=workspace] option").all_inner_texts()
        assert options == ["team-b"]
        page.click("[data-nav=jobs]")
        page.wait_for_selector("[data-testid=total] >> text=0 jobs")
        assert job not in page.content()
        # Its address, typed by hand, finds nothing: the API answers 404, as for no job.
        page.goto(job_url(console_server, job))
        alert = page.wait_for_selector("[role=alert]")
        assert "not found" in alert.inner_text()
        assert "secret-work" not in page.content()


SERVICE = """
import kaon


class Model(kaon.Service):
    @kaon.handler
    def predict(self, x: list[float]) -> list[float]:
        return [2 * v for v in x]
"""


class TestDeployments:
    def test_a_deployment_shows_its_replicas_and_their_states(
        self, page: Any, console_server: RunningServer, tmp_path: Path
    ) -> None:
        (tmp_path / "model.py").write_text(SERVICE)
        client = console_server.client()
        spec = {"resources": {"cpu": 0.5, "memory": "1Gi"}}
        client.deployments.create("doubler", service="model:Model", path=tmp_path, spec=spec)
        try:
            sign_in(page, console_server.url)
            page.click("[data-nav=deployments]")
            page.click("[data-testid=deployments] >> text=doubler")
            replicas = page.locator("[data-testid=replicas]")
            replicas.locator("[data-testid=state]", has_text="ready").wait_for(timeout=60_000)
            assert "1 ready of 1 wanted" in page.inner_text(".facts")
            assert "/doubler/predict" in page.content()  # how to call it
        finally:
            client.deployments.delete("doubler")
