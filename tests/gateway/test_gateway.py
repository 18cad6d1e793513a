"""The gateway over real HTTP, in front of real replicas (in-thread and as processes)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvloop

from kaon.core.gateway import Route, RouteTable
from kaon.core.tokens import hash_token
from kaon.gateway.app import Gateway
from kaon.gateway.server import GatewayServer
from kaon.gateway.sources import MemoryReportSink, StaticRouteSource
from kaon.serving.app import ReplicaApp
from tests.serving.helpers import running, spawn_replica, wait_ready
from tests.serving.services import Classifier

TOKEN = "kaon_dep-token-1"
OTHER = "kaon_dep-token-2"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def route(name: str, replicas: list[str], **kw: Any) -> Route:
    return Route(name=name, replicas=replicas, token_hashes=[hash_token(TOKEN)], **kw)


class Bench:
    """A gateway on loopback with a static route source and an in-memory report sink."""

    def __init__(self, url: str, source: StaticRouteSource, sink: MemoryReportSink) -> None:
        self.url = url
        self.source = source
        self.sink = sink
        self._version = 1

    def set(self, *routes: Route) -> None:
        self._version += 1
        self.source.set(RouteTable(version=self._version, routes=list(routes)))


@contextlib.contextmanager
def gateway(*routes: Route, report_interval_s: float = 1.0, asgi: bool = False) -> Iterator[Bench]:
    """The gateway on its own server, as `python -m kaon.gateway` runs it (or under uvicorn
    as an ASGI app, with `asgi=True`)."""
    source = StaticRouteSource(RouteTable(version=1, routes=list(routes)))
    sink = MemoryReportSink()
    app = Gateway(source, sink, report_interval_s=report_interval_s)
    with running(app) if asgi else running_gateway(app) as url:
        yield Bench(url, source, sink)


@contextlib.contextmanager
def running_gateway(app: Gateway) -> Iterator[str]:
    server = GatewayServer(app, "127.0.0.1", 0)
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(1.0),))
    thread.start()
    deadline = time.monotonic() + 10
    while server.port == 0:
        assert thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        loop.call_soon_threadsafe(server.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def replica(replica_id: str = "") -> Iterator[str]:
    with running(ReplicaApp(Classifier())) as url:
        wait_ready(url)
        yield url


@pytest.fixture(scope="module")
def replica_url() -> Iterator[str]:
    with replica() as url:
        yield url


class TestProxy:
    def test_forwards_to_the_handler(self, replica_url: str) -> None:
        with gateway(route("clf", [replica_url])) as gw:
            r = httpx.post(f"{gw.url}/clf/predict", json={"x": [[0.5, -1.0]]}, headers=AUTH)
            assert r.status_code == 200
            assert r.json() == [0.5]
            q = httpx.get(f"{gw.url}/clf/scale?value=4&factor=0.5", headers=AUTH)
            assert q.json() == 2.0
            bad = httpx.post(f"{gw.url}/clf/predict", json={"x": "no"}, headers=AUTH)
            assert bad.status_code == 422  # the replica's answer, passed through

    def test_runs_as_an_asgi_app_too(self, replica_url: str) -> None:
        with gateway(route("clf", [replica_url]), asgi=True) as gw:
            r = httpx.post(f"{gw.url}/clf/predict", json={"x": [[0.5, -1.0]]}, headers=AUTH)
            assert r.json() == [0.5]
            assert httpx.post(f"{gw.url}/clf/predict", json={"x": [[1.0] * 50]}).status_code == 401

    def test_http_details(self, replica_url: str) -> None:
        with gateway(route("clf", [replica_url], max_body_bytes=64)) as gw:
            with httpx.Client(base_url=gw.url, headers=AUTH) as client:  # one keep-alive conn
                codes = [
                    client.post("/clf/predict", json={"x": [[1.0]]}).status_code for _ in range(3)
                ]
                chunked = client.post("/clf/predict", content=iter([b'{"x": ', b"[[1.0]]}"]))
                big = client.post(
                    "/clf/predict", content=iter([b'{"x": [', b"[1.0]," * 40, b"]}"])
                )
                closing = client.post(
                    "/clf/predict", json={"x": [[1.0]]}, headers={"Connection": "close"}
                )
            refused = httpx.post(f"{gw.url}/clf/predict", content=b"x" * 1000)  # no token
            head = httpx.head(f"{gw.url}/clf/predict", headers=AUTH, timeout=5)  # must not hang
        assert codes == [200, 200, 200]
        assert head.status_code == 405
        assert chunked.json() == [2.0]
        assert big.status_code == 413
        assert closing.status_code == 200
        assert refused.status_code == 401

    def test_auth(self, replica_url: str) -> None:
        routes = [route("clf", [replica_url]), route("open", [replica_url], public=True)]
        with gateway(*routes) as gw:
            body = {"x": [[1.0]]}
            missing = httpx.post(f"{gw.url}/clf/predict", json=body)
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"] == "Bearer"
            wrong = {"Authorization": f"Bearer {OTHER}"}
            assert httpx.post(f"{gw.url}/clf/predict", json=body, headers=wrong).status_code == 401
            assert httpx.post(f"{gw.url}/open/predict", json=body).status_code == 200

    def test_unknown_and_forbidden_deployments_look_the_same(self, replica_url: str) -> None:
        mine = route("clf", [replica_url])
        theirs = Route(name="theirs", replicas=[replica_url], token_hashes=[hash_token(OTHER)])
        with gateway(mine, theirs) as gw:
            unknown = httpx.post(f"{gw.url}/nope/predict", headers=AUTH)
            forbidden = httpx.post(f"{gw.url}/theirs/predict", headers=AUTH)
        assert unknown.status_code == forbidden.status_code == 404
        assert unknown.json()["detail"].replace("nope", "X") == forbidden.json()["detail"].replace(
            "theirs", "X"
        )

    def test_body_over_limit_is_413(self, replica_url: str) -> None:
        with gateway(route("clf", [replica_url], max_body_bytes=32)) as gw:
            r = httpx.post(f"{gw.url}/clf/predict", json={"x": [[1.0] * 50]}, headers=AUTH)
        assert r.status_code == 413

    def test_replica_timeout_is_504(self, replica_url: str) -> None:
        with gateway(route("clf", [replica_url], request_timeout_s=0.3)) as gw:
            r = httpx.post(f"{gw.url}/clf/sleep", json={"seconds": 1.5}, headers=AUTH)
        assert r.status_code == 504


class TestBalancing:
    async def test_least_outstanding_requests(self) -> None:
        with replica() as a, replica() as b, gateway(route("clf", [a, b])) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH) as client:
                slow = asyncio.create_task(client.post("/clf/sleep", json={"seconds": 1.0}))
                await asyncio.sleep(0.2)  # the slow request holds one replica
                fast = [await client.post("/clf/whoami") for _ in range(6)]
                await slow
                metrics_a = (await client.get(f"{a}/metrics")).text
        # every fast request went to the replica without the slow one
        busy_got_whoami = 'kaon_replica_requests_total{code="200",handler="whoami"}' in metrics_a
        slept_on_a = 'kaon_replica_requests_total{code="200",handler="sleep"}' in metrics_a
        assert busy_got_whoami != slept_on_a
        assert {r.status_code for r in fast} == {200}

    async def test_spreads_concurrent_requests(self) -> None:
        with replica() as a, replica() as b, gateway(route("clf", [a, b])) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH) as client:
                calls = [client.post("/clf/sleep", json={"seconds": 0.3}) for _ in range(4)]
                replies = await asyncio.gather(*calls)
                texts = [(await client.get(f"{u}/metrics")).text for u in (a, b)]
            counts = [_count(text, "sleep") for text in texts]
        assert {r.status_code for r in replies} == {200}
        assert counts == [2, 2]

    async def test_full_queue_is_429(self, replica_url: str) -> None:
        r = route("clf", [replica_url], max_concurrency=1, max_queue=1)
        with gateway(r) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH) as client:
                calls = [client.post("/clf/sleep", json={"seconds": 0.5}) for _ in range(3)]
                replies = await asyncio.gather(*calls)
        codes = sorted(r.status_code for r in replies)
        assert codes == [200, 200, 429]
        refused = next(r for r in replies if r.status_code == 429)
        assert refused.headers["retry-after"] == "1"


def _count(metrics: str, handler: str) -> int:
    for line in metrics.splitlines():
        if line.startswith(f'kaon_replica_requests_total{{code="200",handler="{handler}"}}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


@pytest.mark.e2e
class TestReplicaFailure:
    async def test_replica_killed_mid_request_is_retried_elsewhere(self) -> None:
        with spawn_replica("services:Classifier") as (proc, dying), replica() as healthy:
            with gateway(route("clf", [dying])) as gw:
                async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as c:
                    call = asyncio.create_task(c.post("/clf/sleep", json={"seconds": 2}))
                    await asyncio.sleep(0.5)
                    gw.set(route("clf", [dying, healthy]))
                    await asyncio.sleep(0.1)
                    proc.kill()
                    reply = await call
        assert reply.status_code == 200
        assert reply.json() == {"replica": ""}  # the in-thread replica has no id

    async def test_only_replica_killed_is_a_clean_502(self) -> None:
        with spawn_replica("services:Classifier") as (proc, dying):
            with gateway(route("clf", [dying])) as gw:
                async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as c:
                    call = asyncio.create_task(c.post("/clf/sleep", json={"seconds": 2}))
                    await asyncio.sleep(0.5)
                    proc.kill()
                    started = time.monotonic()
                    reply = await call
        assert reply.status_code == 502
        assert time.monotonic() - started < 2

    def test_refused_connection_retries_on_another_replica(self, replica_url: str) -> None:
        with spawn_replica("services:Classifier") as (proc, gone):
            proc.kill()
            proc.wait()
        with gateway(route("clf", [gone, replica_url])) as gw:
            codes = [
                httpx.post(f"{gw.url}/clf/predict", json={"x": [[1.0]]}, headers=AUTH).status_code
                for _ in range(4)
            ]
        assert codes == [200] * 4


class TestScaleFromZero:
    async def test_request_is_held_until_a_replica_appears(self, replica_url: str) -> None:
        with gateway(route("clf", [])) as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as client:
                call = asyncio.create_task(client.post("/clf/predict", json={"x": [[2.0]]}))
                await asyncio.sleep(0.5)
                assert not call.done()
                demand = [r for r in gw.sink.reports if r.reason == "demand"]
                assert demand and demand[0].deployments[0].waiting_for_replica
                assert demand[0].deployments[0].queued == 1
                gw.set(route("clf", [replica_url]))
                reply = await call
        assert reply.status_code == 200
        assert reply.json() == [3.0]

    def test_no_replica_in_time_is_503(self) -> None:
        with gateway(route("clf", [], cold_start_timeout_s=0.3)) as gw:
            started = time.monotonic()
            r = httpx.post(f"{gw.url}/clf/predict", json={"x": [[1.0]]}, headers=AUTH)
        assert r.status_code == 503
        assert r.headers["retry-after"]
        assert time.monotonic() - started < 2


class TestObservability:
    def test_metrics_and_reports(self, replica_url: str) -> None:
        with gateway(route("clf", [replica_url]), report_interval_s=0.3) as gw:
            for _ in range(5):
                httpx.post(f"{gw.url}/clf/predict", json={"x": [[1.0]]}, headers=AUTH)
            metrics = httpx.get(f"{gw.url}/metrics", headers=AUTH).text
            assert httpx.get(f"{gw.url}/healthz").status_code == 200
            time.sleep(0.7)
            reports = list(gw.sink.reports)
        assert 'kaon_gateway_requests_total{code="200",deployment="clf"} 5.0' in metrics
        assert 'kaon_gateway_request_duration_seconds_count{deployment="clf"} 5.0' in metrics
        assert 'kaon_gateway_in_flight{deployment="clf"} 0.0' in metrics
        loads = [d for r in reports for d in r.deployments if d.p50_ms is not None]
        assert sum(round(d.requests_per_s * r.window_s) for r in reports for d in r.deployments)
        assert loads and loads[0].p99_ms is not None and loads[0].p99_ms >= loads[0].p50_ms
