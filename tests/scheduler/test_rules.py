"""Every policy rule on a hand-made pool: one table row, one decision."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kaon.scheduler import (
    Decisions,
    EasyPolicy,
    KaonPolicy,
    LasPolicy,
    Quota,
    fits_anywhere,
    schedule,
)
from kaon.scheduler.capacity import FreeIndex, place_gang

from .factories import job, node, nodes_of, snap


def placed(d: Decisions) -> dict[str, list[str]]:
    return {p.workload_id: nodes_of(p.workers) for p in d.placements}


def preempted(d: Decisions) -> list[str]:
    return sorted(p.workload_id for p in d.preemptions)


class TestPlacement:
    @pytest.mark.parametrize(
        ("free", "gpus", "workers", "expected"),
        [
            # one node first: a 4-GPU job fits on n2 alone, not split over n1 and n3
            ((2, 4, 2), 4, 1, ["n2"]),
            # best fit: the 2-GPU job goes on the fullest node that still fits it
            ((8, 2, 4), 2, 1, ["n2"]),
            # fewest nodes: 4 workers x 4 GPUs take the two whole free nodes
            ((8, 4, 8, 4), 4, 4, ["n1", "n3"]),
            # a gang bigger than a node spreads over whole nodes
            ((8, 8, 8), 8, 2, ["n1", "n2"]),
        ],
    )
    def test_where_a_gang_lands(
        self, free: tuple[int, ...], gpus: int, workers: int, expected: list[str]
    ) -> None:
        nodes = [node(f"n{i + 1}", free=f) for i, f in enumerate(free)]
        d = schedule(snap(nodes, [job("j", gpus=gpus, workers=workers)]))
        assert placed(d) == {"j": expected}

    def test_placement_names_distinct_free_gpu_indices(self) -> None:
        d = schedule(snap([node("n1", free=5)], [job("j", gpus=2, workers=2)]))
        gpus = [g for wp in d.placements[0].workers for g in wp.gpus]
        assert sorted(gpus) == [3, 4, 5, 6] and len(d.placements[0].workers) == 2

    def test_a_cpu_job_that_does_not_fit_names_cpus_not_gpus(self) -> None:
        cpu_job = replace(job("j", 0), cpu=128.0)
        d = schedule(snap([node("n1", cpu=64.0)], [cpu_job]))
        reason = d.waiting["j"]
        assert "128 CPU" in reason and "64 CPU" in reason and "GPU" not in reason

    def test_gang_is_all_or_nothing(self) -> None:
        d = schedule(snap([node("n1", free=8), node("n2", free=7)], [job("j", 8, workers=2)]))
        assert d.placements == ()
        assert "no fitting node" in d.waiting["j"]

    def test_place_gang_leaves_the_index_untouched_when_it_fails(self) -> None:
        index = FreeIndex((node("n1", free=8), node("n2", free=4)))
        assert place_gang(index, job("j", 8, workers=2)) is None
        assert index.free_gpus == 12 and index.largest_free() == 8

    @pytest.mark.parametrize(("gpus", "workers", "fits"), [(8, 2, True), (8, 3, False)])
    def test_fits_anywhere_looks_at_an_empty_pool(
        self, gpus: int, workers: int, fits: bool
    ) -> None:
        nodes = (node("n1", free=0), node("n2", free=1))
        assert fits_anywhere(nodes, job("j", gpus, workers=workers)) is fits


class TestQuota:
    QUOTAS = {"a": Quota(gpus=4, borrow_gpus=4), "b": Quota(gpus=4)}

    @pytest.mark.parametrize(
        ("gpus", "workers", "outcome"),
        [(4, 1, "placed"), (8, 1, "placed"), (6, 2, "quota: workspace a would use 12 GPUs")],
    )
    def test_borrowing_up_to_the_limit(self, gpus: int, workers: int, outcome: str) -> None:
        nodes = [node("n1", free=8), node("n2", free=8)]
        d = schedule(snap(nodes, [job("j", gpus, workers=workers)], quotas=self.QUOTAS))
        if outcome == "placed":
            assert "j" in placed(d)
        else:
            assert d.waiting["j"].startswith(outcome)

    def test_workspace_without_quota_is_unlimited(self) -> None:
        d = schedule(snap([node("n1")], [job("j", 8, ws="other")], quotas=self.QUOTAS))
        assert placed(d) == {"j": ["n1"]}

    def test_owner_reclaims_borrowed_capacity(self) -> None:
        borrower = job("lent", 8, ws="a", on=(("n1", tuple(range(8))),), started=0.0)
        d = schedule(
            snap(
                [node("n1", free=0)],
                [job("own", 4, ws="b", submitted=5.0)],
                running=[borrower],
                quotas={"a": Quota(gpus=4), "b": Quota(gpus=4)},
                now=10.0,
            )
        )
        assert preempted(d) == ["lent"] and placed(d) == {"own": ["n1"]}
        assert d.preemptions[0].reason.startswith("reclaimed")

    def test_no_reclaim_from_a_workspace_inside_its_quota(self) -> None:
        inside = job("inside", 4, ws="a", on=(("n1", (0, 1, 2, 3)),), started=0.0)
        other = job("other", 4, ws="b", on=(("n1", (4, 5, 6, 7)),), started=0.0)
        d = schedule(
            snap(
                [node("n1", free=0)],
                [job("more", 4, ws="b", submitted=1.0)],
                running=[inside, other],
                quotas={"a": Quota(gpus=4), "b": Quota(gpus=4)},
                now=10_000.0,
            )
        )
        assert d.preemptions == () and "quota" in d.waiting["more"]

    def test_owed_gang_moves_a_small_job_aside_when_no_node_is_all_loans(self) -> None:
        """b is owed a whole node, but each node also hosts one 1-GPU job of c inside c's
        quota. b may move one of those aside (a borrows 12 GPUs that c can reclaim)."""
        loans = [
            job(f"a{n}{g}", 1, ws="a", on=((n, (g,)),), started=0.0)
            for n in ("n1", "n2")
            for g in range(1, 8)
        ]
        small = [job(f"c{n}", 1, ws="c", on=((n, (0,)),), started=0.0) for n in ("n1", "n2")]
        d = schedule(
            snap(
                [node("n1", free=0), node("n2", free=0)],
                [job("own", 8, ws="b", submitted=5.0)],
                running=[*loans, *small],
                quotas={"a": Quota(gpus=2), "b": Quota(gpus=8), "c": Quota(gpus=6)},
                now=10.0,
            )
        )
        node_ = placed(d)["own"][0]
        assert preempted(d) == sorted([f"a{node_}{g}" for g in range(1, 8)] + [f"c{node_}"])
        reasons = {p.workload_id: p.reason for p in d.preemptions}
        assert reasons[f"c{node_}"].startswith("moved aside")

    def test_owed_gang_moves_a_small_job_onto_free_gpus_elsewhere(self) -> None:
        """12 GPUs are free but at most 7 on one node: b, owed 8, moves c's 1-GPU job off
        n1; c can start it again at once on n2's free GPUs, so c keeps its quota."""
        small = job("c1", 1, ws="c", on=(("n1", (0,)),), started=0.0)
        d = schedule(
            snap(
                [node("n1", free=7), node("n2", free=5)],
                [job("own", 8, ws="b", submitted=5.0)],
                running=[small],
                quotas={"b": Quota(gpus=8), "c": Quota(gpus=8)},
                now=10.0,
            )
        )
        assert preempted(d) == ["c1"] and placed(d) == {"own": ["n1"]}

    def test_no_moving_aside_without_loans_to_reclaim(self) -> None:
        """Nobody borrows (quotas promise more than the pool): work inside its quota stays
        put even for a gang that is owed its own quota; it waits for room instead."""
        inside = [job(f"a{g}", 1, ws="a", on=(("n1", (g,)),), started=0.0) for g in range(1, 8)]
        small = job("c1", 1, ws="c", on=(("n1", (0,)),), started=0.0)
        d = schedule(
            snap(
                [node("n1", free=0)],
                [job("own", 8, ws="b", submitted=5.0)],
                running=[*inside, small],
                quotas={"a": Quota(gpus=7), "b": Quota(gpus=8), "c": Quota(gpus=1)},
                now=10.0,
            )
        )
        assert d.preemptions == () and "no fitting node" in d.waiting["own"]


