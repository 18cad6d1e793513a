"""The elastic pool: a Ray cluster whose autoscaler (Ray's own, with its fake multi-node
provider) starts with no worker node. A job that fits no node makes Kaon ask the
autoscaler for exactly its shape; a node appears, the job runs there, and once nothing
waits the idle node goes."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from tests.e2e.conftest import ServerProcess
from tests.e2e.kaon_on_ray import RAY, ray_server, until, wait_done
from tests.ray_clusters import AutoscalingHead, NodeTypeSpec, autoscaling_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

IDLE_S = 3.0


@pytest.fixture
def head() -> Iterator[AutoscalingHead]:
    types = {"cpu2": NodeTypeSpec(num_cpus=2, max_workers=2, labels={"kind": "cpu2"})}
    with autoscaling_cluster(types, idle_timeout_s=IDLE_S, max_workers=2) as running:
        yield running


@pytest.fixture
def server(head: AutoscalingHead, tmp_path: Path) -> Iterator[ServerProcess]:
    process = ray_server(tmp_path / "home", head.address, head.temp_dir / "kaon-nodes", nodes=0)
    yield process
    if process.proc is not None:
        process.kill(signal.SIGTERM)  # before the cluster goes


def ray_nodes(client: Client) -> list[str]:
    return [n.id for n in client.nodes.list() if n.executor == "ray" and n.state == "ready"]


def test_a_job_that_fits_no_node_grows_the_pool_and_the_idle_node_goes(
    head: AutoscalingHead, server: ServerProcess
) -> None:
    client = server.client()
    until(lambda: client.pools.get("ray").elastic, "the pool to know it can grow")
    assert ray_nodes(client) == []
    started = time.monotonic()
    job = client.jobs.submit(
        [sys.executable, "-c", "print('on a new node')"], cpu=2, labels=RAY
    )  # no node fits it yet: it is accepted and waits, not refused
    waiting = client.jobs.get(job.id)
    assert waiting.status is JobStatus.QUEUED
    until(
        lambda: (
            "asked the autoscaler of pool ray" in (client.jobs.get(job.id).waiting_reason or "")
        ),
        "the reason",
    )
    done = wait_done(client, job, timeout=120)
    grew_in = time.monotonic() - started
    node = done.workers[0].node
    assert node in [n.id for n in client.nodes.list() if n.labels.get("kind") == "cpu2"]
    assert client.jobs.logs(job.id).strip() == "on a new node"
    # Nothing waits any more: the request is withdrawn and the idle node goes.
    until(lambda: ray_nodes(client) == [], "the idle node to go", timeout=60)
    assert head.worker_node_ids() == []
    # Its log outlives it: the control plane kept a copy when the worker ended.
    assert client.jobs.logs(job.id).strip() == "on a new node"
    assert grew_in < 120
