"""The deployment reconciler, one `run_once()` pass at a time on a real database, with a
real HTTP health check and a clock the test moves. Above all: what lives only in memory
(the gateways' load reports, the autoscaler's state) may be lost in a restart without
scaling a busy deployment down or a warming one to zero."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select, update

from kaon.autoscaling import LoadBoard
from kaon.core.deployments import DeploymentSpec, ScalingPolicy
from kaon.core.gateway import DeploymentLoad, GatewayReport
from kaon.core.jobs import JobStatus
from kaon.core.replicas import ReplicaStatus
from kaon.server.context import ControlPlane
from kaon.server.db.models import Deployment, Job, Replica, Worker
from kaon.server.reconcilers.deployments import DeploymentReconciler
from kaon.server.services import deployments
from kaon.server.wake import Wake
from tests.server.conftest import PlaneFactory, admin

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def ready_port() -> Iterator[int]:
    """A replica's health check: answers 200 on /ready."""

    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ready" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


async def create(plane: ControlPlane, policy: ScalingPolicy) -> None:
    spec = DeploymentSpec(name="clf", service="app:Model", autoscaling=policy)
    async with plane.db.unit_of_work() as s:
        await deployments.create(
            s, await admin(plane), "default", spec, plane.executor.checkpoint_dir, Wake()
        )


async def run_replicas(plane: ControlPlane, port: int) -> None:
    """Stand in for the job reconciler: every queued replica job runs, listening on
    `port` (where the health check answers)."""
    async with plane.db.session() as s:
        queued = (
            await s.execute(
                select(Job).where(Job.kind == "replica", Job.status == JobStatus.QUEUED.value)
            )
        ).scalars()
        for job in list(queued):
            job.status = JobStatus.RUNNING.value
            job.attempt = 1
            s.add(Worker(job_id=job.id, attempt=1, index=0, node_id="local", cpu=1.0,
                         memory=2**30, gpus=[], port=port, handle=f"{job.id}/1/0"))  # fmt: skip


async def replicas(plane: ControlPlane) -> dict[ReplicaStatus, int]:
    async with plane.db.session() as s:
        states = (await s.execute(select(Replica.state))).scalars()
        counts: dict[ReplicaStatus, int] = {}
        for state in states:
            counts[ReplicaStatus(state)] = counts.get(ReplicaStatus(state), 0) + 1
        return counts


async def desired(plane: ControlPlane) -> int:
    async with plane.db.session() as s:
        return int(await s.scalar(select(Deployment.desired_replicas)) or 0)


def report(in_flight: int) -> GatewayReport:
    load = DeploymentLoad(
        name="clf", workspace="default", in_flight=in_flight, queued=0, requests_per_s=1.0
    )
    return GatewayReport(gateway_id="gw", time=0.0, window_s=1.0, deployments=[load])


def reconciler(plane: ControlPlane, board: LoadBoard, clock: Clock) -> DeploymentReconciler:
    """A fresh reconciler is what a restarted control plane has: empty memory."""
    return DeploymentReconciler(plane.db, board, lambda: None, clock=clock, drain_s=0)


POLICY = ScalingPolicy(
    min_replicas=0, max_replicas=4, target_in_flight=1, scale_up_delay_s=0,
    scale_down_delay_s=10, scale_to_zero_after_s=30,
)  # fmt: skip


class TestRestart:
    async def test_a_busy_deployment_keeps_its_replicas_across_a_restart(
        self, make_plane: PlaneFactory, ready_port: int
    ) -> None:
        plane = await make_plane()
        await create(plane, POLICY)
        clock, board = Clock(), LoadBoard()
        before = reconciler(plane, board, clock)
        board.record(report(in_flight=3), clock().timestamp())
        for _ in range(3):  # scale up to 3, start them, see them ready
            await before.run_once()
            await run_replicas(plane, ready_port)
            clock.advance(1)
            board.record(report(in_flight=3), clock().timestamp())
        assert await desired(plane) == 3
        assert (await replicas(plane)).get(ReplicaStatus.READY) == 3

        # The control plane restarts: no load reports and no autoscaler state survive.
        after, fresh = reconciler(plane, LoadBoard(), clock), LoadBoard()
        after.loads = fresh
        await after.run_once()  # before any gateway has reported again
        assert await desired(plane) == 3
        for _ in range(60):  # a minute of the same load, reported every second again
            clock.advance(1)
            fresh.record(report(in_flight=3), clock().timestamp())
            await after.run_once()
            assert await desired(plane) == 3
        assert (await replicas(plane)).get(ReplicaStatus.READY) == 3

    async def test_a_restart_never_scales_to_zero_sooner_than_the_idle_window(
        self, make_plane: PlaneFactory, ready_port: int
    ) -> None:
        plane = await make_plane()
        await create(plane, POLICY)
        clock = Clock()
        before = reconciler(plane, LoadBoard(), clock)
        await before.run_once()
        await run_replicas(plane, ready_port)
        await before.run_once()
        assert await replicas(plane) == {ReplicaStatus.READY: 1}
        clock.advance(25)  # idle for 25 of the 30 s, then the control plane restarts
        after = reconciler(plane, LoadBoard(), clock)
        await after.run_once()
        assert await desired(plane) == 1
        for _ in range(29):  # the idle clock starts over at the restart
            clock.advance(1)
            await after.run_once()
            assert await desired(plane) == 1
        clock.advance(1.5)
        await after.run_once()
        assert await desired(plane) == 0

    async def test_a_warming_replica_is_not_scaled_to_zero_after_a_restart(
        self, make_plane: PlaneFactory
    ) -> None:
        plane = await make_plane()
        await create(plane, POLICY.model_copy(update={"scale_to_zero_after_s": 5}))
        clock = Clock()
        await reconciler(plane, LoadBoard(), clock).run_once()  # one replica, starting
        after = reconciler(plane, LoadBoard(), clock)
        for _ in range(12):  # a slow start (loading a model), across the restart
            clock.advance(5)
            await after.run_once()
            assert await desired(plane) == 1
            assert await replicas(plane) == {ReplicaStatus.STARTING: 1}


class TestReplicaLifecycle:
    async def test_ready_then_crashed_then_replaced_after_back_off(
        self, make_plane: PlaneFactory, ready_port: int
    ) -> None:
        plane = await make_plane()
        await create(plane, POLICY.model_copy(update={"min_replicas": 1}))
        clock = Clock()
        r = reconciler(plane, LoadBoard(), clock)
        await r.run_once()
        await run_replicas(plane, ready_port)
        await r.run_once()
        assert await replicas(plane) == {ReplicaStatus.READY: 1}
        async with plane.db.session() as s:  # its process exits on its own
            await s.execute(
                update(Job).where(Job.kind == "replica").values(status=JobStatus.FAILED.value)
            )
        await r.run_once()
        assert await replicas(plane) == {ReplicaStatus.FAILED: 1}  # no new one before 1 s
        clock.advance(1.1)
        await r.run_once()
        assert await replicas(plane) == {ReplicaStatus.FAILED: 1, ReplicaStatus.STARTING: 1}
