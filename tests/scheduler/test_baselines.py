"""The baselines' documented rules, one test (or one table row) per rule, on hand-made
pools: Tiresias' 2D-Gittins, Kueue (classical and fair sharing) and the KAI scheduler.
docs/scheduler.md lists the same rules with their sources."""

from __future__ import annotations

import pytest

from kaon.scheduler import (
    Decisions,
    GittinsPolicy,
    KaiPolicy,
    KueueFairPolicy,
    KueuePolicy,
    LasPolicy,
    Quota,
    schedule,
)
from kaon.scheduler.sharing import fair_shares

from .factories import job, node, nodes_of, snap


def placed(d: Decisions) -> dict[str, list[str]]:
    return {p.workload_id: nodes_of(p.workers) for p in d.placements}


def preempted(d: Decisions) -> list[str]:
    return sorted(p.workload_id for p in d.preemptions)


def full(name: str, gpus: int = 8) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """A placement on all of node `name`'s GPUs."""
    return ((name, tuple(range(gpus))),)


class TestGittins:
    # Past jobs: most finish at 1,500 GPU-seconds, one runs far longer.
    SAMPLES = (1500.0,) * 9 + (100_000.0,)

    @pytest.mark.parametrize(
        ("samples", "attained", "expected"),
        [
            # P(S <= 3250) = 2/3 over E[min(S, 3250)] = (100 + 200 + 3250) / 3
            ((100.0, 200.0, 10_000.0), 0.0, (2 / 3) / (3550 / 3)),
            # given S > 150: P = 1/2, E = ((200 - 150) + 3250) / 2
            ((100.0, 200.0, 10_000.0), 150.0, 0.5 / (3300 / 2)),
            # past every sample: index 0
            ((100.0, 200.0, 10_000.0), 20_000.0, 0.0),
        ],
    )
    def test_index_from_the_distribution_of_past_jobs(
        self, samples: tuple[float, ...], attained: float, expected: float
    ) -> None:
        assert GittinsPolicy().learn(samples).index(attained) == pytest.approx(expected)

    def test_inside_a_queue_the_higher_index_goes_first(self) -> None:
        """Both in queue 0; the job that has run 1,000 GPU-s is closer to the typical end
        (1,500) than the fresh one, so its index is higher and it goes first, though it
        was submitted later (LAS would go FIFO)."""
        fresh = job("fresh", 1, submitted=0.0)
        served = job("served", 1, attained=1000.0, submitted=5.0)
        pool = snap([node("n1", 1)], [fresh, served], now=10.0)
        gittins = GittinsPolicy().learn(self.SAMPLES)
        assert placed(schedule(pool, policy=gittins)) == {"served": ["n1"]}
        assert placed(schedule(pool, policy=LasPolicy())) == {"fresh": ["n1"]}

    def test_a_lower_queue_goes_first_whatever_the_index(self) -> None:
        long_served = job("long", 1, attained=50_000.0, submitted=0.0)
        fresh = job("fresh", 1, submitted=5.0)
        gittins = GittinsPolicy().learn(self.SAMPLES)
        d = schedule(snap([node("n1", 1)], [long_served, fresh], now=10.0), policy=gittins)
        assert placed(d) == {"fresh": ["n1"]}

    @pytest.mark.parametrize(
        ("running_attained", "preempts"),
        [(20_000.0, True), (1000.0, False)],  # a higher queue is preempted; the same is not
    )
    def test_preempts_only_a_job_of_a_higher_queue(
        self, running_attained: float, preempts: bool
    ) -> None:
        running = job("r", 1, on=(("n1", (0,)),), attained=running_attained, started=0.0)
        gittins = GittinsPolicy().learn(self.SAMPLES)
        pool = snap([node("n1", 1, free=0)], [job("new", 1, submitted=5.0)], [running], now=10.0)
        assert (preempted(schedule(pool, policy=gittins)) == ["r"]) is preempts

    def test_without_samples_it_is_las(self) -> None:
        pending = [job(f"j{i}", 1 + i % 2, attained=700.0 * i, submitted=i) for i in range(8)]
        pool = snap([node("n1", 4), node("n2", 2)], pending, now=20.0)
        assert schedule(pool, policy=GittinsPolicy()) == schedule(pool, policy=LasPolicy())


