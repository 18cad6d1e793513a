"""Token lifetimes against a real control-plane process, on SQLite and PostgreSQL.

- A token can expire; an expired one is refused with 401 "token expired".
- A token records the token that minted it; revoking a token revokes every token it
  minted, transitively (and nothing else).
- A token never mints one with a role above its own, a workspace it is not in, or a
  lifetime past its own; without one asked for, the child ends when its parent does.
- Deployment tokens can be listed (names and prefixes only) and revoked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from kaon.cli.main import _revoke_old_gateway_tokens
from kaon.cli.main import app as cli
from kaon.core.auth import parse_expiry
from kaon.sdk.client import Client
from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import ServerProcess
from tests.security.conftest import Quiet
from tests.security.conftest import quiet as quiet  # a fixture: the control plane, quiet

TOKENS = "/api/v1/tokens"


@pytest.fixture
def plane(tmp_path: Path, db_url: str) -> Iterator[str]:
    server = ServerProcess(tmp_path / "home", db_url)
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


def _api(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _mint(url: str, token: str, name: str, **body: object) -> httpx.Response:
    with _api(url, token) as http:
        return http.post(TOKENS, json={"name": name, **body})


def _whoami(url: str, token: str) -> httpx.Response:
    with _api(url, token) as http:
        return http.get("/api/v1/whoami")


class TestExpiry:
    def test_an_expired_token_is_refused_with_token_expired(self, plane: str) -> None:
        made = _mint(plane, ADMIN_TOKEN, "brief", expires_in=2)
        assert made.status_code == 201, made.text
        secret = made.json()["token"]
        ends = datetime.fromisoformat(made.json()["expires_at"])
        assert datetime.now(UTC) < ends <= datetime.now(UTC) + timedelta(seconds=3)
        deadline = time.monotonic() + 30
        while (answer := _whoami(plane, secret)).status_code == 200:
            assert time.monotonic() < deadline, "the token never expired"
            time.sleep(0.2)
        assert answer.status_code == 401
        assert "token expired" in answer.text
        assert _whoami(plane, ADMIN_TOKEN).status_code == 200

    def test_a_lifetime_in_the_past_or_given_twice_is_422_naming_it(self, plane: str) -> None:
        past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        refused = _mint(plane, ADMIN_TOKEN, "late", expires_at=past)
        assert refused.status_code == 422, refused.text
        assert "expires_at" in refused.text
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        both = _mint(plane, ADMIN_TOKEN, "both", expires_at=later, expires_in=60)
        assert both.status_code == 422
        naive = _mint(plane, ADMIN_TOKEN, "naive", expires_at="2030-01-01T00:00:00")
        assert naive.status_code == 422
        assert "time zone" in naive.text
        assert _mint(plane, ADMIN_TOKEN, "forever", expires_in=1e12).status_code == 422
        for edge in ("9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+14:00"):
            answer = _mint(plane, ADMIN_TOKEN, "edge", expires_at=edge)
            assert answer.status_code == 422, answer.text
            assert "expires_at" in answer.text


class TestCascade:
    def test_revoking_a_token_revokes_what_it_minted_transitively(self, plane: str) -> None:
        member = _mint(plane, ADMIN_TOKEN, "member").json()
        child = _mint(plane, member["token"], "child").json()
        grandchild = _mint(plane, child["token"], "grandchild").json()
        other = _mint(plane, ADMIN_TOKEN, "other").json()
        assert child["parent_id"] == member["id"]
        assert grandchild["parent_id"] == child["id"]
        assert _whoami(plane, grandchild["token"]).status_code == 200

        with _api(plane, ADMIN_TOKEN) as http:
            assert http.delete(f"{TOKENS}/{member['id']}").status_code == 200
        for gone in (member, child, grandchild):
            assert _whoami(plane, gone["token"]).status_code == 401, gone["name"]
        assert _whoami(plane, other["token"]).status_code == 200  # a sibling stays
        assert _whoami(plane, ADMIN_TOKEN).status_code == 200  # and the parent

    def test_a_member_revokes_what_it_minted_and_keeps_its_own(self, plane: str) -> None:
        member = _mint(plane, ADMIN_TOKEN, "member").json()
        child = _mint(plane, member["token"], "child").json()
        grandchild = _mint(plane, child["token"], "grandchild").json()
        with _api(plane, member["token"]) as http:
            listed = {t["name"] for t in http.get(TOKENS).json()}
            assert listed == {"member", "child", "grandchild"}
            assert http.delete(f"{TOKENS}/{child['id']}").status_code == 200
        assert _whoami(plane, grandchild["token"]).status_code == 401
        assert _whoami(plane, member["token"]).status_code == 200
        with _api(plane, child["token"]) as http:  # revoked: not even its own list
            assert http.get(TOKENS).status_code == 401


class TestCaps:
    def test_no_role_above_the_parent_and_no_workspace_outside_it(self, plane: str) -> None:
        with _api(plane, ADMIN_TOKEN) as http:
            assert http.post("/api/v1/workspaces", json={"name": "team-b"}).status_code == 201
        member = _mint(plane, ADMIN_TOKEN, "member").json()["token"]
        for role in ("admin", "gateway"):
            refused = _mint(plane, member, f"as-{role}", role=role)
            assert refused.status_code == 403, refused.text
        assert _mint(plane, member, "elsewhere", workspaces=["team-b"]).status_code == 404
        gateway = _mint(plane, ADMIN_TOKEN, "gw", role="gateway").json()["token"]
        assert _mint(plane, gateway, "from-gw").status_code == 403
        assert _mint(plane, member, "fine").status_code == 201

    def test_no_child_outlives_its_parent(self, plane: str) -> None:
        parent = _mint(plane, ADMIN_TOKEN, "hour", expires_in=3600).json()
        ends = parent["expires_at"]
        longer = _mint(plane, parent["token"], "day", expires_in=86400)
        assert longer.status_code == 422, longer.text
        assert "expires_at" in longer.text
        inherited = _mint(plane, parent["token"], "same")
        assert inherited.status_code == 201
        assert datetime.fromisoformat(inherited.json()["expires_at"]) == datetime.fromisoformat(
            ends
        )
        shorter = _mint(plane, parent["token"], "minute", expires_in=60)
        assert datetime.fromisoformat(shorter.json()["expires_at"]) < datetime.fromisoformat(ends)


class TestCli:
    def test_token_create_expires(
        self, plane: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAON_URL", plane)
        monkeypatch.setenv("KAON_TOKEN", ADMIN_TOKEN)
        monkeypatch.setenv("KAON_HOME", str(tmp_path / "client"))
        runner = CliRunner()
        made = runner.invoke(cli, ["token", "create", "week", "--expires", "7d"])
        assert made.exit_code == 0, made.output
        listed = runner.invoke(cli, ["token", "list"])
        week = (datetime.now(UTC) + timedelta(days=7)).strftime("%Y-%m-%d")
        assert week in listed.output
        bad = runner.invoke(cli, ["token", "create", "odd", "--expires", "soon"])
        assert bad.exit_code != 0
        assert "--expires" in bad.output


def test_parse_expiry() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert parse_expiry("7d", now) == now + timedelta(days=7)
    assert parse_expiry("12h", now) == now + timedelta(hours=12)
    assert parse_expiry("30m", now) == now + timedelta(minutes=30)
    assert parse_expiry("2026-12-31", now) == datetime(2026, 12, 31, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_expiry("d7", now)


class TestDeploymentTokens:
    def test_listed_by_name_and_prefix_and_revoked(self, quiet: Quiet) -> None:
        with _api(quiet.url, quiet.tokens.admin) as http:
            deps = "/api/v1/workspaces/default/deployments"
            made = http.post(deps, json={"name": "clf", "service": "svc:Model"})
            assert made.status_code == 201, made.text
            secret = http.post(f"{deps}/clf/tokens", json={"name": "app"}).json()["token"]
            listed = http.get(f"{deps}/clf/tokens")
            assert listed.status_code == 200
            [view] = listed.json()
            assert view["name"] == "app" and secret.startswith(view["prefix"])
            assert secret not in listed.text
            revoked = http.delete(f"{deps}/clf/tokens/app")
            assert revoked.status_code == 200 and revoked.json()["revoked_at"]
            assert http.delete(f"{deps}/clf/tokens/app").status_code == 404
            assert http.get(f"{deps}/nothing/tokens").status_code == 404
        with _api(quiet.url, quiet.tokens.member) as http:  # the workspace's member sees it
            assert http.get(f"{deps}/clf/tokens").status_code == 200

    def test_kaon_deploy_token_list_and_revoke(
        self, quiet: Quiet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAON_URL", quiet.url)
        monkeypatch.setenv("KAON_TOKEN", quiet.tokens.admin)
        monkeypatch.setenv("KAON_HOME", str(tmp_path / "client"))
        with _api(quiet.url, quiet.tokens.admin) as http:
            deps = "/api/v1/workspaces/default/deployments"
            assert http.post(deps, json={"name": "clf", "service": "svc:Model"}).is_success
        runner = CliRunner()
        made = runner.invoke(cli, ["deploy", "token", "clf", "--name", "app", "-q"])
        assert made.exit_code == 0, made.output
        secret = made.output.strip()
        listed = runner.invoke(cli, ["deploy", "token", "clf", "--list"])
        assert "app" in listed.output and secret[:9] in listed.output
        assert secret not in listed.output
        revoked = runner.invoke(cli, ["deploy", "token", "clf", "--revoke", "app"])
        assert revoked.exit_code == 0, revoked.output
        assert "revoked" in runner.invoke(cli, ["deploy", "token", "clf", "--list"]).output


class TestGatewayToken:
    def test_kaon_up_revokes_the_gateway_tokens_it_made_before(self, plane: str) -> None:
        old = _mint(plane, ADMIN_TOKEN, "gateway-000001", role="gateway").json()
        hand = _mint(plane, ADMIN_TOKEN, "edge", role="gateway").json()  # not kaon up's
        new = _mint(plane, ADMIN_TOKEN, "gateway-000002", role="gateway").json()
        _revoke_old_gateway_tokens(Client(plane, token=ADMIN_TOKEN).tokens, keep=new["name"])
        assert _whoami(plane, old["token"]).status_code == 401
        assert _whoami(plane, new["token"]).status_code == 200
        assert _whoami(plane, hand["token"]).status_code == 200
