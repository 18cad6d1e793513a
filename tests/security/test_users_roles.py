"""Users and their roles in workspaces, over HTTP on the real app, SQLite and PostgreSQL.

- A viewer reads a workspace but every write to it is 403 naming the member role (a
  table of the named writes, and a sweep over every write route of the OpenAPI document).
- A member writes in its workspace and gets 404 in another; it cannot manage members.
- A workspace admin manages members and reads its workspace's audit log; it is not the
  instance's admin (users, quotas).
- A token's role is the lesser of its own and its user's membership, looked up on every
  request: lowering or removing a membership counts from the next request on.
- Deleting a user revokes its tokens and the tokens they minted.
- Minting is capped by the minting token's role and by the target user's role.
- Quota listings show other workspaces to the instance admin only.
- The migration from 0008 gives existing tokens users, and they keep working.
- The CLI: `kaon user ...`, `kaon workspace add-member|remove-member|members`,
  `kaon token create --user --role`.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from kaon.cli.main import app as cli
from kaon.core.tokens import hash_token
from kaon.server.db.models import UTCDateTime, Workspace
from kaon.server.db.session import Database, migrate_to
from kaon.server.security.principal import authenticate
from kaon.server.services.gateway import _member_token_hashes
from tests.conftest import ADMIN_TOKEN
from tests.conftest import kaon as kaon  # a fixture: the CLI against a SQLite server
from tests.e2e.conftest import ServerProcess
from tests.security.conftest import Quiet
from tests.security.conftest import quiet as quiet  # a fixture: the control plane, quiet

JOB = {"command": ["true"], "resources": {"cpu": 1}}
WS = "/api/v1/workspaces"


def _api(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


@dataclass(frozen=True)
class Team:
    """Users of the workspace `default` with one token each (minted by the admin), and
    `olga`, a member of `other` only."""

    url: str
    admin: str
    viewer: str  # vera, viewer in default
    member: str  # mel, member in default
    ws_admin: str  # ada, admin of default
    other: str  # olga, member of other

    def http(self, token: str) -> httpx.Client:
        return _api(self.url, token)


def _token(http: httpx.Client, name: str, user: str, role: str, ws: str = "default") -> str:
    body = {"name": name, "user": user, "role": role, "workspaces": [ws]}
    return str(_ok(http.post("/api/v1/tokens", json=body), 201)["token"])


@pytest.fixture
def team(quiet: Quiet) -> Team:
    with _api(quiet.url, ADMIN_TOKEN) as http:
        _ok(http.post(WS, json={"name": "other"}), 201)
        for user, ws, role in (
            ("vera", "default", "viewer"),
            ("mel", "default", "member"),
            ("ada", "default", "admin"),
            ("olga", "other", "member"),
        ):
            _ok(http.post("/api/v1/users", json={"name": user}), 201)
            _ok(http.put(f"{WS}/{ws}/members/{user}", json={"role": role}))
        return Team(
            quiet.url,
            ADMIN_TOKEN,
            viewer=_token(http, "vera-t", "vera", "viewer"),
            member=_token(http, "mel-t", "mel", "member"),
            ws_admin=_token(http, "ada-t", "ada", "admin"),
            other=_token(http, "olga-t", "olga", "member", "other"),
        )


# the writes a viewer must not make: (method, path under the workspace, body)
WRITES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/jobs", JOB),
    ("POST", "/jobs/j-000000000000/cancel", {}),
    ("POST", "/deployments", {"name": "web", "service": "app:Model"}),
    ("PUT", "/deployments/web", {"name": "web", "service": "app:Model"}),
    ("DELETE", "/deployments/web", {}),
    ("POST", "/deployments/web/tokens", {"name": "t"}),
    ("POST", "/deployments/web/try", {"handler": "predict"}),
    ("PUT", "/secrets/api-key", {"value": "s3cret"}),
    ("DELETE", "/secrets/api-key", {}),
    ("POST", "/artifacts/data", {"files": []}),
    ("POST", "/models/m/versions", {"artifact": "data:1"}),
    ("PUT", "/models/m/aliases/prod", {"version": 1}),
]


def _call(http: httpx.Client, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
    if method in ("POST", "PUT"):
        return http.request(method, path, json=body)
    return http.request(method, path)


class TestViewer:
    def test_reads_but_every_named_write_is_403_naming_the_member_role(self, team: Team) -> None:
        with team.http(team.member) as mel:
            job = _ok(mel.post(f"{WS}/default/jobs", json=JOB), 201)
        with team.http(team.viewer) as vera:
            listed = _ok(vera.get(f"{WS}/default/jobs"))
            assert job["id"] in [j["id"] for j in listed]
            assert _ok(vera.get(f"{WS}/default/jobs/{job['id']}"))["id"] == job["id"]
            _ok(vera.get(f"{WS}/default/secrets"))
            _ok(vera.get(f"{WS}/default/deployments"))
            _ok(vera.get(f"{WS}/default/members"))
            for method, path, body in WRITES:
                answer = _call(vera, method, f"{WS}/default{path}", body)
                assert answer.status_code == 403, (method, path, answer.text)
                assert "this needs the member role in workspace default" in answer.text
            cancel = vera.post(f"{WS}/default/jobs/{job['id']}/cancel")
            assert cancel.status_code == 403
        with team.http(team.admin) as admin:
            assert _ok(admin.get(f"{WS}/default/jobs/{job['id']}"))["status"] != "cancelled"

    def test_every_write_route_of_a_workspace_is_403(self, team: Team) -> None:
        with team.http(team.admin) as admin:
            paths = _ok(admin.get("/openapi.json"))["paths"]
        writes = [
            (method.upper(), path)
            for path, operations in paths.items()
            if path.startswith(WS + "/{workspace}")
            for method in operations
            if method.upper() in ("POST", "PUT", "PATCH", "DELETE")
        ]
        assert len(writes) >= len(WRITES)
        with team.http(team.viewer) as vera:
            for method, template in writes:
                path = template.replace("{workspace}", "default")
                while "{" in path:
                    start, end = path.index("{"), path.index("}")
                    path = path[:start] + "x" + path[end + 1 :]
                answer = _call(vera, method, path, {})
                assert answer.status_code == 403, (method, template, answer.text)

    def test_a_viewer_cannot_call_deployments_through_the_gateway(
        self, team: Team, quiet: Quiet
    ) -> None:
        """The gateway admits the tokens the route table lists per workspace (read here
        from the database, as `route_table` does): members' and admins', not viewers'."""
        allowed = asyncio.run(_callers(quiet.settings.database_url))
        assert hash_token(team.member) in allowed["default"]
        assert hash_token(team.ws_admin) in allowed["default"]
        assert hash_token(team.viewer) not in allowed["default"]
        with team.http(team.admin) as admin:  # lowered to viewer: dropped from the table
            _ok(admin.put(f"{WS}/default/members/mel", json={"role": "viewer"}))
        allowed = asyncio.run(_callers(quiet.settings.database_url))
        assert hash_token(team.member) not in allowed["default"]