class TestPreemption:
    def test_higher_priority_preempts_lower(self) -> None:
        low = job("low", 8, priority=0, on=(("n1", tuple(range(8))),), started=99.0)
        d = schedule(snap([node("n1", free=0)], [job("high", 8, priority=5)], [low], now=100.0))
        assert preempted(d) == ["low"] and placed(d) == {"high": ["n1"]}

    def test_equal_priority_fifo_never_preempts(self) -> None:
        old = job("old", 8, on=(("n1", tuple(range(8))),), started=0.0)
        d = schedule(snap([node("n1", free=0)], [job("new", 8)], [old], now=1e6), policy="fifo")
        assert d.preemptions == ()

    @pytest.mark.parametrize(("ran_s", "preempts"), [(60.0, False), (3600.0, True)])
    def test_las_preemption_waits_for_the_minimum_run_time(
        self, ran_s: float, preempts: bool
    ) -> None:
        """A long-served job yields to a new one only after it ran min_run_s (600 s), so a
        restart costs at most a tenth of the time it bought."""
        now = 100_000.0
        served = job(
            "served", 1, on=(("n1", (0,)),), attained=1e6, started=now - ran_s, submitted=0.0
        )
        d = schedule(
            snap([node("n1", 1, free=0)], [job("new", 1, submitted=now)], [served], now=now)
        )
        assert (preempted(d) == ["served"]) is preempts

    def test_two_similar_jobs_do_not_trade_places(self) -> None:
        """Hysteresis: a job must be a whole level better to preempt (both are level 1)."""
        now = 100_000.0
        running = job(
            "r", 1, on=(("n1", (0,)),), attained=9000.0, started=0.0, submitted=now - 9000
        )
        waiting = job("w", 1, attained=3700.0, submitted=now - 3700)
        d = schedule(snap([node("n1", 1, free=0)], [waiting], [running], now=now))
        assert d.preemptions == ()


