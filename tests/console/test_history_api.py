"""The pool's history over HTTP (`GET /api/v1/history`), on SQLite and PostgreSQL: points
recorded by the control plane's own loop, borrowing and lending between two workspaces
with quotas, measured GPU utilisation, and what a member may see of it."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kaon.server.security.principal import Principal
from kaon.server.services.history import (
    INTERVAL_ENV,
    MAX_POINTS,
    PoolHistory,
    PoolPoint,
    Share,
    SpacePoint,
    gpu_utilisation,
    lend,
)
from tests.conftest import RunningServer, ThreadServer, test_settings
from tests.console.conftest import Api

ADMIN = Principal(token_id="t", name="root", role="admin", instance_admin=True)
SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]
# Reports 70 % GPU utilisation under the reserved name, with the job's own token, as a
# worker's supervisor does where NVML sees its GPUs (the test node's GPUs are declared).
BUSY_GPU = [
    sys.executable,
    "-c",
    "import os, time, httpx\n"
    "e = os.environ\n"
    "url = f\"{e['KAON_API_URL']}/api/v1/jobs/{e['KAON_JOB_ID']}/metrics\"\n"
    "auth = {'Authorization': f\"Bearer {e['KAON_JOB_TOKEN']}\"}\n"
    "while True:\n"
    "    point = {'time': time.time(), 'values': {'sys/gpu_util': 70.0}}\n"
    "    httpx.post(url, json={'points': [point]}, headers=auth)\n"
    "    time.sleep(0.3)\n",
]


@pytest.fixture
def server(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningServer]:
    """A control plane that samples its pool every 0.3 s, with 8 CPUs and 2 declared GPUs."""
    monkeypatch.setenv(INTERVAL_ENV, "0.3")
    settings = test_settings(tmp_path / "home", db_url, node_gpus="2")
    with ThreadServer(settings) as running:
        yield running


@pytest.fixture
def admin(server: RunningServer) -> Iterator[Api]:
    api = Api(server.url)
    yield api
    api.http.close()


def until(api: Api, check: Callable[[dict[str, Any]], bool], query: str = "") -> dict[str, Any]:
    """The first history answer that passes `check` (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        got: dict[str, Any] = api.get(f"/api/v1/history{query}")
        if check(got):
            return got
        assert time.monotonic() < deadline, f"never came: {got}"
        time.sleep(0.2)


def space(view: dict[str, Any], name: str) -> dict[str, Any]:
    found = [w for w in view["workspaces"] if w["workspace"] == name]
    assert found, f"{name} not in {[w['workspace'] for w in view['workspaces']]}"
    return found[0]


def two_teams(admin: Api) -> None:
    """`small` (1 CPU of quota, may borrow 4) runs 3 one-CPU jobs: it borrows 2 CPUs,
    which `big` (6 CPUs of quota, using none) lends."""
    for name in ("small", "big"):
        admin.post("/api/v1/workspaces", {"name": name})
    quotas = {"small": {"cpus": 1, "borrow_cpus": 4}, "big": {"cpus": 6}}
    for name, quota in quotas.items():
        assert admin.http.put(f"/api/v1/quotas/{name}", json=quota).status_code == 200
    for _ in range(3):
        admin.submit("small", command=SLEEP, resources={"cpu": 1})


class TestSeries:
    def test_the_control_plane_records_points_and_the_last_is_now(
        self, server: RunningServer, admin: Api
    ) -> None:
        view = until(admin, lambda v: len(v["time"]) >= 4)
        assert view["interval_s"] == 0.3 and view["retention_s"] == 24 * 3600
        assert view["time"] == sorted(view["time"]) and view["time"][0] >= view["since"]
        assert view["pool"]["cpus"][-1] == 8 and view["pool"]["gpus"][-1] == 2
        short = admin.get("/api/v1/history?window_s=0.5")
        assert 1 <= len(short["time"]) < len(until(admin, lambda v: len(v["time"]) >= 6)["time"])

    def test_a_workspace_over_its_quota_borrows_what_another_lends(
        self, server: RunningServer, admin: Api
    ) -> None:
        two_teams(admin)
        view = until(admin, lambda v: v["pool"]["cpus_allocated"][-1] == 3)
        small, big = space(view, "small"), space(view, "big")
        assert small["cpus"]["used"][-1] == 3 and small["cpus"]["quota"][-1] == 1
        assert small["cpus"]["borrowed"][-1] == 2 and small["cpus"]["lent"][-1] == 0
        assert big["cpus"]["used"][-1] == 0 and big["cpus"]["lent"][-1] == 2
        assert small["running"][-1] == 3 and view["pool"]["running"][-1] == 3
        # ...and the recorded points (not only the one taken now) remember it.
        recorded = until(admin, lambda v: 2 in space(v, "small")["cpus"]["borrowed"][:-1])
        assert 2 in space(recorded, "big")["cpus"]["lent"][:-1]

    def test_gpu_utilisation_is_what_the_workers_measured(
        self, server: RunningServer, admin: Api
    ) -> None:
        admin.submit(command=BUSY_GPU, resources={"cpu": 1, "gpus": 1})
        view = until(admin, lambda v: 70.0 in v["pool"]["gpu_util"][:-1])
        assert space(view, "default")["gpu_util"][-1] == 70.0
        assert view["pool"]["gpus_allocated"][-1] == 1
        assert view["pool"]["gpu_util"][0] is None  # before the job: not measured, not 0


class TestWhoSeesWhat:
    def test_a_member_sees_its_workspace_and_pool_totals_only(
        self, server: RunningServer, admin: Api
    ) -> None:
        two_teams(admin)
        admin.submit(command=SLEEP, resources={"cpu": 2})  # in default
        token = admin.post("/api/v1/tokens", {"name": "sam", "workspaces": ["small"]})["token"]
        sam = Api(server.url, token)
        view = until(sam, lambda v: v["pool"]["cpus_allocated"][-1] == 5)
        assert [w["workspace"] for w in view["workspaces"]] == ["small"]
        assert space(view, "small")["cpus"]["borrowed"][-1] == 2
        raw = sam.http.get("/api/v1/history").text
        assert '"big"' not in raw and '"default"' not in raw
        everyone = admin.get("/api/v1/history")
        assert {w["workspace"] for w in everyone["workspaces"]} == {"big", "default", "small"}
        sam.http.close()

    def test_no_token_is_refused(self, server: RunningServer) -> None:
        anonymous = Api(server.url, "")
        anonymous.http.headers.pop("Authorization")
        assert anonymous.http.get("/api/v1/history").status_code == 401
        anonymous.http.close()

    @pytest.mark.parametrize("window", ["0", "-5", "100000", "soon"])
    def test_a_bad_window_is_a_4xx_naming_it(
        self, server: RunningServer, admin: Api, window: str
    ) -> None:
        r = admin.http.get(f"/api/v1/history?window_s={window}")
        assert r.status_code == 422 and "window_s" in r.text


class TestLending:
    """The rule itself (`history.lend`), where the numbers are easy to read."""

    def test_the_borrowed_total_is_lent_in_proportion_to_unused_quota(self) -> None:
        shares = lend({"a": 5.0, "b": 1.0}, {"a": 2.0, "b": 3.0, "c": 4.0})
        assert shares["a"] == Share(used=5.0, quota=2.0, borrowed=3.0, lent=0.0)
        # b leaves 2 unused, c 4: the 3 borrowed come half of each's unused share.
        assert shares["b"] == Share(used=1.0, quota=3.0, borrowed=0.0, lent=1.0)
        assert shares["c"] == Share(used=0.0, quota=4.0, borrowed=0.0, lent=2.0)

    def test_lending_never_exceeds_the_unused_quota(self) -> None:
        shares = lend({"a": 10.0}, {"a": 1.0, "b": 2.0})
        assert shares["a"].borrowed == 9.0 and shares["b"].lent == 2.0

    def test_without_a_quota_nothing_is_borrowed_or_lent(self) -> None:
        shares = lend({"free": 8.0, "q": 1.0}, {"q": 4.0})
        assert shares["free"] == Share(used=8.0, quota=None)
        assert shares["q"].lent == 0.0  # nobody borrows: idle capacity used freely

    def test_gpu_utilisation_weighs_by_gpus_and_none_is_not_zero(self) -> None:
        assert gpu_utilisation([(100.0, 3), (0.0, 1)]) == 75.0
        assert gpu_utilisation([]) is None


class TestMemory:
    """What `PoolHistory` keeps and answers, without a server."""

    @staticmethod
    def point(at: float, spaces: dict[str, str]) -> PoolPoint:
        return PoolPoint(
            time=at,
            capacity=(8.0, 16.0, 2.0),
            allocated=(1.0, 1.0, 0.0),
            running=1,
            queued=0,
            gpu_util=None,
            spaces={
                w: SpacePoint(
                    name, Share(1.0, 2.0), Share(1.0, None), Share(0.0, None), 1, 0, None
                )
                for w, name in spaces.items()
            },
        )

    def test_a_day_is_bounded_and_a_long_span_is_thinned_to_max_points(self) -> None:
        kept = PoolHistory(interval_s=15.0)
        for i in range(6000):  # more than a day's 5760
            kept.record(self.point(i * 15.0, {"w-a": "a"}))
        assert len(kept.points) == 5760
        view = kept.view(ADMIN, 24 * 3600, self.point(6000 * 15.0, {"w-a": "a"}))
        assert len(view.time) <= MAX_POINTS
        assert view.time[-2:] == [5999 * 15.0, 6000 * 15.0]  # the newest recorded stays
        assert view.time == sorted(view.time)

    def test_only_the_callers_workspaces_are_named(self) -> None:
        kept = PoolHistory(interval_s=15.0)
        kept.record(self.point(0.0, {"w-a": "a", "w-b": "b"}))
        member = Principal(token_id="t", name="m", role="member", workspaces={"a": "w-a"})
        view = kept.view(member, 3600, self.point(15.0, {"w-b": "b"}))
        assert [w.workspace for w in view.workspaces] == ["a"]
        assert view.workspaces[0].cpus.used == [1.0, None]  # absent from the point now
        assert view.pool.cpus_allocated == [1.0, 1.0]  # the pool's totals, every workspace
        assert '"b"' not in view.model_dump_json()  # no workspace "b" anywhere
