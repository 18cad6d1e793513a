"""The HTTP route source and report sink against a stand-in control plane on loopback,
and the messages they carry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as Path

from kaon.core.gateway import Route, RouteTable
from kaon.core.tokens import hash_token
from kaon.gateway.app import Gateway
from kaon.gateway.sources import HttpReportSink, HttpRouteSource
from tests.serving.helpers import running

GATEWAY_TOKEN = "kaon_gateway-secret"


class ControlPlane:
    """Serves a route table and records reports, checking the gateway's token."""

    def __init__(self) -> None:
        self.table = RouteTable(version=1, routes=[Route(name="a")])
        self.reports: list[dict[str, Any]] = []
        self.polls = 0
        self.fail = False
        self.app = Starlette(
            routes=[
                Path("/api/v1/gateway/routes", self.routes),
                Path("/api/v1/gateway/report", self.report, methods=["POST"]),
            ]
        )

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {GATEWAY_TOKEN}"

    async def routes(self, request: Request) -> Response:
        self.polls += 1
        if self.fail:
            return Response(status_code=500)
        if not self._authorized(request):
            return Response(status_code=401)
        return JSONResponse(self.table.model_dump(mode="json"))

    async def report(self, request: Request) -> Response:
        if not self._authorized(request):
            return Response(status_code=401)
        self.reports.append(json.loads(await request.body()))
        return Response(status_code=204)


async def until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("condition not met")


@pytest.fixture
def cp() -> Iterator[tuple[ControlPlane, str]]:
    plane = ControlPlane()
    with running(plane.app) as url:
        yield plane, url


class TestHttpSources:
    async def test_polls_routes_and_applies_new_versions(
        self, cp: tuple[ControlPlane, str]
    ) -> None:
        plane, url = cp
        seen: list[int] = []
        task = asyncio.create_task(
            HttpRouteSource(url, GATEWAY_TOKEN, interval_s=0.05).run(
                lambda t: seen.append(t.version)
            )
        )
        await until(lambda: seen == [1])
        plane.fail = True  # the control plane restarts: keep the last table
        await asyncio.sleep(0.2)
        plane.fail = False
        plane.table = RouteTable(version=2, routes=[])
        await until(lambda: len(seen) == 2)
        task.cancel()
        assert seen == [1, 2]

    async def test_gateway_posts_reports(self, cp: tuple[ControlPlane, str]) -> None:
        plane, url = cp
        gateway = Gateway(
            HttpRouteSource(url, GATEWAY_TOKEN, interval_s=0.05),
            HttpReportSink(url, GATEWAY_TOKEN),
            gateway_id="gw-test",
            report_interval_s=0.1,
        )
        with running(gateway) as gw:
            await until(lambda: len(plane.reports) > 0 and bool(plane.reports[-1]["deployments"]))
            async with httpx.AsyncClient() as client:
                held = await client.get(f"{gw}/a/x", headers={"Authorization": "Bearer t"})
        assert held.status_code == 401  # route "a" allows no token at all
        assert plane.reports
        assert plane.reports[-1]["gateway_id"] == "gw-test"
        assert plane.reports[-1]["deployments"][0]["name"] == "a"

    async def test_held_request_hurries_the_route_polls(
        self, cp: tuple[ControlPlane, str]
    ) -> None:
        """A 5 s poll interval, yet a held request is served within a few hundred ms of its
        replica entering the table; polls slow down again once nothing is held."""
        plane, url = cp
        plane.table = RouteTable(version=1, routes=[Route(name="a", public=True)])
        gateway = Gateway(HttpRouteSource(url, GATEWAY_TOKEN, interval_s=5.0))
        with running(gateway) as gw, running(_echo) as replica:
            await until(lambda: plane.polls == 1)
            async with httpx.AsyncClient(timeout=10) as client:
                held = asyncio.create_task(client.post(f"{gw}/a/predict", content=b"{}"))
                await until(lambda: plane.polls >= 3)  # hurried: every 50 ms
                routes = [Route(name="a", public=True, replicas=[replica])]
                plane.table = RouteTable(version=2, routes=routes)
                start = asyncio.get_running_loop().time()
                reply = await held
                waited = asyncio.get_running_loop().time() - start
            polls = plane.polls
            await asyncio.sleep(0.5)
            assert plane.polls <= polls + 1  # back to every 5 s
        assert reply.status_code == 200 and reply.content == b"ok"
        assert waited < 1.0


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A replica that answers "ok" to everything."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class TestUnknownTokens:
    """A token created a moment ago works at once; a bad one costs the control plane
    little, however many arrive."""

    async def test_a_token_newer_than_the_table_is_accepted_at_once(
        self, cp: tuple[ControlPlane, str]
    ) -> None:
        plane, url = cp
        gateway = Gateway(HttpRouteSource(url, GATEWAY_TOKEN, interval_s=5.0))
        with running(gateway) as gw, running(_echo) as replica:
            plane.table = RouteTable(version=1, routes=[Route(name="a", replicas=[replica])])
            await until(lambda: plane.polls == 1)
            await asyncio.sleep(0.2)  # past the refresh interval since that poll
            fresh = "kaon_made-a-moment-ago"
            route = Route(name="a", replicas=[replica], token_hashes=[hash_token(fresh)])
            plane.table = RouteTable(version=2, routes=[route])  # the next poll is 5 s away
            async with httpx.AsyncClient(timeout=10) as client:
                start = asyncio.get_running_loop().time()
                ok = await client.post(f"{gw}/a/x", headers={"Authorization": f"Bearer {fresh}"})
                waited = asyncio.get_running_loop().time() - start
                bad = await client.post(f"{gw}/a/x", headers={"Authorization": "Bearer kaon_bad"})
        assert (ok.status_code, ok.content) == (200, b"ok")
        assert waited < 1.0
        assert bad.status_code == 401

    async def test_a_flood_of_bad_tokens_is_not_a_flood_of_polls(
        self, cp: tuple[ControlPlane, str]
    ) -> None:
        plane, url = cp
        plane.table = RouteTable(version=1, routes=[Route(name="a")])
        source = HttpRouteSource(url, GATEWAY_TOKEN, interval_s=5.0, min_refresh_s=0.2)
        with running(Gateway(source)) as gw:
            await until(lambda: plane.polls == 1)
            headers = {"Authorization": "Bearer kaon_bad"}
            async with httpx.AsyncClient(timeout=10) as client:
                start = asyncio.get_running_loop().time()
                for _ in range(5):  # waves of 40 at once
                    wave = [client.post(f"{gw}/a/x", headers=headers) for _ in range(40)]
                    replies = await asyncio.gather(*wave)
                    assert {r.status_code for r in replies} == {401}
                spent = asyncio.get_running_loop().time() - start
        # one fetch shared by each wave, spaced at least 0.2 s apart
        assert plane.polls - 1 <= spent / 0.2 + 1
        assert plane.polls - 1 <= 20  # a handful, however slow the machine: not one per 401 (200)