class TestKueue:
    QUOTAS = {"a": Quota(gpus=4), "b": Quota(gpus=4)}

    def test_admission_puts_work_under_nominal_quota_before_borrowing(self) -> None:
        """a already uses its 4 GPUs, so its job would borrow; b's later job would not."""
        a_running = job("a0", 4, ws="a", on=(("n1", (0, 1, 2, 3)),), started=0.0)
        pending = [job("a1", 1, ws="a", submitted=1.0), job("b1", 1, ws="b", submitted=2.0)]
        pool = snap([node("n1", free=1)], pending, [a_running], quotas=self.QUOTAS, now=3.0)
        assert placed(schedule(pool, policy=KueuePolicy())) == {"b1": ["n1"]}

    def test_best_effort_fifo_skips_a_head_that_does_not_fit(self) -> None:
        pending = [job("big", 8, ws="a", submitted=0.0), job("small", 2, ws="a", submitted=1.0)]
        pool = snap([node("n1", free=4)], pending, quotas=self.QUOTAS)
        assert placed(schedule(pool, policy=KueuePolicy())) == {"small": ["n1"]}

    def test_borrowing_has_no_limit(self) -> None:
        pool = snap([node("n1")], [job("j", 8, ws="a")], quotas=self.QUOTAS)
        assert placed(schedule(pool, policy=KueuePolicy())) == {"j": ["n1"]}

    def test_borrowing_never_preempts(self) -> None:
        """borrowWithinCohort: Never. a is at its nominal and b borrows; a's next job
        would borrow too, so it waits rather than take b's loan."""
        a_run = job("a0", 4, ws="a", on=(("n1", (0, 1, 2, 3)),), started=0.0)
        b_run = job("b0", 4, ws="b", on=(("n1", (4, 5, 6, 7)),), started=0.0)
        b_loan = job("b1", 8, ws="b", on=full("n2"), started=0.0)
        quotas = {"a": Quota(gpus=4), "b": Quota(gpus=4), "c": Quota(gpus=8)}
        d = schedule(
            snap(
                [node("n1", free=0), node("n2", free=0)],
                [job("a1", 4, ws="a", submitted=1.0)],
                [a_run, b_run, b_loan],
                quotas=quotas,
                now=5.0,
            ),
            policy=KueuePolicy(),
        )
        assert d.preemptions == () and d.waiting["a1"].startswith("quota")

    def test_reclaim_within_cohort_any_ignores_priority(self) -> None:
        """A job inside its nominal quota takes back a higher-priority job's borrowed
        GPUs: reclaimWithinCohort: Any."""
        loan = job("loan", 8, ws="a", priority=9, on=full("n1"), started=0.0)
        pool = snap(
            [node("n1", free=0)],
            [job("own", 4, ws="b", submitted=1.0)],
            [loan],
            quotas=self.QUOTAS,
            now=5.0,
        )
        d = schedule(pool, policy=KueuePolicy())
        assert preempted(d) == ["loan"] and placed(d) == {"own": ["n1"]}

    def test_no_reclaim_from_a_queue_that_does_not_borrow(self) -> None:
        inside = job("inside", 4, ws="a", on=(("n1", (0, 1, 2, 3)),), started=0.0)
        other = job("b0", 4, ws="b", on=(("n1", (4, 5, 6, 7)),), started=0.0)
        quotas = {"a": Quota(gpus=4), "b": Quota(gpus=4), "c": Quota(gpus=4)}
        pool = snap(
            [node("n1", free=0)],
            [job("c1", 4, ws="c", submitted=1.0)],
            [inside, other],
            quotas=quotas,
            now=5.0,
        )
        assert schedule(pool, policy=KueuePolicy()).preemptions == ()

    @pytest.mark.parametrize(("priority", "preempts"), [(5, True), (0, False)])
    def test_within_cluster_queue_lower_priority(self, priority: int, preempts: bool) -> None:
        low = job("low", 8, ws="a", on=full("n1"), started=0.0)
        pool = snap(
            [node("n1", free=0)],
            [job("new", 8, ws="a", priority=priority, submitted=1.0)],
            [low],
            quotas={"a": Quota(gpus=8)},
            now=5.0,
        )
        assert (preempted(schedule(pool, policy=KueuePolicy())) == ["low"]) is preempts

    def test_the_most_recently_admitted_candidate_goes_first(self) -> None:
        old = job("old", 4, ws="a", on=(("n1", (0, 1, 2, 3)),), started=0.0)
        new = job("new", 4, ws="a", on=(("n1", (4, 5, 6, 7)),), started=100.0)
        pool = snap(
            [node("n1", free=0)],
            [job("own", 4, ws="b", submitted=150.0)],
            [old, new],
            quotas={"a": Quota(gpus=0), "b": Quota(gpus=8)},
            now=200.0,
        )
        assert preempted(schedule(pool, policy=KueuePolicy())) == ["new"]


