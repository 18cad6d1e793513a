"""What the console needs from the API, over HTTP: its files, and the jobs list paged on
the server (newest first, a cursor per page, a total per filter) on SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, RunningServer
from tests.console.conftest import Api

JOBS = "/api/v1/workspaces/default/jobs"


def pages(api: Api, query: str) -> list[tuple[list[str], httpx.Headers]]:
    """Every page of `query`, following X-Next-Cursor to the end."""
    out = []
    cursor: str | None = None
    while True:
        params = f"{query}&cursor={cursor}" if cursor else query
        r = api.http.get(f"{JOBS}?{params}")
        assert r.status_code == 200, r.text
        out.append(([j["id"] for j in r.json()], r.headers))
        cursor = r.headers.get("X-Next-Cursor")
        if cursor is None:
            return out


class TestJobPaging:
    def test_pages_cover_every_job_once_newest_first(self, admin: Api) -> None:
        api = admin
        made = [api.submit(command=["true"]) for _ in range(23)]
        got = pages(api, "limit=10")
        assert [len(ids) for ids, _ in got] == [10, 10, 3]
        assert [j for ids, _ in got for j in ids] == made[::-1]
        assert {h["X-Total-Count"] for _, h in got} == {"23"}

    def test_a_state_filter_pages_and_counts_only_its_jobs(self, admin: Api) -> None:
        api = admin
        made = [api.submit(command=["true"]) for _ in range(7)]
        for job in made[:5]:
            api.post(f"{JOBS}/{job}/cancel")
        cancelled = pages(api, "status=cancelled&limit=2")
        assert [j for ids, _ in cancelled for j in ids] == made[:5][::-1]
        assert cancelled[0][1]["X-Total-Count"] == "5"
        queued = pages(api, "status=queued&limit=50")
        assert queued[0][0] == made[5:][::-1]
        assert queued[0][1]["X-Total-Count"] == "2"

    def test_a_cursor_it_did_not_give_out_is_refused(self, admin: Api) -> None:
        r = admin.http.get(f"{JOBS}?cursor=not-a-cursor")
        assert r.status_code == 422
        assert "cursor" in r.text

    def test_another_workspace_counts_none_of_them(
        self, quiet_server: RunningServer, admin: Api
    ) -> None:
        admin.submit(command=["true"])
        admin.post("/api/v1/workspaces", {"name": "team-b"})
        token = admin.post("/api/v1/tokens", {"name": "bob", "workspaces": ["team-b"]})["token"]
        bob = Api(quiet_server.url, token)
        r = bob.http.get("/api/v1/workspaces/team-b/jobs")
        assert r.json() == [] and r.headers["X-Total-Count"] == "0"
        assert bob.http.get(JOBS).status_code == 404  # default is not bob's
        bob.http.close()


@pytest.fixture
def http(quiet_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=quiet_server.url) as client:
        yield client


@pytest.fixture
def admin(quiet_server: RunningServer) -> Iterator[Api]:
    api = Api(quiet_server.url)
    yield api
    api.http.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
class TestConsoleFiles:
    def test_the_root_sends_a_browser_to_the_console(self, http: httpx.Client) -> None:
        r = http.get("/")
        assert r.status_code == 307 and r.headers["location"] == "/console/"

    def test_the_page_and_its_libraries_are_served_without_a_token(
        self, http: httpx.Client
    ) -> None:
        page = http.get("/console/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert 'type="importmap"' in page.text
        policy = page.headers["content-security-policy"]  # no script of anyone else's runs
        assert "script-src 'self' 'sha256-" in policy and "connect-src 'self'" in policy
        for path in ("app.js", "vendor/preact.js", "vendor/uplot.js", "vendor/htm.js"):
            r = http.get(f"/console/{path}")
            assert r.status_code == 200, path
            assert "javascript" in r.headers["content-type"], path
        assert "MIT" in http.get("/console/vendor/LICENSE-preact").text

    @pytest.mark.parametrize("path", ["..%2F__init__.py", "%2E%2E/%2E%2E/_version.py", "nope.js"])
    def test_nothing_outside_its_files_is_served(self, http: httpx.Client, path: str) -> None:
        assert http.get(f"/console/{path}").status_code == 404

    def test_the_data_still_needs_a_token(self, http: httpx.Client) -> None:
        assert http.get(JOBS).status_code == 401
        assert http.get(JOBS, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).is_success
