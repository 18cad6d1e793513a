"""Artifacts over HTTP on the real app (SQLite and PostgreSQL), with the local blob store:
round trips, dedup, encryption at rest, refusals, isolation, and what a delete deletes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kaon.core.errors import InvalidSpecError, KaonError, NotFoundError, PayloadTooLargeError
from kaon.sdk.client import Client
from kaon.server.config import normalize_database_url
from tests.conftest import RunningServer, ThreadServer, test_settings

MARKER = b"KAON-PLAINTEXT-MARKER-4b1d9e"


def make_folder(root: Path) -> Path:
    """A folder with nested files, an empty file, a file over one 1 MiB chunk, and a
    duplicate (the same bytes under two names)."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(MARKER + b" first file\n")
    (root / "copy.txt").write_bytes(MARKER + b" first file\n")
    (root / "empty").write_bytes(b"")
    (root / "sub" / "big.bin").write_bytes(MARKER + os.urandom(3 * 2**20 + 17))
    (root / "sub" / "deeper" / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "sub" / "deeper" / "run.sh").chmod(0o755)
    return root


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o111)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def stored_values(server: RunningServer) -> list[Path]:
    return [p for p in (server.settings.home / "artifacts").rglob("*") if p.is_file()]


class TestRoundTrip:
    def test_push_then_download_is_byte_identical(
        self, client: Client, server: RunningServer, tmp_path: Path
    ) -> None:
        src = make_folder(tmp_path / "src")
        view = client.artifacts.push("digits", src, kind="dataset", metadata={"rows": 10})
        assert (view.ref, view.kind, view.file_count) == ("digits:1", "dataset", 5)
        assert view.size == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        client.artifacts.download("digits", tmp_path / "out")
        assert tree(tmp_path / "out") == tree(src)
        got = client.artifacts.get("digits:1")
        assert got.metadata == {"rows": 10}
        assert {f.path for f in got.files or []} == set(tree(src))

    def test_the_same_bytes_are_stored_once(
        self, client: Client, server: RunningServer, tmp_path: Path
    ) -> None:
        src = make_folder(tmp_path / "src")
        client.artifacts.push("digits", src)
        values = stored_values(server)
        assert len(values) == 4  # five files, two of them alike
        second = client.artifacts.push("digits", src)
        other = client.artifacts.push("again", src / "sub")
        assert (second.ref, other.ref) == ("digits:2", "again:1")
        assert second.digest == client.artifacts.get("digits:1").digest
        assert sorted(stored_values(server)) == sorted(values)
        assert [a.ref for a in client.artifacts.list()] == ["again:1", "digits:2", "digits:1"]

    def test_no_plaintext_reaches_the_store(
        self, client: Client, server: RunningServer, tmp_path: Path
    ) -> None:
        client.artifacts.push("digits", make_folder(tmp_path / "src"))
        values = stored_values(server)
        assert values
        for path in values:
            assert MARKER not in path.read_bytes(), path
            assert path.stat().st_mode & 0o077 == 0


