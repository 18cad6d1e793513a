"""Kaon on a Ray cluster: several Ray nodes on this machine (``ray.cluster_utils``), the
control plane as a real process attached to them as pool ``ray``.

One cluster and one control plane serve the whole module (starting them costs about
20 s); the tests that must kill the control plane or a node bring their own. Work is
pinned to the Ray pool with the label every Ray node carries (``kaon.io/pool: ray``),
since this machine's own node is in the pool too.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from kaon.core.errors import InvalidSpecError
from kaon.core.jobs import JobStatus
from kaon.core.pools import PoolState
from kaon.sdk.client import Client
from tests.e2e.conftest import Gateway, ServerProcess
from tests.e2e.kaon_on_ray import RAY, ray_server, until, wait_done
from tests.ray_clusters import LocalCluster, NodeSpec, local_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

GIB = 2**30


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    nodes = [
        NodeSpec(num_cpus=2, memory=2 * GIB, labels={"zone": "a"}),
        NodeSpec(num_cpus=2, num_gpus=2, memory=2 * GIB, labels={"zone": "b"}),
    ]
    with local_cluster(nodes) as running:
        yield running


@pytest.fixture(scope="module")
def server(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("ray-server") / "home"
    process = ray_server(home, cluster.address, cluster.temp_dir / "kaon-nodes", nodes=2)
    yield process
    if process.proc is not None:
        process.kill(signal.SIGTERM)  # before the cluster goes: a driver must not outlive it


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with server.client() as c:
        yield c


class TestPool:
    def test_ray_nodes_join_the_pool_with_their_labels(self, client: Client) -> None:
        pools = {p.name: p for p in client.pools.list()}
        assert pools["ray"].state is PoolState.READY and pools["ray"].nodes == 2
        assert pools["ray"].cpu == 4 and pools["ray"].gpus == 2 and not pools["ray"].elastic
        assert pools["local"].nodes == 1
        nodes = [n for n in client.nodes.list() if n.executor == "ray"]
        assert sorted(n.labels["zone"] for n in nodes) == ["a", "b"]
        assert all(n.state == "ready" and n.labels["kaon.io/pool"] == "ray" for n in nodes)
        assert all(n.memory == 2 * GIB and n.cpu == 2 for n in nodes)

    def test_an_unreachable_address_is_one_clear_line(self, client: Client) -> None:
        with pytest.raises(
            InvalidSpecError, match="cannot reach a Ray cluster at 127.0.0.1:1"
        ) as e:
            client.pools.add("nowhere", "127.0.0.1:1")
        assert e.value.field == "address"


SHOW = "import os; e = os.environ; print(e['RANK'], e['NODE_RANK'], e['LOCAL_RANK'], e['WORLD_SIZE'], e['MASTER_ADDR'], e['MASTER_PORT'], e['KAON_NODE_ADDRESS'], e['CUDA_VISIBLE_DEVICES'] or '-', open('data.txt').read().strip())"  # noqa: E501


class TestJobs:
    def test_a_gang_spans_two_ray_nodes_with_the_code_it_was_given(
        self, client: Client, tmp_path: Path
    ) -> None:
        (tmp_path / "data.txt").write_text("from the snapshot\n")
        job = client.jobs.submit(
            [sys.executable, "-c", SHOW], workdir=tmp_path, workers=2, cpu=2, labels=RAY
        )
        done = wait_done(client, job)
        assert len({w.node for w in done.workers}) == 2  # 2 CPUs each: one worker a node
        lines = [client.jobs.logs(job.id, worker=i).split() for i in range(2)]
        master = {line[4:6][0] for line in lines}
        assert len(master) == 1 and lines[0][6] == master.pop()  # worker 0's node is master
        assert [line[:4] for line in lines] == [["0", "0", "0", "2"], ["1", "1", "0", "2"]]
        assert all(" ".join(line[8:]) == "from the snapshot" for line in lines)

    def test_gpus_on_a_ray_node_are_kaons_to_hand_out(self, client: Client) -> None:
        code = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"
        jobs = [
            client.jobs.submit([sys.executable, "-c", code], gpus=1, cpu=0.5, labels=RAY)
            for _ in range(2)
        ]
        seen = sorted(client.jobs.logs(wait_done(client, j).id).strip() for j in jobs)
        assert seen in (["0", "1"], ["0", "0"], ["1", "1"])  # one GPU each, never "0,1"

    def test_logs_follow_and_metrics_come_back_live(self, client: Client) -> None:
        code = textwrap.dedent(
            """
            import time, kaon
            for step in range(5):
                print(f"step {step}", flush=True)
                kaon.report(step=step, loss=1.0 / (step + 1))
                time.sleep(0.2)
            """
        )
        job = client.jobs.submit([sys.executable, "-c", code], labels=RAY, cpu=1)
        followed = "".join(client.jobs.follow(job.id))
        assert [f"step {i}" for i in range(5)] == followed.split("\n")[:5]
        wait_done(client, job)
        losses = [m.value for m in client.jobs.metrics(job.id, name="loss")]
        assert losses == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])

    def test_cancel_stops_the_worker_on_its_node(self, client: Client) -> None:
        job = client.jobs.submit(
            [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"],
            labels=RAY,
            cpu=1,
        )
        until(lambda: "up" in client.jobs.logs(job.id), "the worker to run")
        pid = client.jobs.get(job.id).workers[0].pid
        assert pid is not None and psutil.pid_exists(pid)
        client.jobs.cancel(job.id)
        assert client.jobs.wait(job.id, timeout=60).status is JobStatus.CANCELLED
        until(lambda: not _running(pid), "the supervisor to be gone", timeout=30)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class TestDeployments:
    def test_a_replica_on_a_ray_node_answers_through_the_gateway(
        self, server: ServerProcess, client: Client
    ) -> None:
        folder = Path(__file__).parent.parent / "serving"
        view = client.deployments.create(
            "ray-echo",
            path=folder,
            service="services:Classifier",
            spec={"resources": {"cpu": 1}, "public": True},
        )
        assert view.name == "ray-echo"
        ready = client.deployments.wait_ready("ray-echo", timeout=120)
        replica = ready.replicas[0]
        nodes = {n.id: n for n in client.nodes.list()}
        job = client.jobs.get(replica.job_id)
        assert nodes[job.workers[0].node].executor == "ray"
        assert replica.url is not None and replica.url.startswith(
            f"http://{nodes[job.workers[0].node].address}:"
        )
        gateway = Gateway(server.running())
        try:
            answer = gateway.call("ray-echo", "predict", None, [[1.0, 2.0]])
            assert answer.status_code == 200, answer.text
            assert answer.json() == [4.0]
        finally:
            gateway.close()
            client.deployments.delete("ray-echo")


class TestCheckpoints:
    def test_a_checkpoint_written_as_the_job_ends_reaches_the_control_plane(
        self, server: ServerProcess, client: Client
    ) -> None:
        """The last push happens when the worker ends (no periodic push has a chance
        here); launch files hold no token, so the agent keeps the attempt's own."""
        code = (
            "import os; p = os.path.join(os.environ['KAON_CHECKPOINT_DIR'], 'final.txt'); "
            "open(p, 'w').write('trained')"
        )
        job = client.jobs.submit([sys.executable, "-c", code], cpu=1, labels=RAY)
        done = wait_done(client, job)
        assert done.status is JobStatus.SUCCEEDED
        assert client.nodes.list() and done.workers[0].node.startswith("ray-")
        kept = server.home / "checkpoints" / job.id / "final.txt"
        assert kept.read_text() == "trained"


