"""What an elastic pool's autoscaler is asked for: what runs there, and what waits only
for capacity; never work a quota refuses."""

from __future__ import annotations

from dataclasses import replace

from kaon.scheduler import NodeCapacity, PoolState, Quota, Workload, capacity_demand, schedule

from .factories import job, node

G = 2**30


def pool(
    *nodes: NodeCapacity,
    pending: tuple[Workload, ...] = (),
    running: tuple[Workload, ...] = (),
    quotas: dict[str, Quota] | None = None,
) -> PoolState:
    return PoolState(0.0, tuple(nodes), pending, running, quotas or {})


class TestCapacityDemand:
    def test_running_work_and_work_short_of_capacity(self) -> None:
        ray = replace(node("r1", gpus=2), domain="ray")
        here = replace(node("l1", gpus=0), domain="local")
        running = replace(job("run", gpus=1, on=(("r1", (0,)),)), cpu=1.0, memory=G)
        big = replace(job("big", gpus=4, workers=2), cpu=2.0, memory=2 * G)
        state = pool(ray, here, pending=(big,), running=(running,))
        decisions = schedule(state)
        assert decisions.short_of_capacity == ("big",)
        asked = capacity_demand(state, decisions, "ray")
        assert asked == [
            {"CPU": 1.0, "GPU": 1.0},
            {"CPU": 2.0, "GPU": 4.0},
            {"CPU": 2.0, "GPU": 4.0},
        ]
        assert capacity_demand(state, decisions, "local") == asked[1:]  # nothing runs there

    def test_a_gpu_model_asks_for_nodes_of_that_model(self) -> None:
        state = pool(
            replace(node("r1", gpus=0), domain="ray"),
            pending=(replace(job("h", gpus=1), gpu_type="H100"),),
        )
        asked = capacity_demand(state, schedule(state), "ray")
        assert asked[0]["accelerator_type:H100"] > 0 and asked[0]["GPU"] == 1.0

    def test_work_its_quota_refuses_does_not_grow_the_pool(self) -> None:
        state = pool(
            replace(node("r1", gpus=1), domain="ray"),
            pending=(job("over", gpus=4, ws="a"),),
            quotas={"a": Quota(gpus=2, borrow_gpus=0)},
        )
        decisions = schedule(state)
        assert "over" in decisions.waiting and decisions.short_of_capacity == ()
        assert capacity_demand(state, decisions, "ray") == []

    def test_an_idle_pool_asks_for_nothing(self) -> None:
        state = pool(replace(node("r1"), domain="ray"))
        assert capacity_demand(state, schedule(state), "ray") == []

    def test_work_placed_in_this_pass_keeps_asking_for_its_node(self) -> None:
        """The node that came up for a job must not look idle before the job starts."""
        ray = replace(node("r1", gpus=0, cpu=2.0), domain="ray")
        state = pool(ray, pending=(replace(job("j", gpus=0), cpu=2.0),))
        decisions = schedule(state)
        assert [p.workload_id for p in decisions.placements] == ["j"]
        assert capacity_demand(state, decisions, "ray") == [{"CPU": 2.0}]
