"""Failed authentication is rate-limited per source address, in the control plane (a real
process, SQLite and PostgreSQL): after `LIMIT` 401s in a window a source gets 429 with
Retry-After for any request under /api/, while another address (127.0.0.2 is loopback
too) is not affected and a good token works from there. The limiter itself is bounded
in memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kaon.core.ratelimit import FailureLimiter
from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import ServerProcess

LIMIT = 5
WHOAMI = "/api/v1/whoami"


@pytest.fixture
def plane(tmp_path: Path, db_url: str) -> Iterator[ServerProcess]:
    env = {"KAON_AUTH_FAILURE_LIMIT": str(LIMIT), "KAON_AUTH_FAILURE_WINDOW_S": "600"}
    server = ServerProcess(tmp_path / "home", db_url, env)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _from(url: str, source: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=url, transport=transport, timeout=30)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_failures_from_one_address_get_429_others_keep_working(plane: ServerProcess) -> None:
    with _from(plane.url, "127.0.0.1") as here, _from(plane.url, "127.0.0.2") as there:
        for _ in range(LIMIT):
            assert here.get(WHOAMI, headers=_bearer("kaon_guess")).status_code == 401
        refused = here.get(WHOAMI, headers=_bearer("kaon_guess"))
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 600
        assert "failed authentications" in refused.json()["detail"]
        # the address is refused whatever it sends now, a good token included
        assert here.get(WHOAMI, headers=_bearer(ADMIN_TOKEN)).status_code == 429
        # routes without a token stay open to it
        assert here.get("/healthz").status_code == 200
        # another address: untouched, with a good token and with a bad one
        assert there.get(WHOAMI, headers=_bearer(ADMIN_TOKEN)).status_code == 200
        assert there.get(WHOAMI, headers=_bearer("kaon_guess")).status_code == 401
    log = (plane.home / "server.log").read_text()
    assert "failed authentications from 127.0.0.1" in log


def test_successes_are_never_counted(plane: ServerProcess) -> None:
    with _from(plane.url, "127.0.0.1") as here:
        for _ in range(3 * LIMIT):
            assert here.get(WHOAMI, headers=_bearer(ADMIN_TOKEN)).status_code == 200
        for _ in range(LIMIT - 1):
            assert here.get(WHOAMI, headers=_bearer("kaon_guess")).status_code == 401
        assert here.get(WHOAMI, headers=_bearer(ADMIN_TOKEN)).status_code == 200


def test_job_token_failures_are_not_counted(plane: ServerProcess) -> None:
    """A worker of a replaced attempt calling back with its old token is no guesser."""
    with _from(plane.url, "127.0.0.1") as here:
        for _ in range(2 * LIMIT):
            stale = here.get("/api/v1/jobs/j-000000000000/code", headers=_bearer("kjob_old"))
            assert stale.status_code == 401, stale.text
        assert here.get(WHOAMI, headers=_bearer(ADMIN_TOKEN)).status_code == 200


class TestLimiter:
    def test_a_window_ends_and_the_source_is_heard_again(self) -> None:
        limiter = FailureLimiter(limit=2, window_s=10)
        assert limiter.retry_after("a", 0) is None
        assert not limiter.failed("a", 0)
        assert limiter.failed("a", 1)  # the second reaches the limit: logged once
        assert limiter.retry_after("a", 2) == 8
        assert limiter.retry_after("b", 2) is None
        assert limiter.retry_after("a", 10) is None
        assert len(limiter) == 0  # forgotten with its window

    def test_memory_is_bounded_by_max_sources(self) -> None:
        limiter = FailureLimiter(limit=1, window_s=60, max_sources=100)
        for i in range(10_000):
            limiter.failed(f"10.0.{i // 256}.{i % 256}", 0)
        assert len(limiter) == 100
        assert limiter.retry_after("10.0.39.15", 1) is not None  # the newest are kept
        assert limiter.retry_after("10.0.0.0", 1) is None  # the oldest forgotten