class TestKueueFairSharing:
    """Four 8-GPU nodes; quotas a 8, b 8, c 16: the cohort lends 32 GPUs, and a DRS of
    1000 means borrowing all of them."""

    QUOTAS = {"a": Quota(gpus=8), "b": Quota(gpus=8), "c": Quota(gpus=16)}
    NODES = ("n1", "n2", "n3", "n4")

    def _pool(
        self, a_nodes: int, b_nodes: int, want: int, free: int = 0
    ) -> tuple[Decisions, Decisions]:
        names = iter(self.NODES)
        running = [
            job(f"{ws}{i}", 8, ws=ws, on=full(next(names)), started=float(i))
            for ws, count in (("a", a_nodes), ("b", b_nodes))
            for i in range(count)
        ]
        nodes = [node(n, free=0) for n in self.NODES[: a_nodes + b_nodes]]
        nodes += [node(n, free=free) for n in self.NODES[a_nodes + b_nodes :]]
        pool = snap(
            nodes, [job("a-new", want, ws="a", submitted=10.0)], running, self.QUOTAS, 20.0
        )
        return schedule(pool, policy=KueueFairPolicy()), schedule(pool, policy=KueuePolicy())

    def test_admission_by_lowest_dominant_resource_share(self) -> None:
        """a borrows 8 GPUs (DRS 250), b borrows none: b's later job goes first, though
        both jobs would borrow."""
        running = [
            job("a0", 8, ws="a", on=full("n1"), started=0.0),
            job("a1", 8, ws="a", on=full("n2"), started=0.0),
            job("b0", 8, ws="b", on=full("n3"), started=0.0),
        ]
        pending = [job("a2", 4, ws="a", submitted=1.0), job("b1", 4, ws="b", submitted=2.0)]
        pool = snap(
            [node("n1", free=0), node("n2", free=0), node("n3", free=0), node("n4", free=4)],
            pending,
            running,
            self.QUOTAS,
            5.0,
        )
        assert placed(schedule(pool, policy=KueueFairPolicy())) == {"b1": ["n4"]}

    def test_less_than_or_equal_to_final_share(self) -> None:
        """a (at its nominal) wants 4 more: DRS 125. b borrows 16 (500); without one of
        its jobs it still borrows 8 (250) >= 125: preempted. Classical Kueue never
        preempts to borrow."""
        fair, classical = self._pool(a_nodes=1, b_nodes=3, want=4)
        assert preempted(fair) == ["b2"] and "stays at most" in fair.preemptions[0].reason
        assert classical.preemptions == ()

    def test_less_than_initial_share(self) -> None:
        """a (at nominal) wants 4: 125. b borrows 8 (250) in one 8-GPU job; without it b
        borrows nothing (0 < 125, so not the first strategy), but 125 < 250 before."""
        fair, _ = self._pool(a_nodes=1, b_nodes=2, want=4, free=0)
        assert preempted(fair) == ["b1"] and "below" in fair.preemptions[0].reason

    def test_no_preemption_of_a_queue_with_a_lower_share(self) -> None:
        """a borrows 8 (250) and wants 4 more (375); b borrows 8 (250): neither rule."""
        fair, _ = self._pool(a_nodes=2, b_nodes=2, want=4)
        assert fair.preemptions == ()

    def test_within_nominal_preempts_regardless_of_share(self) -> None:
        """FairSharingPreemptWithinNominal: a uses nothing, so its 8-GPU job reclaims."""
        fair, _ = self._pool(a_nodes=0, b_nodes=4, want=8)
        assert len(fair.preemptions) == 1 and fair.preemptions[0].reason.startswith("reclaimed")


