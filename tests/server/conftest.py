"""The control plane's parts without its loops: tests step a reconciler with `run_once()`
on a real database (SQLite and PostgreSQL) and, where it launches work, real processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from kaon.core.jobs import JobSpec, JobView
from kaon.server.app import build_plane, start_plane
from kaon.server.context import ControlPlane
from kaon.server.security.principal import Principal, authenticate
from kaon.server.services import jobs
from kaon.server.wake import Wake
from tests.conftest import ADMIN_TOKEN, kill_workers, test_settings

PlaneFactory = Callable[..., Awaitable[ControlPlane]]


@pytest.fixture
async def make_plane(tmp_path: Path, db_url: str) -> AsyncIterator[PlaneFactory]:
    """Builds and starts a control plane (migrated, admin token, nodes registered) whose
    reconcilers run only when a test steps them. Keyword arguments override settings."""
    planes: list[ControlPlane] = []

    async def make(**overrides: object) -> ControlPlane:
        home = tmp_path / f"home{len(planes)}"
        plane = build_plane(test_settings(home, db_url, **overrides))
        await start_plane(plane)
        planes.append(plane)
        return plane

    yield make
    for plane in planes:
        await plane.db.dispose()
        kill_workers(plane.settings.home)


async def admin(plane: ControlPlane) -> Principal:
    async with plane.db.unit_of_work() as s:
        return await authenticate(s, ADMIN_TOKEN)


async def submit(plane: ControlPlane, spec: JobSpec) -> JobView:
    caller = await admin(plane)
    async with plane.db.unit_of_work() as s:
        return await jobs.submit(s, caller, "default", spec, Wake())


async def view(plane: ControlPlane, job_id: str) -> JobView:
    caller = await admin(plane)
    async with plane.db.unit_of_work() as s:
        return await jobs.get(s, caller, "default", job_id)


async def step_until(
    plane: ControlPlane,
    check: Callable[[], Awaitable[bool]],
    what: str,
    within_s: float = 60,
) -> None:
    """Step the job reconciler until `check` holds: for waits on real processes (a worker
    that must exit), never for asserting that something did not happen."""
    deadline = time.monotonic() + within_s
    while True:
        await plane.jobs.run_once()
        if await check():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
