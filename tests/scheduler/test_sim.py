"""The simulator on small generated traces, and on the sample of the Philly trace that ships
in examples/traces/ (400 jobs of 2017-11-06: nine tenants, gangs of up to 32 GPUs)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kaon.scheduler import get_policy
from kaon.scheduler.sim.metrics import jain, percentile, summarize
from kaon.scheduler.sim.simulator import SimConfig, Simulator, gang_shape, tenant_quotas
from kaon.scheduler.sim.trace import TraceError, TraceJob, read_trace

SAMPLE = Path(__file__).parents[2] / "examples/traces/philly_sample.csv"
POLICIES = ("kaon", "fifo", "easy", "las", "gittins", "srtf", "kueue", "kueue-fair", "kai")


def heavy_tailed(n: int, seed: int = 1, tenants: int = 3) -> list[TraceJob]:
    """Poisson arrivals, Pareto-like run times, mostly 1-GPU jobs and a few gangs."""
    rng = random.Random(seed)
    jobs, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(1 / 30)
        duration = min(60.0 * rng.paretovariate(1.2), 50_000.0)
        gpus = rng.choice([1] * 12 + [2, 4, 8, 16])
        tenant = f"t{rng.randrange(tenants)}"
        jobs.append(TraceJob(f"job-{i}", t, duration, gpus, duration * gpus, tenant))
    return jobs


def replay(jobs: list[TraceJob], policy: str, nodes: int = 4) -> dict[str, object]:
    sim = Simulator(jobs, SimConfig(nodes=nodes, gpus_per_node=8), get_policy(policy))
    return summarize(sim.run(), policy)


class TestSimulator:
    @pytest.mark.parametrize("policy", POLICIES)
    def test_every_job_finishes_and_no_job_is_faster_than_its_run_time(self, policy: str) -> None:
        jobs = heavy_tailed(300)
        m = replay(jobs, policy)
        assert m["jobs"] == 300
        assert m["avg_jct_s"] >= sum(j.duration for j in jobs) / len(jobs)  # type: ignore[operator]
        assert 0 < m["gpu_utilization"] <= 1  # type: ignore[operator]

    def test_the_oracle_beats_strict_fifo_on_mean_jct(self) -> None:
        jobs = heavy_tailed(400, seed=2)
        assert replay(jobs, "srtf")["avg_jct_s"] < replay(jobs, "fifo")["avg_jct_s"]  # type: ignore[operator]

    def test_kaon_beats_fifo_and_keeps_quotas(self) -> None:
        jobs = heavy_tailed(400, seed=3)
        kaon, fifo = replay(jobs, "kaon"), replay(jobs, "fifo")
        assert kaon["avg_jct_s"] < fifo["avg_jct_s"]  # type: ignore[operator]
        assert kaon["quota_guarantee"] >= 0.95  # type: ignore[operator]

    def test_replay_is_deterministic(self) -> None:
        jobs = heavy_tailed(150, seed=4)
        assert replay(jobs, "kaon") == replay(jobs, "kaon")

    def test_job_bigger_than_the_pool_is_rejected_not_queued(self) -> None:
        jobs = [
            TraceJob("big", 0.0, 10.0, 64, 640.0, "a"),
            TraceJob("ok", 0.0, 10.0, 1, 10.0, "a"),
        ]
        m = replay(jobs, "kaon", nodes=2)
        assert (m["jobs"], m["rejected"]) == (1, 1)

    def test_preempted_job_pays_the_restart_penalty_once_per_restart(self) -> None:
        """A long 8-GPU job is preempted by a higher-LAS-level newcomer after the minimum
        run time; it finishes exactly its duration + waiting + one 60 s penalty later."""
        jobs = [TraceJob("long", 0.0, 20_000.0, 8, 160_000.0, "a")]
        jobs.append(TraceJob("short", 5_000.0, 100.0, 8, 800.0, "a"))
        sim = Simulator(jobs, SimConfig(nodes=1, gpus_per_node=8), get_policy("kaon"))
        result = sim.run()
        long = next(j for j in result.jobs if j.spec.id == "long")
        assert long.preemptions == 1 and result.preemptions == 1
        assert long.finish == pytest.approx(20_000.0 + 100.0 + 60.0)

    @pytest.mark.parametrize(
        ("num_gpus", "per_node", "shape"),
        [(1, 8, (1, 1)), (8, 8, (1, 8)), (16, 8, (2, 8)), (12, 8, (2, 6))],
    )
    def test_gang_shape(self, num_gpus: int, per_node: int, shape: tuple[int, int]) -> None:
        assert gang_shape(num_gpus, per_node) == shape

    def test_quotas_are_shares_of_gpu_hours(self) -> None:
        jobs = [TraceJob("1", 0, 1, 1, 300.0, "a"), TraceJob("2", 0, 1, 1, 100.0, "b")]
        assert tenant_quotas(jobs, 8) == {"a": 6.0, "b": 2.0}

    def test_the_philly_sample(self) -> None:
        """The docs' first replay (12 x 8 GPUs), under a second a policy: every job runs,
        and Kaon's order beats strict FIFO by far (about 33,000 s against 75,000 s)."""
        jobs = read_trace(SAMPLE)
        assert len(jobs) == 400 and len({j.tenant for j in jobs}) == 9
        kaon, fifo = replay(jobs, "kaon", nodes=12), replay(jobs, "fifo", nodes=12)
        for m in (kaon, fifo):
            assert (m["jobs"], m["rejected"]) == (400, 0)
            assert 0 <= m["quota_guarantee"] <= 1  # type: ignore[operator]
        assert kaon["avg_jct_s"] < fifo["avg_jct_s"]  # type: ignore[operator]


