"""Kaon across real network hops: three test hosts (Linux network namespaces on a bridge),
a Ray head on one and Ray workers on two, the control plane in the root namespace
reaching them over those addresses only (it joins the cluster as a node with nothing to
offer, as it would from a machine of its own).

- A DDP job (gloo) of two workers on each of two hosts ends with identical weights on all
  four ranks.
- A replica on a remote host answers through the gateway.
- A host that dies mid-job (every process in it killed, as when a machine goes) leaves its
  job to resume on the other host from its last mirrored checkpoint.

Needs root (CI runs as root); skipped elsewhere, failed under CI=true if it cannot run.
Hosts, processes and links are torn down at the end, even on failure.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from tests.e2e.conftest import Gateway, ServerProcess
from tests.e2e.kaon_on_ray import RAY, ray_server, until, wait_done
from tests.e2e.test_ddp import TRAIN
from tests.e2e.test_ray_pool import RESUMABLE
from tests.ray_clusters import Hosts, netns_hosts

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow]
torch = pytest.importorskip("torch")

TRAIN4 = TRAIN.replace("== 2", "== 4")


@dataclass
class Setup:
    hosts: Hosts
    server: ServerProcess
    client: Client


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with netns_hosts(3) as hosts:
        head = hosts.ray_head(0)
        for i in (1, 2):
            hosts.ray_worker(i, head.gcs_address, num_cpus=2, labels={"host": f"h{i}"})
        home = hosts.new_temp_dir("cp")  # short: Ray's socket paths live under it
        server = ray_server(
            home,
            head.gcs_address,
            hosts.new_temp_dir("nodes"),
            nodes=2,
            # the hosts reach it at the bridge address, on a test network of their own
            extra_env={"KAON_HOST": "0.0.0.0", "KAON_INSECURE": "1"},
        )
        try:
            with server.client() as client:
                yield Setup(hosts, server, client)
        finally:
            server.kill(signal.SIGTERM)  # before the hosts go


def test_the_pool_sees_the_hosts_at_their_addresses(setup: Setup) -> None:
    nodes = {n.labels.get("host"): n for n in setup.client.nodes.list() if n.executor == "ray"}
    assert nodes["h1"].address == setup.hosts.ip(1) and nodes["h2"].address == setup.hosts.ip(2)


def test_ddp_across_two_hosts_ends_with_identical_weights(setup: Setup, tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAIN4)
    job = setup.client.jobs.submit(
        ["python", "train.py"], workdir=tmp_path, workers=4, cpu=1, memory="1Gi", labels=RAY
    )
    done = wait_done(setup.client, job, timeout=240)
    hosts = {w.node for w in done.workers}
    assert len(hosts) == 2  # two workers a host
    for rank in range(4):
        assert f"rank {rank} done" in setup.client.jobs.logs(job.id, worker=rank)
    folder = setup.server.home / "checkpoints" / job.id  # mirrored back from the hosts
    weights = [torch.load(folder / f"rank{r}.pt") for r in range(4)]
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])


def test_a_replica_on_a_remote_host_answers_through_the_gateway(setup: Setup) -> None:
    folder = Path(__file__).parent.parent / "serving"
    setup.client.deployments.create(
        "remote", path=folder, service="services:Classifier", spec={"public": True}
    )
    ready = setup.client.deployments.wait_ready("remote", timeout=180)
    url = ready.replicas[0].url or ""
    assert any(url.startswith(f"http://{setup.hosts.ip(i)}:") for i in (1, 2)), url
    gateway = Gateway(setup.server.running())
    try:
        answer = gateway.call("remote", "predict", None, [[1.0, 2.0]])
        assert answer.status_code == 200 and answer.json() == [4.0], answer.text
    finally:
        gateway.close()
        setup.client.deployments.delete("remote")


def test_a_host_that_dies_mid_job_leaves_it_to_resume_on_the_other(setup: Setup) -> None:
    client = setup.client
    job = client.jobs.submit([sys.executable, "-c", RESUMABLE], cpu=2, labels=RAY)
    until(lambda: "saved 140" in client.jobs.logs(job.id), "progress past a few checkpoints")
    node = client.jobs.get(job.id).workers[0].node
    label = next(n.labels["host"] for n in client.nodes.list() if n.id == node)
    setup.hosts.kill_host(int(label[1:]))  # the machine goes, and the worker with it
    done = wait_done(client, job, timeout=180)
    assert done.status is JobStatus.SUCCEEDED and done.preemptions == 1
    assert done.workers[0].node != node
    log = client.jobs.logs(job.id)
    assert log.startswith("restart 1 from ") and int(log.split()[3]) >= 80, log[:200]