class TestRefusals:
    def test_an_upload_that_does_not_hash_to_its_name_is_refused(
        self, client: Client, server: RunningServer
    ) -> None:
        wrong = hashlib.sha256(b"something else").hexdigest()
        with pytest.raises(InvalidSpecError, match="hash to") as info:
            client.request("PUT", client.ws_path(f"/blobs/{wrong}"), content=b"these bytes")
        assert info.value.field == "sha256"
        assert stored_values(server) == []
        assert not client.artifacts.has_blob(wrong)

    def test_a_manifest_naming_a_missing_blob_is_refused(self, client: Client) -> None:
        missing = hashlib.sha256(b"never sent").hexdigest()
        body = {"files": [{"path": "x", "sha256": missing, "size": 10}]}
        with pytest.raises(InvalidSpecError, match="has not been uploaded") as info:
            client.request("POST", client.ws_path("/artifacts/data"), json=body)
        assert info.value.field == "files.0.sha256"

    @pytest.mark.parametrize(
        ("path", "problem"),
        [("../escape", "relative"), ("/etc/passwd", "relative"), ("a/./b", "relative")],
    )
    def test_a_manifest_path_out_of_the_folder_is_refused(
        self, client: Client, path: str, problem: str
    ) -> None:
        body = {"files": [{"path": path, "sha256": "0" * 64, "size": 1}]}
        with pytest.raises(InvalidSpecError, match=problem) as info:
            client.request("POST", client.ws_path("/artifacts/data"), json=body)
        assert info.value.field is not None and "path" in info.value.field

    def test_bad_names_and_refs_are_4xx(self, client: Client) -> None:
        with pytest.raises(InvalidSpecError):
            client.request("POST", client.ws_path("/artifacts/Bad_Name"), json={"files": []})
        with pytest.raises(InvalidSpecError, match="NAME:VERSION"):
            client.artifacts.get("digits:x")
        with pytest.raises(NotFoundError, match="'digits:3'"):
            client.artifacts.get("digits:3")
        with pytest.raises(InvalidSpecError, match="sha256"):
            client.request("GET", client.ws_path("/blobs/not-a-sha"))

    def test_a_tampered_stored_blob_is_refused(
        self, client: Client, server: RunningServer, tmp_path: Path
    ) -> None:
        src = tmp_path / "src"
        src.mkdir()
        (src / "weights.bin").write_bytes(os.urandom(2 * 2**20 + 5))
        view = client.artifacts.push("model", src)
        [value] = stored_values(server)
        data = bytearray(value.read_bytes())
        data[len(data) // 3] ^= 0x01  # one bit, in the first record
        value.write_bytes(bytes(data))
        sha = (client.artifacts.get(view.ref).files or [])[0].sha256
        answer = httpx.get(
            f"{server.url}{client.ws_path(f'/blobs/{sha}')}",
            headers={"Authorization": f"Bearer {server.token}"},
        )
        assert answer.status_code == 500
        assert answer.json()["error"] == "TamperedBlobError"
        with pytest.raises(KaonError, match="does not open"):
            client.artifacts.download(view.ref, tmp_path / "out")
        assert not (tmp_path / "out" / "weights.bin").exists()


class TestIsolation:
    def test_another_workspace_gets_404(
        self, client: Client, server: RunningServer, tmp_path: Path
    ) -> None:
        client.workspaces.create("team-b")
        view = client.artifacts.push("digits", make_folder(tmp_path / "src"))
        sha = (client.artifacts.get(view.ref).files or [])[0].sha256
        bob_token = client.tokens.create("bob", workspaces=["team-b"]).token
        with server.client(bob_token, workspace="team-b") as bob:
            assert bob.artifacts.list() == []
            with pytest.raises(NotFoundError):
                bob.artifacts.get("digits")  # not in team-b
            with pytest.raises(NotFoundError):
                bob.artifacts.get("digits", workspace="default")  # not bob's workspace
            assert not bob.artifacts.has_blob(sha)  # a blob of default is not team-b's
            with pytest.raises(NotFoundError):
                bob.request("GET", bob.ws_path(f"/blobs/{sha}"))
            with pytest.raises(NotFoundError):
                bob.artifacts.delete(view.ref, workspace="default")
            # team-b's own push of the same bytes is stored again, under team-b's key
            bob.artifacts.push("digits", tmp_path / "src")
        assert len(stored_values(server)) == 8


class TestDelete:
    def test_a_delete_removes_the_version_and_the_blobs_only_it_used(
        self, client: Client, server: RunningServer, tmp_path: Path
    ) -> None:
        src = make_folder(tmp_path / "src")
        client.artifacts.push("digits", src)
        (src / "new.txt").write_bytes(b"only in version 2")
        client.artifacts.push("digits", src)
        assert len(stored_values(server)) == 5
        with pytest.raises(InvalidSpecError, match="NAME:VERSION"):
            client.artifacts.delete("digits")
        client.artifacts.delete("digits:2")
        assert len(stored_values(server)) == 4  # new.txt's blob went; the shared ones stay
        client.artifacts.download("digits", tmp_path / "out")
        assert "new.txt" not in tree(tmp_path / "out")
        client.artifacts.delete("digits:1")
        assert stored_values(server) == []
        assert client.artifacts.list() == []
        actions = [r.action for r in client.audit.list() if r.outcome == "ok"]
        assert actions.count("artifacts.delete_artifact") == 2
        assert actions.count("artifacts.create_artifact") == 2
        assert "artifacts.put_blob" in actions


def test_an_upload_over_the_limit_is_refused_and_not_kept(tmp_path: Path) -> None:
    """413 both when the declared length is over the limit and when a streamed body
    (no length) grows past it; nothing of either is stored."""
    url = normalize_database_url(str(tmp_path / "kaon.db"))
    settings = test_settings(tmp_path / "home", url, artifact_blob_limit=3 * 2**20)
    data = os.urandom(4 * 2**20)
    sha = hashlib.sha256(data).hexdigest()
    with ThreadServer(settings) as server, server.client() as client:
        path = client.ws_path(f"/blobs/{sha}")
        with pytest.raises(PayloadTooLargeError, match="KAON_ARTIFACT_BLOB_LIMIT"):
            client.request("PUT", path, content=data)

        def streamed() -> Iterator[bytes]:
            for i in range(0, len(data), 2**20):
                yield data[i : i + 2**20]

        with pytest.raises(PayloadTooLargeError):
            client.request("PUT", path, content=streamed())
        assert not client.artifacts.has_blob(sha)
        assert stored_values(server) == []