class TestMetrics:
    @pytest.mark.parametrize(
        ("values", "expected"), [([1.0, 1.0, 1.0], 1.0), ([1.0, 0.0], 0.5), ([], 1.0)]
    )
    def test_jain(self, values: list[float], expected: float) -> None:
        assert jain(values) == pytest.approx(expected)

    @pytest.mark.parametrize(("q", "expected"), [(0, 1.0), (50, 2.5), (100, 4.0)])
    def test_percentile(self, q: float, expected: float) -> None:
        assert percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


class TestTrace:
    HEADER = "timestamp,duration,num_gpus,gpu_time,cluster\n"

    @pytest.mark.parametrize(
        ("row", "column"),
        [
            ("2017-10-09 00:00:00,abc,1,10,a", "duration"),
            ("2017-10-09 00:00:00,-5,1,10,a", "duration"),
            ("yesterday,10,1,10,a", "timestamp"),
            ("2017-10-09 00:00:00,10,1.5,10,a", "num_gpus"),
            ("2017-10-09 00:00:00,10,0,10,a", "num_gpus"),
            ("2017-10-09 00:00:00,10,1,x,a", "gpu_time"),
            ("2017-10-09 00:00:00,10,1,10,", "cluster"),
            ("2017-10-09 00:00:00,10,1", "gpu_time"),
        ],
    )
    def test_bad_row_names_file_line_and_column(
        self, tmp_path: Path, row: str, column: str
    ) -> None:
        path = tmp_path / "t.csv"
        path.write_text(self.HEADER + "0,10,1,10,a\n" + row + "\n")
        with pytest.raises(TraceError) as info:
            read_trace(path)
        assert str(info.value).startswith(f"{path}:3: column '{column}'")

    def test_bad_header(self, tmp_path: Path) -> None:
        path = tmp_path / "t.csv"
        path.write_text("a,b\n1,2\n")
        with pytest.raises(TraceError, match=":1: expected the header"):
            read_trace(path)

    def test_dates_and_seconds_are_relative_to_the_first_submit(self, tmp_path: Path) -> None:
        path = tmp_path / "t.csv"
        path.write_text(self.HEADER + "2017-10-09 00:01:00,5,1,5,a\n2017-10-09 00:00:00,5,1,5,b\n")
        assert [(j.submit, j.tenant) for j in read_trace(path)] == [(0.0, "b"), (60.0, "a")]