RESUMABLE = textwrap.dedent(
    """
    import json, os, sys, time
    folder = os.environ["KAON_CHECKPOINT_DIR"]
    saved = sorted(int(n[5:-5]) for n in os.listdir(folder) if n.startswith("step-"))
    step = saved[-1] if saved else 0
    print(f"restart {os.environ['KAON_RESTART_COUNT']} from {step}", flush=True)
    while step < 300:
        step += 1
        time.sleep(0.05)
        if step % 20 == 0:  # a checkpoint a second, written whole or not at all
            tmp = os.path.join(folder, f".tmp-{step}")
            with open(tmp, "w") as f:
                json.dump({"step": step}, f)
            os.replace(tmp, os.path.join(folder, f"step-{step:05d}.json"))
            print(f"saved {step}", flush=True)
    print("done", flush=True)
    """
)


def _hold(flag: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.05)",
    ]


class TestFailures:
    def test_a_node_that_dies_mid_job_and_the_job_resumes_on_another(
        self, cluster: LocalCluster, client: Client, tmp_path: Path
    ) -> None:
        spare = cluster.add_node(NodeSpec(num_cpus=2, memory=2 * GIB, labels={"zone": "c"}))
        until(
            lambda: (
                sum(n.executor == "ray" and n.state == "ready" for n in client.nodes.list()) == 3
            ),
            "the third node",
        )
        flag = tmp_path / "release"
        holds = [  # the first two nodes are busy, so the job goes to the new one
            client.jobs.submit(_hold(flag), cpu=2, labels={**RAY, "zone": zone})
            for zone in ("a", "b")
        ]
        until(
            lambda: all(client.jobs.get(h.id).status is JobStatus.RUNNING for h in holds),
            "the holds",
        )
        job = client.jobs.submit([sys.executable, "-c", RESUMABLE], cpu=2, labels=RAY)
        until(lambda: "saved 160" in client.jobs.logs(job.id), "progress past a few checkpoints")
        node = client.jobs.get(job.id).workers[0].node
        assert (
            client.nodes.list()
            and next(n for n in client.nodes.list() if n.id == node).labels["zone"] == "c"
        )
        pid = client.jobs.get(job.id).workers[0].pid
        flag.touch()  # free the other nodes, then the job's node dies
        for hold in holds:
            wait_done(client, hold)
        cluster.remove_node(spare, graceful=False)
        assert pid is not None
        until(lambda: not _running(pid), "the worker to stop with its node", timeout=15)
        done = wait_done(client, job, timeout=120)
        assert done.restart_count == 1 and done.preemptions == 1  # lost, not failed
        log = client.jobs.logs(job.id)
        resumed = int(log.split("\n")[0].split()[3])
        # From the last checkpoint mirrored before the node died (pushed every 2 s).
        assert log.startswith("restart 1 from ") and resumed >= 100, log[:200]
        assert done.workers[0].node != node and log.rstrip().endswith("done")

    def test_the_control_plane_killed_adopts_its_ray_workers_on_restart(
        self, server: ServerProcess, client: Client, tmp_path: Path
    ) -> None:
        flag = tmp_path / "release"
        code = f"import os, time\nprint('up', flush=True)\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.05)\nprint('released', flush=True)"  # noqa: E501
        job = client.jobs.submit([sys.executable, "-c", code], cpu=1, labels=RAY)
        until(lambda: "up" in client.jobs.logs(job.id), "the worker to run")
        before = client.jobs.get(job.id).workers[0].pid
        server.kill(signal.SIGKILL)
        server.start()
        with server.client() as again:
            until(
                lambda: again.pools.get("ray").state is PoolState.READY,
                "the pool again",
                timeout=120,
            )
            view = again.jobs.get(job.id)
            assert view.status is JobStatus.RUNNING and view.workers[0].pid == before
            flag.touch()
            assert again.jobs.wait(job.id, timeout=60).status is JobStatus.SUCCEEDED
            assert "released" in again.jobs.logs(job.id)  # the same process, not a new one

    def test_a_node_without_kaon_shows_why_it_is_not_ready(
        self, cluster: LocalCluster, client: Client, tmp_path: Path
    ) -> None:
        blocker = tmp_path / "no-kaon"
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(BLOCK_KAON)
        previous = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(blocker)  # the node's Python cannot import kaon
        try:
            bare = cluster.add_node(NodeSpec(num_cpus=1, memory=GIB, labels={"zone": "bare"}))
        finally:
            if previous is None:
                os.environ.pop("PYTHONPATH")
            else:
                os.environ["PYTHONPATH"] = previous

        def shown() -> bool:
            return any(
                n.labels.get("zone") == "bare" and "Kaon is not installed" in n.message
                for n in client.nodes.list()
            )

        until(shown, "the node's reason")
        node = next(n for n in client.nodes.list() if n.labels.get("zone") == "bare")
        assert node.state == "not-ready"
        cluster.remove_node(bare)

    def test_a_cluster_of_another_ray_version_is_refused_with_the_reason(
        self, cluster: LocalCluster, client: Client
    ) -> None:
        from ray._private import ray_constants
        from ray._raylet import GcsClient

        key, space = b"CLUSTER_METADATA", ray_constants.KV_NAMESPACE_CLUSTER
        gcs = GcsClient(address=cluster.address)
        real = gcs.internal_kv_get(key, namespace=space)
        fake = {**json.loads(real), "ray_version": "2.0.0"}
        gcs.internal_kv_put(key, json.dumps(fake).encode(), True, namespace=space)
        try:
            client.pools.add("old", cluster.address)
            until(
                lambda: client.pools.get("old").state is PoolState.ERROR,
                "the pool to fail",
                timeout=90,
            )
            message = client.pools.get("old").message
            assert "another version" in message and "2.0.0" in message
        finally:
            gcs.internal_kv_put(key, real, True, namespace=space)
            client.pools.remove("old")


