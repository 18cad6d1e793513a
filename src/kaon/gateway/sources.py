"""Where the gateway gets its routes from, and where it sends its load reports.

Two small protocols keep the gateway ignorant of the control plane's internals:

- `RouteSource.run(apply)` calls ``apply(table)`` with the current `RouteTable` and again
  with every new one, until cancelled. A source that polls may also support `hurry`: the
  gateway calls it when a request is held for a deployment with no ready replica, and the
  source then polls every `hurry_interval_s` until nothing is held, so the replica that
  the control plane starts for it is used within ~50 ms of being ready, not 0.25-0.5 s.
  It may also support `refresh`: the gateway awaits it when a bearer token is unknown, so a
  token created a moment ago works at once instead of after the next poll. Refreshes share
  the one poll loop (never two fetches at once) and are at most one per `min_refresh_s`,
  so a flood of bad tokens cannot make the gateway hammer the control plane.
- `ReportSink.send(report)` delivers one `GatewayReport`.

The HTTP versions poll ``GET {cp}/api/v1/gateway/routes`` and post to
``POST {cp}/api/v1/gateway/report`` with the gateway's bearer token. When the control plane
is down (it may restart at any moment), the gateway keeps serving with the last table it
had and drops reports: both are snapshots, and the next one replaces what was lost.
The static versions serve tests, benchmarks and single-machine setups.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import httpx

from kaon.core.gateway import GatewayReport, RouteTable

__all__ = [
    "HttpReportSink",
    "HttpRouteSource",
    "MemoryReportSink",
    "ReportSink",
    "RouteSource",
    "StaticRouteSource",
    "SupportsHurry",
    "SupportsRefresh",
]

logger = logging.getLogger("kaon.gateway")

ROUTES_PATH = "/api/v1/gateway/routes"
REPORT_PATH = "/api/v1/gateway/report"

Apply = Callable[[RouteTable], None]


class RouteSource(Protocol):
    async def run(self, apply: Apply) -> None:
        """Call `apply` with the current table, then with each new one, until cancelled."""


@runtime_checkable
class SupportsHurry(Protocol):
    def hurry(self, waiting: Callable[[], bool]) -> None:
        """Fetch soon, and often while `waiting()` is true (requests are held)."""


@runtime_checkable
class SupportsRefresh(Protocol):
    async def refresh(self, timeout_s: float) -> None:
        """Return once a table fetched after this call was applied (or found unchanged),
        or after `timeout_s`, whichever comes first."""


class ReportSink(Protocol):
    async def send(self, report: GatewayReport) -> None:
        """Deliver one report; may raise, the gateway logs and carries on."""


class StaticRouteSource:
    """A table set in code. `set` may be called from any thread (tests, benchmark drivers)."""

    def __init__(self, table: RouteTable | None = None) -> None:
        self._table = table or RouteTable()
        self._lock = threading.Lock()
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, Apply]] = []

    @property
    def table(self) -> RouteTable:
        return self._table

    def set(self, table: RouteTable) -> None:
        with self._lock:
            self._table = table
            subscribers = list(self._subscribers)
        for loop, apply in subscribers:
            loop.call_soon_threadsafe(apply, table)

    async def run(self, apply: Apply) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            self._subscribers.append((loop, apply))
            table = self._table
        apply(table)
        try:
            await asyncio.Event().wait()  # forever; new tables arrive through set()
        finally:
            with self._lock:
                self._subscribers.remove((loop, apply))


class HttpRouteSource:
    """Polls the control plane every `interval_s`; applies a table when its version changes.

    While `hurry`'s ``waiting()`` is true, it polls every `hurry_interval_s` instead: only
    during a cold start, so the control plane sees the faster polls for a few seconds.
    """

    def __init__(
        self,
        control_plane: str,
        token: str,
        interval_s: float = 0.5,
        client: httpx.AsyncClient | None = None,
        hurry_interval_s: float = 0.05,
        min_refresh_s: float = 0.1,
    ) -> None:
        self._url = control_plane.rstrip("/") + ROUTES_PATH
        self._headers = {"Authorization": f"Bearer {token}"}
        self._interval_s = interval_s
        self._hurry_interval_s = min(hurry_interval_s, interval_s)
        self._min_refresh_s = min_refresh_s
        self._client = client
        self._waiting: Callable[[], bool] = _never
        self._wake: asyncio.Event | None = None
        self._started = 0  # fetches begun
        self._done = 0  # fetches finished (applied, unchanged, or failed)
        self._last_start = float("-inf")  # loop time of the last fetch's start
        self._fetched = asyncio.Event()  # set (and replaced) as each fetch finishes
        self._refresh_wanted = False  # someone awaits `refresh`

    def hurry(self, waiting: Callable[[], bool]) -> None:
        """Poll at once, then every `hurry_interval_s` while `waiting()` (on the loop)."""
        self._waiting = waiting
        if self._wake is not None:
            self._wake.set()

    async def refresh(self, timeout_s: float) -> None:
        """Wait for a fetch that starts after this call (at most `timeout_s`).

        The poll loop is woken to fetch at once, but never sooner than `min_refresh_s`
        after its last fetch began: however many callers wait, they share one fetch.
        """
        wake = self._wake
        if wake is None:
            return
        target = self._started + 1
        self._refresh_wanted = True
        wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._done < target:
                    await self._fetched.wait()

    async def run(self, apply: Apply) -> None:
        client = self._client or httpx.AsyncClient(timeout=5.0)
        self._wake = asyncio.Event()
        self._fetched = asyncio.Event()  # bound to the serving loop
        loop = asyncio.get_running_loop()
        version: int | None = None
        try:
            while True:
                self._started += 1
                self._last_start = loop.time()
                table = await self._fetch(client)
                if table is not None and table.version != version:
                    version = table.version
                    apply(table)
                self._done = self._started
                fetched, self._fetched = self._fetched, asyncio.Event()
                fetched.set()
                await self._pause(self._wake)
        finally:
            self._wake = None
            if self._client is None:
                await client.aclose()

    async def _pause(self, wake: asyncio.Event) -> None:
        """Until the next fetch: the poll interval (shorter while hurried), cut short by
        `hurry` at once and by `refresh` once `min_refresh_s` has passed since the last
        fetch began."""
        hurried = self._waiting()
        if not hurried:
            self._waiting = _never
        wake.clear()
        loop = asyncio.get_running_loop()
        until = loop.time() + (self._hurry_interval_s if hurried else self._interval_s)
        while True:
            if self._refresh_wanted:
                until = min(until, self._last_start + self._min_refresh_s)
            remaining = until - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await wake.wait()
            except TimeoutError:
                break
            wake.clear()
            if not self._refresh_wanted:
                break  # hurry(): fetch now
        self._refresh_wanted = False

    async def _fetch(self, client: httpx.AsyncClient) -> RouteTable | None:
        try:
            response = await client.get(self._url, headers=self._headers)
            response.raise_for_status()
            return RouteTable.model_validate_json(response.content)
        except Exception as exc:  # keep serving with the last table
            logger.warning("cannot fetch routes from %s: %s", self._url, exc)
            return None


def _never() -> bool:
    return False


class HttpReportSink:
    """Posts reports to the control plane, one at a time, with a short timeout."""

    def __init__(
        self, control_plane: str, token: str, client: httpx.AsyncClient | None = None
    ) -> None:
        self._url = control_plane.rstrip("/") + REPORT_PATH
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._client = client or httpx.AsyncClient(timeout=2.0)

    async def send(self, report: GatewayReport) -> None:
        response = await self._client.post(
            self._url, content=report.model_dump_json(), headers=self._headers
        )
        response.raise_for_status()

    async def aclose(self) -> None:
        await self._client.aclose()


class MemoryReportSink:
    """Keeps every report; `on_report`, if given, is called with each (on the gateway loop)."""

    def __init__(self, on_report: Callable[[GatewayReport], None] | None = None) -> None:
        self.reports: list[GatewayReport] = []
        self._on_report = on_report

    async def send(self, report: GatewayReport) -> None:
        self.reports.append(report)
        if self._on_report is not None:
            self._on_report(report)