async def _callers(url: str) -> dict[str, set[str]]:
    db = Database(url)
    try:
        async with db.session() as session:
            by_id = await _member_token_hashes(session)
            rows = await session.execute(sa.select(Workspace.id, Workspace.name))
            names = dict(rows.tuples().all())
    finally:
        await db.dispose()
    return {names[w]: set(hashes) for w, hashes in by_id.items()}


class TestMember:
    def test_writes_in_its_workspace_and_gets_404_in_another(self, team: Team) -> None:
        with team.http(team.member) as mel:
            job = _ok(mel.post(f"{WS}/default/jobs", json=JOB), 201)
            assert _ok(mel.post(f"{WS}/default/jobs/{job['id']}/cancel"))["id"] == job["id"]
            _ok(mel.put(f"{WS}/default/secrets/api-key", json={"value": "s3cret"}))
            for method, path, body in WRITES:
                answer = _call(mel, method, f"{WS}/default{path}", body)
                assert answer.status_code != 403, (method, path, answer.text)
                elsewhere = _call(mel, method, f"{WS}/other{path}", body)
                assert elsewhere.status_code == 404, (method, path, elsewhere.text)
            assert mel.get(f"{WS}/other/jobs").status_code == 404

    def test_cannot_manage_members_nor_read_the_audit_log(self, team: Team) -> None:
        with team.http(team.member) as mel:
            answer = mel.put(f"{WS}/default/members/vera", json={"role": "member"})
            assert answer.status_code == 403
            assert "this needs the admin role in workspace default" in answer.text
            assert mel.delete(f"{WS}/default/members/vera").status_code == 403
            assert mel.get("/api/v1/audit", params={"workspace": "default"}).status_code == 403
            assert _ok(mel.get("/api/v1/audit")) == []  # no workspace it administers


