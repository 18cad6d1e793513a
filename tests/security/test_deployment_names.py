"""Deployment names are per workspace, and no answer tells one workspace another's names:
the real control plane, the real gateway process and real replicas, over HTTP on loopback,
on SQLite and PostgreSQL.

- Two workspaces both create a deployment ``echo``: both succeed (a second ``echo`` in
  the same workspace is a conflict).
- Each member reaches its own through the canonical path, ``/{workspace}/echo/...``, and
  through the short form, ``/echo/...``.
- A deployment the caller may not call answers exactly like a missing one (404), in both
  forms.
- A token of both workspaces gets a 409 for the short form, naming the canonical form and
  only the workspaces that token may call.
- The gateway's ``/metrics`` needs a token (401) and shows a token the deployments it may
  call; the instance admin's sees them all.
- Demand for a deployment scaled to zero wakes that workspace's deployment, not its
  namesake's.
- A database at 0009 with a deployment migrates, and the deployment keeps its name, its
  token and its route.
- A token the gateway does not know waits for a fresh route table before its 401 whether
  or not the path names a deployment (the gateway in-process, counting the refreshes).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from kaon.core.gateway import Route, RouteTable
from kaon.core.tokens import hash_token
from kaon.gateway.app import Gateway as GatewayApp
from kaon.gateway.app import Incoming
from kaon.gateway.sources import StaticRouteSource
from kaon.gateway.upstream import UpstreamReply
from kaon.sdk.client import Client
from kaon.server.db.models import UTCDateTime
from kaon.server.db.session import Database, migrate_to
from tests.conftest import ADMIN_TOKEN, RunningServer, kill_workers
from tests.e2e.conftest import Gateway, ServerProcess
from tests.e2e.conftest import gateway as gateway  # a fixture: the gateway process
from tests.security.test_users_roles import WS, _api, _ok, _token

SERVICE = """
import os

import kaon
from kaon.serving.streaming import Request


class Echo(kaon.Service):
    @kaon.handler
    def who(self, request: Request) -> dict[str, str]:
        return {"team": os.environ["TEAM"]}