class TestKai:
    @pytest.mark.parametrize(
        ("deserved", "requested", "total", "expected"),
        [
            # everyone gets min(deserved, requested) first
            ({"a": 4, "b": 4}, {"a": 2, "b": 4}, 8, {"a": 2, "b": 4}),
            # what is left is split equally (weight 1) among those who want more
            ({"a": 4, "b": 4}, {"a": 8, "b": 8}, 12, {"a": 6, "b": 6}),
            # capped at the request; the rest goes on to the others
            ({"a": 2, "b": 2, "c": 2}, {"a": 3, "b": 20, "c": 0}, 12, {"a": 3, "b": 9, "c": 0}),
        ],
    )
    def test_fair_share_is_deserved_then_over_quota_by_weight(
        self,
        deserved: dict[str, float],
        requested: dict[str, float],
        total: float,
        expected: dict[str, float],
    ) -> None:
        shares = fair_shares(deserved, requested, total)
        assert shares == pytest.approx(expected)

    def test_queues_under_their_fair_share_go_first(self) -> None:
        """a holds 6 of a fair share of 4 (over), b nothing: b's later job goes first."""
        a_run = job("a0", 6, ws="a", on=(("n1", tuple(range(6))),), started=0.0)
        pending = [job("a1", 1, ws="a", submitted=1.0), job("b1", 1, ws="b", submitted=2.0)]
        pool = snap(
            [node("n1", free=2), node("n2", free=0)],
            pending,
            [a_run],
            {"a": Quota(gpus=4), "b": Quota(gpus=4)},
            5.0,
        )
        d = schedule(pool, policy=KaiPolicy())
        assert "b1" in placed(d)

    def test_guarantee_deserved_quota(self) -> None:
        """b, inside its deserved 8, reclaims from a, which is over its deserved 8 (and so,
        with the pool full, over its fair share too: both strategies agree)."""
        loans = [job(f"a{i}", 8, ws="a", on=full(f"n{i}"), started=0.0) for i in (1, 2)]
        pool = snap(
            [node("n1", free=0), node("n2", free=0)],
            [job("b1", 8, ws="b", submitted=1.0)],
            loans,
            {"a": Quota(gpus=8), "b": Quota(gpus=8)},
            5.0,
        )
        d = schedule(pool, policy=KaiPolicy())
        victim = d.preemptions[0].workload_id
        assert len(d.preemptions) == 1 and placed(d) == {"b1": ["n" + victim[1:]]}

    def test_maintain_fair_share(self) -> None:
        """Deserved 8 each on 24 GPUs; c asks for nothing, so a and b split its 8: fair
        shares 12 and 12. a holds 20; b holds 4 and wants 8 more: 12, over its deserved
        but within its fair share, and a is over its fair share."""
        a_jobs = [job(f"a{i}", 8, ws="a", on=full(f"n{i}"), started=0.0) for i in (1, 2)]
        a_jobs.append(job("a3", 4, ws="a", on=(("n3", (0, 1, 2, 3)),), started=0.0))
        b_job = job("b0", 4, ws="b", on=(("n3", (4, 5, 6, 7)),), started=0.0)
        pool = snap(
            [node(f"n{i}", free=0) for i in (1, 2, 3)],
            [job("b1", 8, ws="b", submitted=1.0)],
            [*a_jobs, b_job],
            {"a": Quota(gpus=8), "b": Quota(gpus=8), "c": Quota(gpus=8)},
            5.0,
        )
        d = schedule(pool, policy=KaiPolicy())
        assert len(d.preemptions) == 1 and "over its fair share" in d.preemptions[0].reason

    def test_no_reclaim_past_the_reclaimers_fair_share(self) -> None:
        """b already holds its fair share (8 of 16, a wants 8 too): it cannot reclaim."""
        a_job = job("a0", 8, ws="a", on=full("n1"), started=0.0)
        b_job = job("b0", 8, ws="b", on=full("n2"), started=0.0)
        pool = snap(
            [node("n1", free=0), node("n2", free=0)],
            [job("b1", 8, ws="b", submitted=1.0)],
            [a_job, b_job],
            {"a": Quota(gpus=4), "b": Quota(gpus=4)},
            5.0,
        )
        assert schedule(pool, policy=KaiPolicy()).preemptions == ()

    @pytest.mark.parametrize(("priority", "preempts"), [(5, True), (0, False)])
    def test_preempt_inside_a_queue_by_priority(self, priority: int, preempts: bool) -> None:
        low = job("low", 8, ws="a", on=full("n1"), started=0.0)
        pool = snap(
            [node("n1", free=0)],
            [job("new", 8, ws="a", priority=priority, submitted=1.0)],
            [low],
            {"a": Quota(gpus=8)},
            5.0,
        )
        assert (preempted(schedule(pool, policy=KaiPolicy())) == ["low"]) is preempts