class TestWorkspaceAdmin:
    def test_manages_members_and_reads_its_audit_log(self, team: Team) -> None:
        with team.http(team.ws_admin) as ada:
            added = _ok(ada.put(f"{WS}/default/members/olga", json={"role": "viewer"}))
            assert added == {"user": "olga", "workspace": "default", "role": "viewer"}
            members = {m["user"]: m["role"] for m in _ok(ada.get(f"{WS}/default/members"))}
            assert members == {
                "ada": "admin",
                "mel": "member",
                "olga": "viewer",
                "vera": "viewer",
                "quiet-viewer": "viewer",  # the fixture's viewer token's user
            }
            bad = ada.put(f"{WS}/default/members/olga", json={"role": "owner"})
            assert bad.status_code == 422 and "role" in bad.text
            assert (
                ada.put(f"{WS}/default/members/nobody", json={"role": "viewer"}).status_code == 404
            )
            _ok(ada.delete(f"{WS}/default/members/olga"))
            assert "olga" not in {m["user"] for m in _ok(ada.get(f"{WS}/default/members"))}
            records = _ok(ada.get("/api/v1/audit", params={"workspace": "default"}))
            assert any(r["action"].endswith("set_member") for r in records), records
            assert ada.put(f"{WS}/other/members/mel", json={"role": "viewer"}).status_code == 404

    def test_is_not_the_instance_admin(self, team: Team) -> None:
        with team.http(team.ws_admin) as ada:
            assert ada.post("/api/v1/users", json={"name": "eve"}).status_code == 403
            assert ada.delete("/api/v1/users/mel").status_code == 403
            assert ada.post(WS, json={"name": "mine"}).status_code == 403
            assert ada.put("/api/v1/quotas/default", json={"gpus": 1}).status_code == 403
            assert ada.get("/api/v1/audit/verify").status_code == 403

    def test_mints_for_its_members_within_their_role(self, team: Team) -> None:
        with team.http(team.ws_admin) as ada:
            body = {"name": "mel-2", "user": "mel", "role": "member", "workspaces": ["default"]}
            made = _ok(ada.post("/api/v1/tokens", json=body), 201)
            assert made["user"] == "mel"
            over = ada.post("/api/v1/tokens", json={**body, "name": "mel-3", "role": "admin"})
            assert over.status_code == 403 and "holds only the member role" in over.text
            top = ada.post("/api/v1/tokens", json={**body, "name": "x", "user": "admin"})
            assert top.status_code == 403
            listed = {t["name"] for t in _ok(ada.get("/api/v1/tokens"))}
            assert {"ada-t", "mel-t", "mel-2", "vera-t"} <= listed
            assert "olga-t" not in listed
            _ok(ada.delete("/api/v1/tokens/mel-2"))
        with team.http(made["token"]) as revoked:
            assert revoked.get("/api/v1/whoami").status_code == 401