"""
RESOURCES = {"cpu": 0.25, "memory": "512Mi"}


@dataclass(frozen=True)
class Teams:
    """Workspaces red and blue (and green), each with a deployment ``echo``; a member
    token of red, one of blue, and one of both."""

    red: str
    blue: str
    both: str


def _service(tmp_path: Path) -> Path:
    folder = tmp_path / "svc"
    folder.mkdir(exist_ok=True)
    (folder / "echo.py").write_text(SERVICE)
    return folder


def _deploy(
    server: RunningServer, token: str, workspace: str, name: str, folder: Path, **spec: Any
) -> None:
    with server.client(token, workspace) as client:
        body = {"resources": RESOURCES, "env": {"TEAM": workspace}, **spec}
        client.deployments.create(name, service="echo:Echo", path=folder, spec=body)


def _members(server: RunningServer) -> Teams:
    with _api(server.url, ADMIN_TOKEN) as admin:
        for workspace in ("red", "blue", "green"):
            _ok(admin.post(WS, json={"name": workspace}), 201)
        for user, workspaces in (("rita", ["red"]), ("bert", ["blue"]), ("bo", ["red", "blue"])):
            _ok(admin.post("/api/v1/users", json={"name": user}), 201)
            for workspace in workspaces:
                _ok(admin.put(f"{WS}/{workspace}/members/{user}", json={"role": "member"}))
        both = {"name": "bo-t", "user": "bo", "role": "member", "workspaces": ["red", "blue"]}
        return Teams(
            red=_token(admin, "rita-t", "rita", "member", "red"),
            blue=_token(admin, "bert-t", "bert", "member", "blue"),
            both=str(_ok(admin.post("/api/v1/tokens", json=both), 201)["token"]),
        )


def _until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _call(gw: Gateway, path: str, token: str | None, timeout: float = 30) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{gw.url}{path}", json={}, headers=headers, timeout=timeout)


def _team(gw: Gateway, path: str, token: str) -> str:
    answer = _call(gw, path, token, timeout=60)  # a cold start is held up to 30 s
    assert answer.status_code == 200, (path, answer.text)
    return str(answer.json()["team"])


def _refusal(answer: httpx.Response, name: str) -> tuple[int, str, str, str]:
    """What a refusal shows, with the name it was asked for made generic."""
    body = answer.text.replace(name, "NAME")
    return answer.status_code, answer.headers["content-type"], body, str(len(answer.content))


def _series(gw: Gateway, token: str) -> set[str]:
    answer = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return {
        line.split('deployment="')[1].split('"')[0]
        for line in answer.text.splitlines()
        if 'deployment="' in line
    }


@pytest.mark.e2e
class TestNamesPerWorkspace:
    def test_two_workspaces_share_a_name_and_reveal_nothing(
        self, server: RunningServer, gateway: Gateway, tmp_path: Path
    ) -> None:
        teams = _members(server)
        folder = _service(tmp_path)
        _deploy(server, teams.red, "red", "echo", folder)
        _deploy(server, teams.blue, "blue", "echo", folder)  # the same name: no "exists"
        _deploy(server, ADMIN_TOKEN, "green", "echo", folder)
        _deploy(server, teams.blue, "blue", "solo", folder, autoscaling={"min_replicas": 0})
        with _api(server.url, teams.red) as rita:
            again = {"name": "echo", "service": "echo:Echo", "resources": RESOURCES}
            taken = rita.post(f"{WS}/red/deployments", json=again)
            assert taken.status_code == 409 and "workspace red" in taken.text
        for token, workspace in ((teams.red, "red"), (teams.blue, "blue")):
            with server.client(token, workspace) as client:
                client.deployments.wait_ready("echo", timeout=90)
        _until(lambda: _call(gateway, "/red/echo/who", teams.red).status_code == 200, 10, "red")
        _until(lambda: _call(gateway, "/blue/echo/who", teams.blue).status_code == 200, 10, "blue")

        # Each member reaches its own, canonically and in the short form.
        assert _team(gateway, "/red/echo/who", teams.red) == "red"
        assert _team(gateway, "/echo/who", teams.red) == "red"
        assert _team(gateway, "/blue/echo/who", teams.blue) == "blue"
        assert _team(gateway, "/echo/who", teams.blue) == "blue"

        # Another workspace's deployment answers as a missing one does, in both forms.
        theirs = _call(gateway, "/blue/echo/who", teams.red)
        missing = _call(gateway, "/blue/ohce/who", teams.red)
        assert theirs.status_code == 404
        assert _refusal(theirs, "echo") == _refusal(missing, "ohce")
        short = _call(gateway, "/solo/who", teams.red)
        nothing = _call(gateway, "/olos/who", teams.red)
        assert short.status_code == 404
        assert _refusal(short, "solo") == _refusal(nothing, "olos")

        # A token of both workspaces: the short form is ambiguous, the canonical one is not.
        both = _call(gateway, "/echo/who", teams.both)
        assert both.status_code == 409, both.text
        detail = both.json()["detail"]
        assert "/{workspace}/echo/" in detail and "(blue, red)" in detail
        assert "green" not in detail
        assert _team(gateway, "/red/echo/who", teams.both) == "red"
        assert _team(gateway, "/blue/echo/who", teams.both) == "blue"

        # /metrics: a token, and only the deployments it may call.
        assert httpx.get(f"{gateway.url}/metrics").status_code == 401
        bad = {"Authorization": "Bearer kaon_not-a-token"}
        assert httpx.get(f"{gateway.url}/metrics", headers=bad).status_code == 401
        assert _series(gateway, teams.red) == {"red/echo"}
        assert _series(gateway, teams.blue) == {"blue/echo", "blue/solo"}
        assert {"red/echo", "blue/echo", "green/echo"} <= _series(gateway, ADMIN_TOKEN)

    def test_demand_wakes_the_callers_deployment_not_its_namesake(
        self, server: RunningServer, gateway: Gateway, tmp_path: Path
    ) -> None:
        teams = _members(server)
        folder = _service(tmp_path)
        scaling = {
            "min_replicas": 0,
            "max_replicas": 1,
            "scale_to_zero_after_s": 1.0,
            "scale_down_delay_s": 0.5,
            "scale_up_delay_s": 0.5,
        }
        _deploy(server, teams.red, "red", "echo", folder, autoscaling=scaling)
        _deploy(server, teams.blue, "blue", "echo", folder, autoscaling=scaling)
        red, blue = server.client(teams.red, "red"), server.client(teams.blue, "blue")
        for client in (red, blue):
            client.deployments.wait_ready("echo", timeout=90)
        for client in (red, blue):
            _until(lambda c=client: _asleep(c), 60, "scale to zero")

        assert _team(gateway, "/blue/echo/who", teams.blue) == "blue"  # held, then served
        assert blue.deployments.get("echo").ready_replicas == 1
        woken = red.deployments.get("echo")
        assert (woken.desired_replicas, woken.ready_replicas) == (0, 0)
        assert _team(gateway, "/echo/who", teams.red) == "red"  # the short form wakes it too
        red.close()
        blue.close()


def _asleep(client: Any) -> bool:
    view = client.deployments.get("echo")
    live = [r for r in view.replicas if r.state != "stopped"]
    return bool(view.status == "scaled-to-zero" and not live)


# --- the migration ------------------------------------------------------------------------

DEPLOYMENT_SECRET = "kaon_dep-before-0010-00000000000000000000000"


async def _database_at_0009(url: str) -> None:
    """A database migrated to 0009 with a deployment ``echo`` in ``default`` and a token
    of it, as a server from before names were per workspace left it."""
    utc = UTCDateTime(timezone=True)
    now = datetime.now(UTC)
    spec = {"name": "echo", "service": "echo:Echo", "autoscaling": {"min_replicas": 0}}
    workspaces = sa.table(
        "workspaces", sa.column("id"), sa.column("name"), sa.column("created_at", utc)
    )
    deployments = sa.table(
        "deployments",
        *(sa.column(c) for c in ("id", "workspace_id", "name", "status", "message")),
        *(sa.column(c) for c in ("generation", "desired_replicas", "deleting")),
        sa.column("spec", sa.JSON),
        sa.column("created_at", utc),
        sa.column("updated_at", utc),
    )
    tokens = sa.table(
        "deployment_tokens",
        *(sa.column(c) for c in ("id", "deployment_id", "name", "prefix", "hash")),
        sa.column("created_at", utc),
    )
    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(functools.partial(migrate_to, revision="0009"))
            await conn.execute(
                workspaces.insert().values(id="ws-d", name="default", created_at=now)
            )
            await conn.execute(
                deployments.insert().values(
                    id="d-echo", workspace_id="ws-d", name="echo", status="scaled-to-zero",
                    message="", generation=1, desired_replicas=0, deleting=False, spec=spec,
                    created_at=now, updated_at=now,
                )
            )  # fmt: skip
            await conn.execute(
                tokens.insert().values(
                    id="dtok-1", deployment_id="d-echo", name="ci", created_at=now,
                    prefix=DEPLOYMENT_SECRET[:9], hash=hash_token(DEPLOYMENT_SECRET),
                )
            )  # fmt: skip
    finally:
        await db.dispose()


@pytest.fixture
def upgraded(tmp_path: Path, db_url: str) -> Iterator[str]:
    """A server started on that database: it migrates it to the newest revision."""
    asyncio.run(_database_at_0009(db_url))
    server = ServerProcess(tmp_path / "home", db_url)
    server.start()
    try:
        yield server.url
    finally:
        server.kill()
        kill_workers(server.home)


class TestMigration:
    def test_a_deployment_from_0009_keeps_its_name_token_and_route(
        self, upgraded: str, tmp_path: Path
    ) -> None:
        with _api(upgraded, ADMIN_TOKEN) as admin:
            view = _ok(admin.get(f"{WS}/default/deployments/echo"))
            assert (view["name"], view["workspace"]) == ("echo", "default")
            assert [
                t["name"] for t in _ok(admin.get(f"{WS}/default/deployments/echo/tokens"))
            ] == ["ci"]
            (route,) = _ok(admin.get("/api/v1/gateway/routes"))["routes"]
            assert (route["workspace"], route["name"]) == ("default", "echo")
            assert hash_token(DEPLOYMENT_SECRET) in route["token_hashes"]
            # the name is the workspace's own now: another workspace may use it
            _ok(admin.post(WS, json={"name": "other"}), 201)
        spec = {"resources": RESOURCES, "env": {"TEAM": "other"}}
        with Client(upgraded, token=ADMIN_TOKEN, workspace="other") as client:
            made = client.deployments.create(
                "echo", service="echo:Echo", path=_service(tmp_path), spec=spec
            )
        assert (made.name, made.workspace) == ("echo", "other")
        with _api(upgraded, ADMIN_TOKEN) as admin:
            routes = _ok(admin.get("/api/v1/gateway/routes"))["routes"]
            assert sorted((r["workspace"], r["name"]) for r in routes) == [
                ("default", "echo"),
                ("other", "echo"),
            ]


# --- what an unknown token's wait tells -------------------------------------------------


class _CountingSource(StaticRouteSource):
    """A fixed table whose refreshes are counted (and return at once)."""

    refreshes = 0

    async def refresh(self, timeout_s: float) -> None:
        self.refreshes += 1


class TestUnknownTokens:
    async def test_every_path_waits_for_a_fresh_table_before_its_401(self) -> None:
        red = Route(name="echo", workspace="red", token_hashes=[hash_token("kaon_red")])
        source = _CountingSource(RouteTable(version=1, routes=[red]))
        gateway = GatewayApp(source)
        gateway.apply(source.table)
        for path in ("/red/echo/who", "/echo/who", "/blue/echo/who", "/ohce/who"):
            headers = [(b"authorization", b"Bearer kaon_unknown")]
            req = Incoming(method="POST", path=path, target=path.encode(), headers=headers)
            admitted = gateway.admit(req)
            assert not isinstance(admitted, UpstreamReply), path  # no answer before the wait
            before = source.refreshes
            answer = await gateway.forward(admitted, req, b"{}")
            assert (answer.status, source.refreshes) == (401, before + 1), path
            assert answer.body == b'{"detail": "invalid token"}'
