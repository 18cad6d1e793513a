"""Stored bytes per workspace: artifact blobs and code snapshots count against
``KAON_WORKSPACE_STORAGE_LIMIT``; an upload that would pass it is refused with 413 naming
the limit and the use, and nothing of it is kept; the use is shown by
``GET /api/v1/workspaces/{ws}/storage``; other workspaces are not affected; deleting
what a workspace stores makes room again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kaon.core.errors import PayloadTooLargeError
from kaon.sdk.client import Client
from tests.conftest import ADMIN_TOKEN, RunningServer, ThreadServer, test_settings

LIMIT = 64 * 1024


@pytest.fixture
def limited(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    settings = test_settings(tmp_path / "home", db_url, workspace_storage_limit=LIMIT)
    with ThreadServer(settings) as running:
        yield running


@pytest.fixture
def client(limited: RunningServer) -> Iterator[Client]:
    with limited.client() as c:
        yield c


def random_file(folder: Path, name: str, size: int) -> Path:
    """Incompressible bytes, so a snapshot's size is what its files hold."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(os.urandom(size))
    return path


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


class TestUse:
    def test_blobs_and_snapshots_are_counted(self, client: Client, tmp_path: Path) -> None:
        assert client.storage() == {
            "workspace": "default",
            "used": 0,
            "blobs": 0,
            "snapshots": 0,
            "limit": LIMIT,
        }
        random_file(tmp_path / "model", "weights.bin", 20_000)
        client.artifacts.push("model", tmp_path / "model")
        random_file(tmp_path / "code", "main.py", 10_000)
        client.jobs.upload(tmp_path / "code")
        use = client.storage()
        assert 20_000 <= use["blobs"] < 21_000  # sealed: a little more than the plaintext
        assert 10_000 <= use["snapshots"] < 11_000  # the tar.gz as uploaded
        assert use["used"] == use["blobs"] + use["snapshots"]

    def test_another_workspace_sees_only_its_own(
        self, limited: RunningServer, client: Client, tmp_path: Path
    ) -> None:
        client.workspaces.create("team-b")
        random_file(tmp_path / "a", "a.bin", 30_000)
        client.artifacts.push("a", tmp_path / "a")
        assert client.storage("team-b")["used"] == 0
        member = client.tokens.create("b-only", workspaces=["team-b"]).token
        with limited.client(token=member, workspace="team-b") as b:
            assert b.storage()["used"] == 0
            with pytest.raises(Exception, match="not found"):
                b.storage("default")  # another workspace's use is not shown


class TestLimit:
    def test_a_blob_past_the_limit_is_refused_naming_limit_and_use(
        self, limited: RunningServer, client: Client, tmp_path: Path
    ) -> None:
        random_file(tmp_path / "first", "a.bin", 40_000)
        client.artifacts.push("first", tmp_path / "first")
        used = client.storage()["used"]
        store = limited.settings.artifacts_dir
        before = stored_files(store)

        random_file(tmp_path / "second", "b.bin", 40_000)
        with pytest.raises(PayloadTooLargeError) as refused:
            client.artifacts.push("second", tmp_path / "second")
        message = str(refused.value)
        assert "KAON_WORKSPACE_STORAGE_LIMIT" in message
        assert "64 KiB" in message  # the limit
        assert "39.1 KiB" in message  # what the workspace stores now
        assert client.storage()["used"] == used  # nothing of it counted
        assert stored_files(store) == before  # nor kept

    def test_a_declared_length_past_the_limit_is_refused_before_the_body(
        self, limited: RunningServer
    ) -> None:
        sha = "ab" * 32
        response = httpx.put(
            f"{limited.url}/api/v1/workspaces/default/blobs/{sha}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Length": "100000"},
            content=b"x" * 100_000,
        )
        assert response.status_code == 413
        assert "storage limit of 64 KiB" in response.json()["detail"]

    def test_a_snapshot_past_the_limit_is_refused_and_not_kept(
        self, limited: RunningServer, client: Client, tmp_path: Path
    ) -> None:
        random_file(tmp_path / "data", "d.bin", 50_000)
        client.artifacts.push("data", tmp_path / "data")
        snapshots = limited.settings.blobs_dir / "snapshots"
        random_file(tmp_path / "code", "big.py", 20_000)
        with pytest.raises(PayloadTooLargeError, match="KAON_WORKSPACE_STORAGE_LIMIT"):
            client.jobs.upload(tmp_path / "code")
        assert stored_files(snapshots) == []
        assert client.storage()["snapshots"] == 0

    def test_other_workspaces_still_upload(
        self, limited: RunningServer, client: Client, tmp_path: Path
    ) -> None:
        random_file(tmp_path / "full", "f.bin", 60_000)
        client.artifacts.push("full", tmp_path / "full")
        client.workspaces.create("team-b")
        random_file(tmp_path / "b", "b.bin", 30_000)
        client.artifacts.push("b", tmp_path / "b", workspace="team-b")
        assert client.storage("team-b")["blobs"] >= 30_000

    def test_deleting_a_version_makes_room(self, client: Client, tmp_path: Path) -> None:
        random_file(tmp_path / "old", "o.bin", 50_000)
        client.artifacts.push("old", tmp_path / "old")
        random_file(tmp_path / "new", "n.bin", 30_000)
        with pytest.raises(PayloadTooLargeError):
            client.artifacts.push("new", tmp_path / "new")
        client.artifacts.delete("old:1")
        assert client.storage()["used"] == 0
        client.artifacts.push("new", tmp_path / "new")
        assert client.storage()["blobs"] >= 30_000


class TestLimitPerWorkspace:
    def test_a_workspaces_quota_sets_its_own_limit_and_only_its_own(
        self, client: Client, tmp_path: Path
    ) -> None:
        client.workspaces.create("team-b")
        view = client.quotas.set("team-b", storage="128Ki")
        assert view.quota.storage == 128 * 1024
        assert client.storage("team-b")["limit"] == 128 * 1024
        assert client.storage()["limit"] == LIMIT  # the others keep the default

        random_file(tmp_path / "b1", "b.bin", 100_000)  # past the default, within its own
        client.artifacts.push("b1", tmp_path / "b1", workspace="team-b")
        random_file(tmp_path / "b2", "b.bin", 40_000)
        with pytest.raises(PayloadTooLargeError) as refused:
            client.artifacts.push("b2", tmp_path / "b2", workspace="team-b")
        assert "128 KiB" in str(refused.value) and "its quota's storage" in str(refused.value)

        client.quotas.set("team-b", storage="1Mi")  # raised: the same upload fits now
        client.artifacts.push("b2", tmp_path / "b2", workspace="team-b")
        client.quotas.delete("team-b")  # back to the default, already past it
        assert client.storage("team-b")["limit"] == LIMIT
        with pytest.raises(PayloadTooLargeError, match="KAON_WORKSPACE_STORAGE_LIMIT"):
            client.artifacts.push(
                "b3", random_file(tmp_path / "b3", "c.bin", 1_000).parent, workspace="team-b"
            )

    def test_a_bad_value_is_refused_naming_the_field(self, limited: RunningServer) -> None:
        response = httpx.put(
            f"{limited.url}/api/v1/quotas/default",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            json={"storage": "lots"},
        )
        assert response.status_code == 422
        assert "storage" in response.text