class TestGatewayToken:
    """The gateway's token reads the route table and posts load reports, nothing more;
    the route table (every workspace's deployments, callers' token hashes and replicas'
    credentials) is the gateway's and the instance admin's, never a workspace admin's."""

    def test_reaches_its_two_routes_and_nothing_else(self, team: Team) -> None:
        with team.http(team.admin) as http:
            gateway = str(
                _ok(http.post("/api/v1/tokens", json={"name": "gw", "role": "gateway"}), 201)[
                    "token"
                ]
            )
        report = {"gateway_id": "gw-1", "time": 1.0, "window_s": 1.0, "deployments": []}
        with team.http(gateway) as gw:
            _ok(gw.get("/api/v1/gateway/routes"))
            assert gw.post("/api/v1/gateway/report", json=report).status_code == 204
            assert _ok(gw.get("/api/v1/whoami"))["user"] is None
            for method, path in (
                ("GET", f"{WS}/default/jobs"),
                ("GET", f"{WS}/default/deployments"),
                ("GET", f"{WS}/default/secrets"),
                ("POST", f"{WS}/default/jobs"),
                ("GET", WS),
                ("GET", "/api/v1/nodes"),
                ("GET", "/api/v1/pools"),
                ("GET", "/api/v1/quotas"),
                ("GET", "/api/v1/tokens"),
            ):
                answer = _call(gw, method, path, JOB)
                assert answer.status_code == 403, (method, path, answer.text)
                assert "route table" in answer.json()["detail"]

    def test_the_route_table_is_not_a_workspace_admins(self, team: Team) -> None:
        for token in (team.ws_admin, team.member, team.viewer):
            with team.http(token) as http:
                assert http.get("/api/v1/gateway/routes").status_code == 403
        with team.http(team.admin) as http:
            _ok(http.get("/api/v1/gateway/routes"))


class TestRolesTrackMemberships:
    def test_a_lowered_or_removed_membership_counts_at_the_next_request(self, team: Team) -> None:
        with team.http(team.member) as mel, team.http(team.admin) as admin:
            _ok(mel.post(f"{WS}/default/jobs", json=JOB), 201)
            _ok(admin.put(f"{WS}/default/members/mel", json={"role": "viewer"}))
            assert mel.post(f"{WS}/default/jobs", json=JOB).status_code == 403
            assert _ok(mel.get("/api/v1/whoami"))["roles"] == {"default": "viewer"}
            _ok(admin.delete(f"{WS}/default/members/mel"))
            assert mel.get(f"{WS}/default/jobs").status_code == 404
            assert _ok(mel.get("/api/v1/whoami"))["workspaces"] == []
            _ok(admin.put(f"{WS}/default/members/mel", json={"role": "member"}))
            _ok(mel.post(f"{WS}/default/jobs", json=JOB), 201)

    def test_whoami_names_the_user_and_its_roles(self, team: Team) -> None:
        with team.http(team.ws_admin) as ada:
            me = _ok(ada.get("/api/v1/whoami"))
        assert (me["user"], me["role"], me["roles"]) == ("ada", "admin", {"default": "admin"})
        with team.http(team.admin) as admin:
            assert _ok(admin.get("/api/v1/whoami"))["user"] == "admin"


class TestOneQuery:
    def test_authentication_is_one_select_whatever_the_roles(
        self, team: Team, quiet: Quiet
    ) -> None:
        """The token, its user and its role in each workspace come in one statement."""
        statements = asyncio.run(_authentication_statements(quiet.settings.database_url, team))
        assert len(statements) == 1, statements
        assert "memberships" in statements[0] and "users" in statements[0]


async def _authentication_statements(url: str, team: Team) -> list[str]:
    db = Database(url)
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    try:
        async with db.unit_of_work() as session:
            await authenticate(session, team.member)  # records when it was last used
            sa.event.listen(db.engine.sync_engine, "before_cursor_execute", note)
            caller = await authenticate(session, team.member)
    finally:
        await db.dispose()
    assert caller.roles == {"default": "member"}
    return seen