class TestOrder:
    def test_las_favours_the_least_served_job(self) -> None:
        served = job("served", 1, attained=50_000.0, submitted=0.0)
        fresh = job("fresh", 1, submitted=10.0)
        for policy in (KaonPolicy(), LasPolicy()):
            d = schedule(snap([node("n1", 1)], [served, fresh], now=20.0), policy=policy)
            assert placed(d) == {"fresh": ["n1"]}

    @pytest.mark.parametrize(("waited_days", "old_first"), [(1, False), (4, True)])
    def test_aging_lets_a_long_waiting_job_through(
        self, waited_days: int, old_first: bool
    ) -> None:
        """Level 3 of service: a day of waiting is one level back, not enough to pass a
        fresh job; four days of waiting beats it. No starvation, yet no FIFO either."""
        old = job("old", 1, attained=200_000.0, submitted=0.0)
        now = waited_days * 86_400.0 + 200_000.0
        d = schedule(snap([node("n1", 1)], [old, job("fresh", 1, submitted=now)], now=now))
        assert placed(d) == {("old" if old_first else "fresh"): ["n1"]}

    def test_strict_fifo_blocks_behind_the_head(self) -> None:
        d = schedule(
            snap(
                [node("n1", free=4)], [job("head", 8, submitted=0), job("small", 1, submitted=1)]
            ),
            policy="fifo",
        )
        assert d.placements == () and "behind earlier job head" in d.waiting["small"]

    def test_every_pending_job_gets_a_reason_or_a_placement(self) -> None:
        pending = [job(f"j{i}", 4, submitted=i) for i in range(5)]
        d = schedule(snap([node("n1")], pending))
        assert len(d.placements) + len(d.waiting) == 5

    def test_same_snapshot_same_decisions(self) -> None:
        s = snap(
            [node("n1", free=3), node("n2", free=5)], [job(f"j{i}", i % 3 + 1) for i in range(6)]
        )
        assert schedule(s) == schedule(s)

    def test_unknown_policy_lists_the_valid_ones(self) -> None:
        with pytest.raises(
            ValueError, match="kaon, fifo, easy, las, gittins, srtf, kueue, kueue-fair, kai"
        ):
            schedule(snap([node("n1")], []), policy="best")


class TestBackfill:
    def test_kaon_holds_the_nodes_the_head_needs(self) -> None:
        """The 8-GPU head cannot start; n1 is closest (6 free), so it is held for it and the
        small job behind goes to n2 instead of eating the head's hole."""
        busy1 = job("b1", 2, on=(("n1", (0, 1)),), started=0.0, submitted=0.0)
        busy2 = job("b2", 4, on=(("n2", (0, 1, 2, 3)),), started=0.0, submitted=0.0)
        pending = [job("head", 8, submitted=1.0), job("small", 1, submitted=2.0)]
        d = schedule(
            snap([node("n1", free=6), node("n2", free=4)], pending, [busy1, busy2], now=3.0)
        )
        assert d.reserved == {"head": ("n1",)} and placed(d) == {"small": ["n2"]}

    @pytest.mark.parametrize(("walltime", "where"), [(50.0, ["n1"]), (5000.0, None)])
    def test_easy_backfills_only_what_ends_before_the_shadow(
        self, walltime: float, where: list[str] | None
    ) -> None:
        """The head starts when b1 ends at t=100 (its estimate). A job estimated to end
        before that may use the head's node; a longer one may not."""
        b1 = job("b1", 4, on=(("n1", (0, 1, 2, 3)),), started=0.0, walltime=100.0)
        pending = [job("head", 8, submitted=1.0, walltime=10.0)]
        pending.append(job("small", 2, submitted=2.0, walltime=walltime))
        d = schedule(snap([node("n1", free=4)], pending, [b1], now=10.0), policy=EasyPolicy())
        assert d.reserved == {"head": ("n1",)}
        assert placed(d).get("small") == where


