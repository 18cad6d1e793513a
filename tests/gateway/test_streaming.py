"""Streaming end to end on real processes: a replica process, the gateway on loopback.

Ordering, not time, is what these tests check: a chunk must reach the client while its
generator is still running (the generator waits for the client to have seen it), a client
that leaves must close the generator, a slow client must hold it back.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.test_gateway import AUTH, gateway, route
from tests.serving.helpers import spawn_replica

LIMIT_S = 20.0


@pytest.fixture(scope="module")
def replica_url() -> Iterator[str]:
    with spawn_replica("streams:Streamer") as (_, url):
        yield url


@pytest.fixture(scope="module")
def gateway_url(replica_url: str) -> Iterator[str]:
    with gateway(route("s", [replica_url])) as gw:
        yield f"{gw.url}/s"


@pytest.fixture(scope="module")
def asgi_gateway_url(replica_url: str) -> Iterator[str]:
    with gateway(route("s", [replica_url]), asgi=True) as gw:
        yield f"{gw.url}/s"


@pytest.fixture(params=["replica", "gateway", "asgi-gateway"])
def base(request: pytest.FixtureRequest, replica_url: str) -> str:
    """The same test straight at the replica, through the gateway on its own server, and
    through the gateway as an ASGI app under uvicorn."""
    if request.param == "replica":
        return replica_url
    fixture = "gateway_url" if request.param == "gateway" else "asgi_gateway_url"
    url: str = request.getfixturevalue(fixture)
    return url


def wait_for(path: Path) -> str:
    """The mark's text, once written: the file exists a moment before its text is in it."""
    deadline = time.monotonic() + LIMIT_S
    while not (path.exists() and (text := path.read_text())):
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)
    return text


