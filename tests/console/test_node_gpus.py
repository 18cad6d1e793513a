"""Each node's GPUs in the nodes listing (`gpu_use`), on SQLite and PostgreSQL: the
utilisation and memory a job's worker reported, "not measured" where nothing was, names
only for the caller's own workspaces; and the nodes page showing the number."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from kaon.core.nodes import GpuInfo, NodeView
from kaon.server.security.principal import Principal
from kaon.server.services.node_gpus import Holder, gpu_use
from tests.conftest import RunningServer
from tests.console.conftest import Api, sign_in
from tests.console.test_history_api import SLEEP
from tests.console.test_history_api import admin as admin  # a fixture: the admin's API
from tests.console.test_history_api import server as server  # a fixture: 2 declared GPUs

GIB = 2**30
# Reports 70 % utilisation and 3 GiB of GPU memory under the reserved names with the job's
# own token, as a worker's supervisor does where NVML sees its GPUs (the test node's GPUs
# are only declared, so nothing else measures them).
BUSY_GPU = [
    sys.executable,
    "-c",
    "import os, time, httpx\n"
    "e = os.environ\n"
    "url = f\"{e['KAON_API_URL']}/api/v1/jobs/{e['KAON_JOB_ID']}/metrics\"\n"
    "auth = {'Authorization': f\"Bearer {e['KAON_JOB_TOKEN']}\"}\n"
    "while True:\n"
    "    values = {'sys/gpu_util': 70.0, 'sys/gpu_mem_bytes': 3 * 2**30}\n"
    "    httpx.post(url, json={'points': [{'time': time.time(), 'values': values}]}, "
    "headers=auth)\n"
    "    time.sleep(0.3)\n",
]


def gpus(api: Api) -> list[dict[str, Any]]:
    (node,) = api.get("/api/v1/nodes")
    return list(node["gpu_use"])


def until(api: Api, check: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """The first GPUs of the node that pass `check` (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        got = gpus(api)
        if check(got):
            return got
        assert time.monotonic() < deadline, f"never came: {got}"
        time.sleep(0.2)


def busy_and_idle(admin: Api) -> tuple[str, str]:
    """A job on one GPU that reports its use, and one on the other that reports nothing."""
    busy = admin.submit(name="trainer", command=BUSY_GPU, resources={"cpu": 1, "gpus": 1})
    idle = admin.submit(command=SLEEP, resources={"cpu": 1, "gpus": 1})
    return busy, idle


def by_job(view: list[dict[str, Any]], job_id: str) -> dict[str, Any]:
    (found,) = [g for g in view if g["job_id"] == job_id]
    return found


class TestApi:
    def test_free_gpus_are_listed_unheld_and_unmeasured(
        self, server: RunningServer, admin: Api
    ) -> None:
        view = gpus(admin)
        assert [g["index"] for g in view] == [0, 1]
        assert all(not g["held"] and g["util"] is None and g["job_id"] is None for g in view)
        assert all(g["memory_total"] == 80 * GIB for g in view)

    def test_a_gpu_shows_what_its_worker_measured_and_another_is_not_measured(
        self, server: RunningServer, admin: Api
    ) -> None:
        busy, idle = busy_and_idle(admin)
        view = until(admin, lambda v: any(g["util"] == 70.0 for g in v))
        measured = by_job(view, busy)
        assert measured["held"] and measured["job_name"] == "trainer"
        assert measured["workspace"] == "default" and measured["worker"] == 0
        assert measured["memory_used"] == 3 * GIB and measured["memory_total"] == 80 * GIB
        view = until(admin, lambda v: sum(g["held"] for g in v) == 2)
        unmeasured = by_job(view, idle)
        assert unmeasured["util"] is None and unmeasured["memory_used"] is None
        assert {g["index"] for g in view} == {0, 1}

    def test_another_workspaces_member_sees_use_but_no_names(
        self, server: RunningServer, admin: Api
    ) -> None:
        busy_and_idle(admin)
        admin.post("/api/v1/workspaces", {"name": "other"})
        made = admin.post("/api/v1/tokens", {"name": "olga", "workspaces": ["other"]})
        olga = Api(server.url, made["token"])
        view = until(olga, lambda v: all(g["held"] for g in v) and any(g["util"] for g in v))
        assert all(g["job_id"] is None and g["job_name"] is None for g in view)
        assert all(g["workspace"] is None and g["worker"] is None for g in view)
        assert {g["util"] for g in view} == {70.0, None}  # use, not who
        raw = olga.http.get("/api/v1/nodes").text
        assert "trainer" not in raw and '"default"' not in raw
        # A member of the jobs' workspace (not an admin) sees their names.
        mine = Api(
            server.url,
            admin.post("/api/v1/tokens", {"name": "dee", "workspaces": ["default"]})["token"],
        )
        assert {g["workspace"] for g in gpus(mine)} == {"default"}
        olga.http.close()
        mine.http.close()


# SQLite only, like the other browser tests: PostgreSQL's teardown runs its own event loop,
# which the module's running Playwright forbids.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_nodes_page_shows_a_gpus_utilisation(
    server: RunningServer, admin: Api, browser: Any
) -> None:
    busy_and_idle(admin)
    until(admin, lambda v: any(g["util"] == 70.0 for g in v))
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(20_000)
    page = context.new_page()
    sign_in(page, server.url)
    page.click("[data-nav=nodes]")
    page.wait_for_selector("[data-testid=gpu-util] >> text=70 %")
    cells = page.locator("[data-testid=gpu-util]").all_inner_texts()
    assert sorted(cells) == ["70 %", "not measured"]
    assert "trainer" in page.inner_text("[data-testid=nodes]")
    context.close()


class TestRule:
    """`node_gpus.gpu_use` itself, where a worker holds several GPUs."""

    def test_a_workers_memory_is_shared_by_its_gpus_and_its_use_by_every_caller(self) -> None:
        node = NodeView(
            id="n1",
            name="n1",
            executor="local",
            address="",
            state="ready",
            cpu=8,
            memory=GIB,
            gpus=[GpuInfo(index=i, model="H100", memory=80 * GIB) for i in range(3)],
        )
        holder = Holder("n1", "w1", "team", "j1", "big", 0, (0, 2))
        util, memory = {("j1", 0): 50.0}, {("j1", 0): 10.0 * GIB}
        member = Principal(token_id="t", name="m", role="member", workspaces={"team": "w1"})
        stranger = Principal(token_id="u", name="s", role="member", workspaces={"b": "w2"})
        seen = gpu_use(node, [holder], util, memory, member)
        assert [(g.index, g.held, g.job_name) for g in seen] == [
            (0, True, "big"),
            (1, False, None),
            (2, True, "big"),
        ]
        assert seen[0].memory_used == 5 * GIB and seen[2].util == 50.0
        hidden = gpu_use(node, [holder], util, memory, stranger)
        assert [(g.held, g.job_id, g.util) for g in hidden] == [
            (True, None, 50.0),
            (False, None, None),
            (True, None, 50.0),
        ]