def test_quota_reason_has_no_floating_point_dust() -> None:
    """Fractional shares (as GPU-hour shares are) sum to 8 plus dust; the reason says 0."""
    quotas = {f"w{i}": Quota(gpus=0.4) for i in range(20)}  # 8.000000000000002 in all
    busy = job("busy", 8, ws="w1", on=(("n1", tuple(range(8))),), started=0.0)
    d = schedule(snap([node("n1", free=0)], [job("j", 1, ws="w0")], [busy], quotas=quotas))
    assert "has only 0 idle GPUs to lend" in d.waiting["j"]


class TestDomains:
    """A gang spans nodes of one network domain only (one machine, or one Ray cluster)."""

    def test_a_gang_never_spans_two_domains(self) -> None:
        nodes = (
            replace(node("local", free=4), domain="local"),
            replace(node("ray-a", free=4), domain="ray"),
            replace(node("ray-b", free=2), domain="ray"),
        )
        index = FreeIndex(nodes)
        placed = place_gang(index, job("g", gpus=1, workers=6))
        assert placed is not None
        assert {wp.node_id for wp in placed} == {"ray-a", "ray-b"}

    def test_too_big_for_any_one_domain_waits(self) -> None:
        nodes = (
            replace(node("local", gpus=4), domain="local"),
            replace(node("ray-a", gpus=4), domain="ray"),
        )
        assert place_gang(
            FreeIndex(tuple(replace(n, domain="") for n in nodes)), job("g", workers=6)
        )
        assert place_gang(FreeIndex(nodes), job("g", gpus=1, workers=6)) is None
        assert not fits_anywhere(nodes, job("g", gpus=1, workers=6))


def test_a_cpu_only_gang_spreads_over_nodes_without_gpus() -> None:
    """Bucket 0 (no free GPU) hosts CPU-only workers too: a gang too big for one CPU node
    spans two."""
    nodes = (node("c1", gpus=0, cpu=2.0), node("c2", gpus=0, cpu=2.0))
    gang = replace(job("g", gpus=0, workers=2), cpu=2.0)
    placed = place_gang(FreeIndex(nodes), gang)
    assert placed is not None and {wp.node_id for wp in placed} == {"c1", "c2"}


def test_a_waiting_reason_speaks_of_the_nodes_the_job_may_use() -> None:
    """A job pinned by labels is told about the nodes that carry them, not the others."""
    plain = node("plain", gpus=0, cpu=8.0)
    tagged = replace(node("ray-1", gpus=0, cpu=1.0), labels=(("kaon.io/pool", "ray"),))
    pinned = replace(job("j", gpus=0), cpu=2.0, labels=(("kaon.io/pool", "ray"),))
    reason = schedule(snap([plain, tagged], [pinned])).waiting["j"]
    assert "at most 1 CPU" in reason and "kaon.io/pool=ray" in reason
    nowhere = replace(pinned, labels=(("zone", "mars"),))
    reason = schedule(snap([plain, tagged], [nowhere])).waiting["j"]
    assert "no node with zone=mars" in reason


class TestConsolidation:
    """A gang that does not fit although enough GPUs are free moves small jobs aside to
    the free GPUs elsewhere (Kaon's policy; KAI's consolidation action does the same)."""

    @pytest.mark.parametrize(
        ("small_gpus", "started", "n2_free", "moves"),
        [
            (1, 0.0, 4, True),  # 7 free + a 1-GPU job on n1, 4 free on n2: moved
            (1, 0.0, 0, False),  # nowhere for it to start again at once: stays
            (1, 900.0, 4, False),  # ran 100 s, under the minimum run time: stays
            (4, 0.0, 3, False),  # 4 + 3 free elsewhere: the gang's 8 and its 4 do not fit
        ],
    )
    def test_a_gang_moves_a_small_job_to_free_gpus_elsewhere(
        self, small_gpus: int, started: float, n2_free: int, moves: bool
    ) -> None:
        gpus = tuple(range(small_gpus))
        small = job("small", small_gpus, on=(("n1", gpus),), started=started, submitted=0.0)
        gang = job("gang", 8, submitted=10.0)
        nodes = [node("n1", free=8 - small_gpus), node("n2", free=n2_free)]
        d = schedule(snap(nodes, [gang], [small], now=1000.0))
        if moves:
            assert preempted(d) == ["small"] and placed(d) == {"gang": ["n1"]}
            assert d.preemptions[0].reason.startswith("moved to another node")
        else:
            assert d.preemptions == () and "gang" not in placed(d)

    def test_baselines_without_consolidation_leave_the_gang_waiting(self) -> None:
        small = job("small", 1, on=(("n1", (0,)),), started=0.0)
        nodes = [node("n1", free=7), node("n2", free=4)]
        d = schedule(snap(nodes, [job("gang", 8, submitted=10.0)], [small], now=1000.0), "las")
        assert d.preemptions == () and d.placements == ()