class TestStreaming:
    def test_a_chunk_arrives_while_the_generator_still_runs(
        self, base: str, tmp_path: Path
    ) -> None:
        seen = ""
        body = {"marks": str(tmp_path), "n": 4}
        with httpx.stream("POST", f"{base}/gated", json=body, headers=AUTH, timeout=LIMIT_S) as r:
            assert r.status_code == 200
            assert "content-length" not in r.headers
            for piece in r.iter_text():
                if not seen:
                    assert piece.startswith("0")  # before the generator could go on
                    (tmp_path / "go").touch()
                seen += piece
        assert seen == "0123"

    def test_server_sent_events(self, base: str, tmp_path: Path) -> None:
        headers = {**AUTH, "Accept": "text/event-stream"}
        body = {"marks": str(tmp_path), "n": 3}
        r = httpx.post(f"{base}/ticks", json=body, headers=headers, timeout=LIMIT_S)
        assert r.headers["content-type"] == "text/event-stream"
        events = [e for e in r.text.split("\n\n") if e]
        assert [json.loads(e.removeprefix("data: ")) for e in events] == [
            {"i": 0}, {"i": 1}, {"i": 2}
        ]  # fmt: skip

    def test_json_lines_without_accept(self, base: str, tmp_path: Path) -> None:
        body = {"marks": str(tmp_path), "n": 2}
        r = httpx.post(f"{base}/ticks", json=body, headers=AUTH, timeout=LIMIT_S)
        assert r.headers["content-type"] == "application/x-ndjson"
        assert [json.loads(line) for line in r.text.splitlines()] == [{"i": 0}, {"i": 1}]
        assert wait_for(tmp_path / "closed") == "async"  # finished normally: finally ran

    def test_an_error_before_the_first_item_is_a_plain_status(self, base: str) -> None:
        r = httpx.post(f"{base}/refuses", json={"n": -1}, headers=AUTH, timeout=LIMIT_S)
        assert r.status_code == 422
        assert "negative" in r.json()["detail"]
        assert httpx.post(f"{base}/refuses", json={"n": 3}, headers=AUTH).text == "012"

    @pytest.mark.parametrize("handler", ["endless", "ticks"])
    def test_a_client_that_leaves_closes_the_generator(
        self, base: str, tmp_path: Path, handler: str
    ) -> None:
        body = {"marks": str(tmp_path), "n": 10**9, "delay_s": 0.01}
        if handler == "endless":
            body.pop("n")
        with httpx.stream("POST", f"{base}/{handler}", json=body, headers=AUTH) as r:
            pieces = r.iter_raw()
            next(pieces)
            next(pieces)
        # leaving the block before the end closes the connection
        closed = wait_for(tmp_path / "closed")
        assert closed == "async" if handler == "ticks" else int(closed) >= 1

    def test_a_slow_client_holds_the_generator_back(self, base: str, tmp_path: Path) -> None:
        size = 64 * 1024
        url = httpx.URL(f"{base}/endless")
        payload = json.dumps({"marks": str(tmp_path), "size": size, "delay_s": 0}).encode()
        head = (
            f"POST {url.raw_path.decode()} HTTP/1.1\r\nhost: x\r\n"
            f"authorization: {AUTH['Authorization']}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\n\r\n"
        ).encode()
        with socket.create_connection((url.host, url.port or 80)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(head + payload)
            count = tmp_path / "count"
            wait_for(count)
            stalled = _stalled(count)  # the generator stops: nobody reads
            # what sits in buffers (socket buffers, the gateway's bounded queue) is small
            # next to the 1 GB it would have made by now without back-pressure
            assert stalled * size < 64 * 2**20
            sock.settimeout(LIMIT_S)
            received = 0
            while received < 4 * (stalled + 8) * size:  # read: the generator goes on
                chunk = sock.recv(2**20)
                assert chunk
                received += len(chunk)
            assert _count(count) > stalled
        assert wait_for(tmp_path / "closed")

    def test_stream_metrics(self, replica_url: str, tmp_path: Path) -> None:
        with gateway(route("m", [replica_url])) as gw:
            body = {"marks": str(tmp_path), "n": 5}
            r = httpx.post(f"{gw.url}/m/ticks", json=body, headers=AUTH, timeout=LIMIT_S)
            assert r.status_code == 200
            text = httpx.get(f"{gw.url}/metrics", headers=AUTH).text
        assert 'kaon_gateway_stream_chunks_total{deployment="m"} 5.0' in text
        assert 'kaon_gateway_stream_first_chunk_seconds_count{deployment="m"} 1.0' in text
        assert 'kaon_gateway_stream_chunk_gap_seconds_count{deployment="m"} 4.0' in text
        replica = httpx.get(f"{replica_url}/metrics").text
        assert 'kaon_replica_stream_first_chunk_seconds_count{handler="ticks"}' in replica


def _count(path: Path) -> int:
    """The number in `path`, written by another process (which may be mid-write)."""
    while not (text := path.read_text()):
        time.sleep(0.001)
    return int(text)


def _stalled(count: Path) -> int:
    """The count once it has stopped moving for a while."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + LIMIT_S
    while time.monotonic() < deadline:
        now = _count(count)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 0.5:
            return now
        time.sleep(0.05)
    raise AssertionError(f"the generator never stopped: {last} items")


class TestBrokenStreams:
    def test_a_replica_that_dies_mid_stream_is_not_retried(self, tmp_path: Path) -> None:
        env = {"KAON_TEST_MARKS": str(tmp_path)}
        with (
            spawn_replica("streams:Dying", env=env) as (_, one),
            spawn_replica("streams:Dying", env=env) as (_, two),
            gateway(route("d", [one, two])) as gw,
        ):
            with pytest.raises(httpx.RemoteProtocolError):
                with httpx.stream("POST", f"{gw.url}/d/dies", json={}, headers=AUTH) as r:
                    assert r.status_code == 200
                    for _ in r.iter_raw():
                        pass
        assert len(list(tmp_path.iterdir())) == 1  # only one replica ever saw the request

    def test_a_replica_silent_past_the_timeout_ends_the_stream(
        self, replica_url: str, tmp_path: Path
    ) -> None:
        body = {"marks": str(tmp_path), "delay_s": 3.0}
        with gateway(route("t", [replica_url], request_timeout_s=0.5)) as gw:
            with pytest.raises(httpx.RemoteProtocolError):
                with httpx.stream("POST", f"{gw.url}/t/endless", json=body, headers=AUTH) as r:
                    assert r.status_code == 200  # the head came in time
                    pieces = r.iter_raw()
                    assert next(pieces) == b"x" * 8
                    next(pieces)  # nothing for 3 s: the gateway gives up after 0.5 s
        assert int(wait_for(tmp_path / "closed")) >= 0  # and the generator was closed