class TestDeletingAUser:
    def test_revokes_its_tokens_and_their_children(self, team: Team) -> None:
        with team.http(team.member) as mel:
            child = _ok(mel.post("/api/v1/tokens", json={"name": "mel-ci"}), 201)
            assert child["user"] == "mel"
        with team.http(child["token"]) as ci:
            grandchild = _ok(ci.post("/api/v1/tokens", json={"name": "mel-ci-2"}), 201)
        with team.http(team.admin) as admin:
            assert _ok(admin.delete("/api/v1/users/mel"))["name"] == "mel"
            assert admin.delete("/api/v1/users/mel").status_code == 404
            assert "mel" not in {u["name"] for u in _ok(admin.get("/api/v1/users"))}
            assert admin.delete("/api/v1/users/admin").status_code == 409  # its own user
        for secret in (team.member, child["token"], grandchild["token"]):
            with team.http(secret) as gone:
                assert gone.get("/api/v1/whoami").status_code == 401
        with team.http(team.viewer) as vera:
            _ok(vera.get("/api/v1/whoami"))  # nobody else's token


class TestDisablingAUser:
    def test_its_tokens_are_refused_until_it_is_enabled(self, team: Team, quiet: Quiet) -> None:
        with team.http(team.member) as mel:
            child = _ok(mel.post("/api/v1/tokens", json={"name": "mel-ci"}), 201)["token"]
        with team.http(team.admin) as admin:
            view = _ok(admin.patch("/api/v1/users/mel", json={"disabled": True}))
            assert view["disabled"] is True and view["name"] == "mel"
            users = {u["name"]: u["disabled"] for u in _ok(admin.get("/api/v1/users"))}
            assert users["mel"] is True and users["vera"] is False
        for secret in (team.member, child):
            with team.http(secret) as mel:
                refused = mel.get(f"{WS}/default/jobs")
                assert refused.status_code == 401
                assert "disabled" in refused.json()["detail"]
        allowed = asyncio.run(_callers(quiet.settings.database_url))
        assert hash_token(team.member) not in allowed["default"]  # the gateway drops it
        assert hash_token(team.ws_admin) in allowed["default"]

        with team.http(team.admin) as admin:
            assert (
                _ok(admin.patch("/api/v1/users/mel", json={"disabled": False}))["disabled"]
                is False
            )
        with team.http(team.member) as mel:
            _ok(mel.get(f"{WS}/default/jobs"))  # nothing was revoked
        assert (
            hash_token(team.member)
            in asyncio.run(_callers(quiet.settings.database_url))["default"]
        )

    def test_only_the_instance_admin_disables_and_never_its_own_user(self, team: Team) -> None:
        with team.http(team.ws_admin) as ada:
            assert ada.patch("/api/v1/users/mel", json={"disabled": True}).status_code == 403
        with team.http(team.admin) as admin:
            assert admin.patch("/api/v1/users/admin", json={"disabled": True}).status_code == 409
            assert admin.patch("/api/v1/users/nobody", json={"disabled": True}).status_code == 404
            assert admin.patch("/api/v1/users/mel", json={"disabled": "x"}).status_code == 422
            assert admin.patch("/api/v1/users/mel", json={"role": "x"}).status_code == 422


class TestMintingCaps:
    def test_a_token_never_mints_above_its_role_or_its_users(self, team: Team) -> None:
        def mint(token: str, **body: Any) -> httpx.Response:
            with team.http(token) as http:
                return http.post("/api/v1/tokens", json={"name": "t", **body})

        assert mint(team.viewer, role="member").status_code == 403
        assert _ok(mint(team.viewer, role="viewer"), 201)["user"] == "vera"
        assert mint(team.member, role="admin").status_code == 403
        assert mint(team.member, role="gateway").status_code == 403
        assert mint(team.ws_admin, role="gateway").status_code == 403
        lesser = _ok(mint(team.member, role="viewer"), 201)
        with team.http(lesser["token"]) as low:
            assert _ok(low.get("/api/v1/whoami"))["roles"] == {"default": "viewer"}
            assert low.post(f"{WS}/default/jobs", json=JOB).status_code == 403
        above = mint(team.admin, user="vera", role="member", workspaces=["default"])
        assert above.status_code == 403 and "the user holds only the viewer role" in above.text
        outside = mint(team.admin, user="olga", role="member", workspaces=["default"])
        assert outside.status_code == 422 and "user" in outside.text
        assert mint(team.member, user="vera", role="viewer").status_code == 403
        assert mint(team.admin, user="ghost", role="viewer").status_code == 404
        admin_of_ws = _ok(mint(team.admin, user="ada", role="admin"), 201)
        with team.http(admin_of_ws["token"]) as ada:
            assert ada.post("/api/v1/users", json={"name": "eve"}).status_code == 403