BLOCK_KAON = '''
import sys


class NoKaon:
    """This node's Python has no kaon (as on a node where it was never installed)."""

    def find_spec(self, name, path=None, target=None):
        if name == "kaon" or name.startswith("kaon."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoKaon())
'''


class TestRemove:
    def test_removing_a_pool_with_work_is_refused_then_drained_with_force(
        self, cluster: LocalCluster, client: Client
    ) -> None:
        from kaon.core.errors import ConflictError

        client.pools.add("spare", cluster.address)  # the same machines, as a second pool
        until(lambda: client.pools.get("spare").nodes == 2, "the second pool", timeout=120)
        job = client.jobs.submit(
            [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"],
            cpu=0.5,
            labels={"kaon.io/pool": "spare"},
        )
        until(lambda: "up" in client.jobs.logs(job.id), "the worker on the pool")
        with pytest.raises(ConflictError, match="worker\\(s\\) run on pool 'spare'"):
            client.pools.remove("spare")
        client.pools.remove("spare", force=True)
        until(lambda: "spare" not in [p.name for p in client.pools.list()], "the pool to go")
        view = client.jobs.get(job.id)
        assert view.status is JobStatus.QUEUED and view.preemptions == 1  # nowhere to go
        assert all(n.state == "removed" for n in client.nodes.list() if n.executor == "spare")
        client.jobs.cancel(job.id)
