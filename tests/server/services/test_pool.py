"""Rows to scheduler inputs, in the one place that translates them; and the submit-time
check that reads the pool through the same functions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kaon.core.errors import InvalidSpecError
from kaon.core.jobs import JobSpec
from kaon.core.resources import Resources
from kaon.scheduler import WorkerPlacement
from kaon.server.db.models import Job, Node, Worker
from kaon.server.services import pool
from tests.server.conftest import PlaneFactory

T = datetime(2026, 6, 1, tzinfo=UTC)


def node(gpus: int = 2, model: str = "H100") -> Node:
    return Node(
        id="n1", name="n1", executor="local", address="10.0.0.1", cpu=8.0, memory=64 * 2**30,
        gpus=[{"index": i, "model": model, "memory": 80 * 2**30} for i in range(gpus)],
        labels={"zone": "a"},
    )  # fmt: skip


def worker(index: int, gpus: list[int], cpu: float = 2.0) -> Worker:
    return Worker(
        job_id="j", attempt=1, index=index, node_id="n1", cpu=cpu, memory=2**30, gpus=gpus
    )


class TestTranslation:
    def test_a_node_with_what_live_workers_hold(self) -> None:
        held = pool.held_by([worker(0, [1]), worker(1, [], cpu=1.5)])["n1"]
        capacity = pool.node_capacity(node(), held)
        assert capacity.gpus == (0, 1) and capacity.gpus_free == (0,)
        assert capacity.cpu_free == 4.5 and capacity.memory_free == 62 * 2**30
        assert capacity.gpu_type == "H100" and capacity.labels == (("zone", "a"),)

    def test_mixed_gpu_models_have_no_single_type(self) -> None:
        n = node()
        n.gpus = [{"index": 0, "model": "A100"}, {"index": 1, "model": "H100"}]
        assert pool.node_capacity(n).gpu_type is None

    def test_a_stored_job_is_read_back_through_its_typed_spec(self) -> None:
        """No default is repeated here: memory left out of the spec is JobSpec's default."""
        spec = JobSpec(command=["x"], workers=2, resources=Resources(gpus=1), labels={"z": "a"})
        job = Job(
            id="j-translate", workspace_id="ws", spec={"command": ["x"], "workers": 2,
            "resources": {"gpus": 1}, "labels": {"z": "a"}}, status="running", priority=3,
            submitted_at=T, started_at=T, attained_gpu_seconds=7.0,
        )  # fmt: skip
        w = pool.workload(job, [worker(1, [1]), worker(0, [0])])
        assert (w.workers, w.gpus, w.cpu, w.memory) == (2, 1, spec.resources.cpu, 2**30)
        assert w.placement == (WorkerPlacement("n1", (0,)), WorkerPlacement("n1", (1,)))
        assert w.labels == (("z", "a"),) and w.priority == 3 and w.attained_gpu_s == 7.0
        assert w.started_at == T.timestamp() and w.running


class TestCheckFits:
    async def test_names_what_is_too_big(self, make_plane: PlaneFactory) -> None:
        plane = await make_plane(node_gpus="H100:2")
        async with plane.db.session() as s:
            await pool.check_fits(s, Resources(gpus=2), workers=1)
            with pytest.raises(InvalidSpecError, match="no node has 3 GPUs") as e:
                await pool.check_fits(s, Resources(gpus=3))
            assert e.value.field == "resources.gpus"
            with pytest.raises(InvalidSpecError, match="type A100; they have: H100") as e:
                await pool.check_fits(s, Resources(gpus=1, gpu_type="A100"))
            assert e.value.field == "resources.gpu_type"
            with pytest.raises(InvalidSpecError, match="can never fit") as e:
                await pool.check_fits(s, Resources(gpus=2), workers=2)
            assert e.value.field == "workers"
            with pytest.raises(InvalidSpecError, match=r"no node has 1024 TiB of memory") as e:
                await pool.check_fits(s, Resources(memory=2**50))
            assert e.value.field == "resources.memory"
            with pytest.raises(InvalidSpecError, match="no node has the label zone=b") as e:
                await pool.check_fits(s, Resources(), labels={"zone": "b"})
            assert e.value.field == "labels"