class TestQuotaListings:
    def test_other_workspaces_are_shown_to_the_instance_admin_only(self, team: Team) -> None:
        with team.http(team.admin) as admin:
            _ok(admin.put("/api/v1/quotas/default", json={"gpus": 4}))
            _ok(admin.put("/api/v1/quotas/other", json={"gpus": 2}))
            every = {q["workspace"] for q in _ok(admin.get("/api/v1/quotas"))}
        assert every == {"default", "other"}
        for token in (team.viewer, team.member, team.ws_admin):
            with team.http(token) as http:
                assert {q["workspace"] for q in _ok(http.get("/api/v1/quotas"))} == {"default"}
        with team.http(team.other) as olga:
            assert {q["workspace"] for q in _ok(olga.get("/api/v1/quotas"))} == {"other"}


# --- the migration of tokens made before users ------------------------------------------

MEMBER_SECRET = "kaon_member-before-users-0000000000000000000"
CHILD_SECRET = "kaon_child-before-users-00000000000000000000"
GATEWAY_SECRET = "kaon_gateway-before-users-000000000000000000"
REVOKED_SECRET = "kaon_revoked-before-users-000000000000000000"


async def _database_at_0008(url: str) -> None:
    """A database migrated to 0008 holding tokens of every role, as a server before users
    left it."""
    utc = UTCDateTime(timezone=True)
    tokens = sa.table(
        "tokens",
        *(sa.column(c, sa.String) for c in ("id", "name", "prefix", "hash", "role", "parent_id")),
        sa.column("created_at", utc),
        sa.column("revoked_at", utc),
    )
    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(functools.partial(migrate_to, revision="0008"))
            now = datetime.now(UTC)
            workspaces = sa.table(
                "workspaces", sa.column("id"), sa.column("name"), sa.column("created_at", utc)
            )
            for wid, name in (("ws-default", "default"), ("ws-team", "team")):
                await conn.execute(workspaces.insert().values(id=wid, name=name, created_at=now))
            rows = [
                ("tok-admin", "admin", ADMIN_TOKEN, "admin", None, None),
                ("tok-alice", "alice", MEMBER_SECRET, "member", "tok-admin", None),
                ("tok-alice-ci", "alice-ci", CHILD_SECRET, "member", "tok-alice", None),
                ("tok-gw", "gateway-1", GATEWAY_SECRET, "gateway", "tok-admin", None),
                ("tok-old", "old", REVOKED_SECRET, "member", "tok-admin", now),
            ]
            for i, (tid, name, secret, role, parent, revoked) in enumerate(rows):
                await conn.execute(
                    tokens.insert().values(
                        id=tid,
                        name=name,
                        prefix=secret[:9],
                        hash=hash_token(secret),
                        role=role,
                        parent_id=parent,
                        created_at=now.replace(microsecond=i),
                        revoked_at=revoked,
                    )
                )
            links = sa.table("token_workspaces", sa.column("token_id"), sa.column("workspace_id"))
            for tid, wid in (
                ("tok-admin", "ws-default"),
                ("tok-admin", "ws-team"),
                ("tok-alice", "ws-default"),
                ("tok-alice", "ws-team"),
                ("tok-alice-ci", "ws-team"),
                ("tok-gw", "ws-default"),
                ("tok-old", "ws-default"),
            ):
                await conn.execute(links.insert().values(token_id=tid, workspace_id=wid))
    finally:
        await db.dispose()


