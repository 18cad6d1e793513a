"""The S3 blob store against moto's standalone S3 server on loopback (a real HTTP server
speaking the S3 API, started by the test): the store's own contract, and a push and pull
through the whole app with ``KAON_ARTIFACT_STORE=s3://...``.

This proves Kaon's S3 requests (multipart uploads, ranged-free streaming reads, listing,
deletes) are well-formed and that the app works end to end through boto3 against an
S3-compatible endpoint. It does not prove behaviour under AWS's own consistency, limits,
throttling or IAM policies, which moto does not reproduce."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from kaon.server.storage.blobstore import CHUNK
from kaon.server.storage.s3 import S3BlobStore, parse_s3_url
from tests.artifacts.test_api import MARKER, make_folder, tree
from tests.conftest import ThreadServer, free_port, test_settings

BUCKET = "kaon-artifacts"


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on a free loopback port, with a bucket (costs about a second:
    it is the only S3 endpoint that runs here)."""
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        httpx.post(f"{url}/moto-api/reset")  # moto's state is per process, not per server
        _client(url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        server.stop()


def _client(url: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=url)


def _objects(url: str) -> dict[str, bytes]:
    s3 = _client(url)
    listing = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listing}


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="s3://BUCKET"):
        parse_s3_url("https://bucket/x")


class TestS3BlobStore:
    def test_the_store_contract(self, s3_endpoint: str) -> None:
        store = S3BlobStore(BUCKET, "pfx", endpoint_url=s3_endpoint)
        big = os.urandom(17 * CHUNK + 3)  # three parts of a multipart upload
        assert store.put(
            "ws-1/abc", [big[i : i + CHUNK] for i in range(0, len(big), CHUNK)]
        ) == len(big)
        assert store.put("ws-1/empty", []) == 0
        assert b"".join(store.get("ws-1/abc")) == big
        assert b"".join(store.get("ws-1/empty")) == b""
        assert store.exists("ws-1/abc") and not store.exists("ws-1/nope")
        assert sorted(store.keys()) == ["ws-1/abc", "ws-1/empty"]
        listed = dict(store.entries("ws-1/"))  # with when each was written, for the clean-up
        assert sorted(listed) == ["ws-1/abc", "ws-1/empty"]
        assert all(abs(t - datetime.now(UTC)) < timedelta(hours=1) for t in listed.values())
        assert set(_objects(s3_endpoint)) == {"pfx/ws-1/abc", "pfx/ws-1/empty"}
        store.delete("ws-1/abc")
        store.delete("ws-1/abc")  # no error for what is not there
        with pytest.raises(KeyError):
            store.get("ws-1/abc")
        with pytest.raises(ValueError, match="bad blob key"):
            store.put("../x", [b"x"])

    def test_a_failed_upload_leaves_no_object(self, s3_endpoint: str) -> None:
        store = S3BlobStore(BUCKET, "", endpoint_url=s3_endpoint)

        def broken() -> Iterator[bytes]:
            yield os.urandom(9 * CHUNK)
            raise OSError("the client went away")

        with pytest.raises(OSError, match="went away"):
            store.put("ws-1/abc", broken())
        assert not store.exists("ws-1/abc")
        assert _client(s3_endpoint).list_multipart_uploads(Bucket=BUCKET).get("Uploads") is None


def test_push_and_pull_through_the_app_on_s3(
    s3_endpoint: str, db_url: str, tmp_path: Path
) -> None:
    settings = test_settings(
        tmp_path / "home",
        db_url,
        artifact_store=f"s3://{BUCKET}/kaon",
        s3_endpoint_url=s3_endpoint,
    )
    src = make_folder(tmp_path / "src")
    with ThreadServer(settings) as server, server.client() as client:
        view = client.artifacts.push("digits", src)
        client.artifacts.download(view.ref, tmp_path / "out")
        assert tree(tmp_path / "out") == tree(src)
        stored = _objects(s3_endpoint)
        assert len(stored) == 4 and all(k.startswith("kaon/") for k in stored)
        assert not any(MARKER in value for value in stored.values())
        assert not (settings.home / "artifacts").exists()
        client.artifacts.delete(view.ref)
        assert _objects(s3_endpoint) == {}
