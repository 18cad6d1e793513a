"""A Kaon control plane, as a real process, attached to a test Ray cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kaon.core.jobs import JobStatus, JobView
from kaon.core.pools import PoolState
from kaon.sdk.client import Client
from tests.conftest import normalize_database_url
from tests.e2e.conftest import ServerProcess

RAY = {"kaon.io/pool": "ray"}
"""Labels that pin work to the Ray pool (every Ray node carries it; this machine's node
does not)."""


def until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def ray_server(
    home: Path,
    address: str,
    node_dir: Path,
    nodes: int,
    extra_env: dict[str, str] | None = None,
) -> ServerProcess:
    """A control plane attached to the Ray cluster at `address` as pool ``ray``, started
    and connected (with at least `nodes` Ray nodes ready). Its own node is tiny, so
    replicas and jobs that need a whole CPU go to the Ray nodes."""
    env = {
        "KAON_RAY_ADDRESS": address,
        "KAON_RAY_NODE_DIR": str(node_dir),
        "KAON_NODE_CPUS": "0.5",
        "KAON_NODE_MEMORY": "1Gi",
        **(extra_env or {}),
    }
    server = ServerProcess(home, normalize_database_url(str(home / "kaon.db")), env)
    server.start()
    client = server.client()

    def connected() -> bool:
        view = client.pools.get("ray")
        assert view.state is not PoolState.ERROR, view.message
        return view.state is PoolState.READY and view.nodes >= nodes

    until(connected, "the Ray pool to connect", timeout=120)
    return server


def wait_done(client: Client, job: JobView, timeout: float = 90) -> JobView:
    done = client.jobs.wait(job.id, timeout=timeout)
    assert done.status is JobStatus.SUCCEEDED, (done.message, client.jobs.logs(job.id))
    return done