@pytest.fixture
def upgraded(tmp_path: Path, db_url: str) -> Iterator[str]:
    """A server started on that database: it migrates it to the newest revision."""
    asyncio.run(_database_at_0008(db_url))
    server = ServerProcess(tmp_path / "home", db_url)
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


class TestMigrationOfExistingTokens:
    def test_tokens_from_before_users_keep_working(self, upgraded: str) -> None:
        with _api(upgraded, ADMIN_TOKEN) as admin:
            me = _ok(admin.get("/api/v1/whoami"))
            assert (me["user"], me["workspaces"]) == ("admin", ["default", "team"])
            users = {u["name"]: u for u in _ok(admin.get("/api/v1/users"))}
            assert set(users) == {"admin", "alice"}  # none for the gateway or a revoked token
            assert users["admin"]["is_admin"] is True
            assert users["alice"]["workspaces"] == {"default": "member", "team": "member"}
            _ok(admin.post("/api/v1/users", json={"name": "bob"}), 201)  # the admin is one
        with _api(upgraded, MEMBER_SECRET) as alice:
            me = _ok(alice.get("/api/v1/whoami"))
            assert (me["user"], me["roles"]) == ("alice", {"default": "member", "team": "member"})
            _ok(alice.post(f"{WS}/team/jobs", json=JOB), 201)
        with _api(upgraded, CHILD_SECRET) as child:
            assert _ok(child.get("/api/v1/whoami"))["user"] == "alice"
        with _api(upgraded, GATEWAY_SECRET) as gateway:
            _ok(gateway.get("/api/v1/gateway/routes"))
            assert _ok(gateway.get("/api/v1/whoami"))["user"] is None
        with _api(upgraded, REVOKED_SECRET) as old:
            assert old.get("/api/v1/whoami").status_code == 401
        with _api(upgraded, ADMIN_TOKEN) as admin:
            _ok(admin.delete("/api/v1/users/alice"))
        for secret in (MEMBER_SECRET, CHILD_SECRET):
            with _api(upgraded, secret) as gone:
                assert gone.get("/api/v1/whoami").status_code == 401


# --- the CLI ---------------------------------------------------------------------------


class TestCli:
    def test_users_members_and_tokens_for_a_user(self, kaon: CliRunner) -> None:
        def run(*args: str) -> str:
            result = kaon.invoke(cli, list(args))
            assert result.exit_code == 0, result.output
            return result.output

        run("user", "create", "dora")
        run("user", "create", "root2", "--admin")
        assert "dora" in run("workspace", "add-member", "default", "dora", "--role", "viewer")
        users = {u["name"]: u for u in json.loads(run("user", "list", "--json"))}
        assert users["dora"]["workspaces"] == {"default": "viewer"}
        assert users["root2"]["is_admin"] is True
        assert "viewer" in run("workspace", "members", "default")
        made = json.loads(
            run("token", "create", "dora-t", "--user", "dora", "--role", "viewer", "--json")
        )
        assert (made["user"], made["role"]) == ("dora", "viewer")
        refused = kaon.invoke(
            cli, ["token", "create", "dora-m", "--user", "dora", "--role", "member"]
        )
        assert refused.exit_code == 4, refused.output
        bad = kaon.invoke(cli, ["workspace", "add-member", "default", "dora", "--role", "owner"])
        assert bad.exit_code == 2
        assert "disabled user dora" in run("user", "disable", "dora")
        assert {u["name"]: u["disabled"] for u in json.loads(run("user", "list", "--json"))}[
            "dora"
        ]
        assert "disabled" in run("user", "list")
        assert "enabled user dora" in run("user", "enable", "dora")
        run("workspace", "remove-member", "default", "dora")
        assert "dora" not in run("workspace", "members", "default")
        run("user", "delete", "dora")
        assert "dora" not in run("user", "list")
        missing = kaon.invoke(cli, ["user", "delete", "dora"])
        assert missing.exit_code == 3, missing.output
