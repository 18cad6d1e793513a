"""Where sync handlers run: the inline rule alone, and over real HTTP in a replica process.

The replica runs as a real process here (not a uvicorn thread of the test), so "on the
loop" means the replica's main thread, and a stalled loop would show in ``/healthz``.
"""

from __future__ import annotations

import concurrent.futures
import re
import time

import httpx

from kaon.serving.inline import InlineRule, voluntary_waits
from tests.serving.helpers import spawn_replica


def _feed_pool(rule: InlineRule, seconds: float, n: int) -> None:
    for _ in range(n):
        rule.observe_pool(seconds)


class TestInlineRule:
    def test_starts_in_the_pool_and_moves_when_the_median_is_cheap(self) -> None:
        rule = InlineRule(probe=8)
        assert not rule.on_loop
        _feed_pool(rule, 50e-6, 7)
        assert not rule.on_loop  # not enough calls seen yet
        rule.observe_pool(50e-6)
        assert rule.on_loop

    def test_a_pooled_tail_does_not_keep_a_cheap_handler_off_the_loop(self) -> None:
        rule = InlineRule(probe=8)
        for seconds in [50e-6, 5e-3] * 4:  # half inflated by GIL waits in the pool
            rule.observe_pool(seconds)
        assert not rule.on_loop  # median between: over the budget
        rule = InlineRule(probe=8)
        for seconds in [50e-6, 50e-6, 5e-3] * 3:
            rule.observe_pool(seconds)
        assert rule.on_loop

    def test_a_handler_that_blocks_never_leaves_the_pool(self) -> None:
        rule = InlineRule(probe=8)
        _feed_pool(rule, 0.05, 1000)
        assert not rule.on_loop and rule.moves == 0

    def test_one_very_slow_call_on_the_loop_sends_it_back(self) -> None:
        rule = InlineRule(probe=8)
        _feed_pool(rule, 50e-6, 8)
        rule.observe_loop(0.02, 10e-6)  # blocked 20 ms: over the limit, CPU or not
        assert not rule.on_loop

    def test_a_long_preemption_is_not_a_slow_call(self) -> None:
        """90 ms of wall time in which the thread never waited: the kernel ran others."""
        rule = InlineRule(probe=8)
        _feed_pool(rule, 50e-6, 8)
        rule.observe_loop(0.09, 400e-6, waited=False)
        assert rule.on_loop
        rule.observe_loop(0.09, 0.02, waited=False)  # 20 ms of CPU: slow whatever the kernel did
        assert not rule.on_loop

    def test_voluntary_waits_count_sleeps(self) -> None:
        before = voluntary_waits()
        time.sleep(0.01)
        assert before < 0 or voluntary_waits() > before

    def test_cpu_p99_over_the_tail_budget_sends_it_back(self) -> None:
        rule = InlineRule(probe=8, window=100)
        _feed_pool(rule, 50e-6, 8)
        rule.observe_loop(2e-3, 2e-3)  # 1 slow call in 100: still a p99 under 1 ms
        for i in range(50):
            slow = i % 4 == 0  # a quarter of the calls at 400 µs: a p99 of 400 µs is fine
            rule.observe_loop(400e-6 if slow else 50e-6, 400e-6 if slow else 50e-6)
        assert rule.on_loop
        rule.observe_loop(2e-3, 2e-3)  # the second over 1 ms: over 1%
        assert not rule.on_loop

    def test_preemptions_do_not_move_a_cheap_handler(self) -> None:
        """One call in ten loses 2 ms of wall time to the kernel, not to the handler."""
        rule = InlineRule(probe=8, window=100)
        _feed_pool(rule, 50e-6, 8)
        for i in range(1000):
            rule.observe_loop(2e-3 if i % 10 == 0 else 50e-6, 50e-6)
        assert rule.on_loop and rule.moves == 1

    def test_a_handler_that_starts_to_block_goes_back_within_a_probe(self) -> None:
        rule = InlineRule(probe=8, window=100)
        _feed_pool(rule, 50e-6, 8)
        calls = 0
        while rule.on_loop:
            rule.observe_loop(1e-3, 10e-6)  # waits 1 ms on I/O, hardly any CPU
            calls += 1
        assert calls == 5  # more than half of the last 8

    def test_back_off_doubles_and_a_clean_window_forgives(self) -> None:
        rule = InlineRule(probe=4, window=10, max_cooldown=16)
        _feed_pool(rule, 50e-6, 4)
        rule.observe_loop(1.0, 1.0)  # back to the pool for 4 calls
        _feed_pool(rule, 50e-6, 4)
        assert not rule.on_loop
        rule.observe_pool(50e-6)
        assert rule.on_loop
        rule.observe_loop(1.0, 1.0)  # now 8 calls
        _feed_pool(rule, 50e-6, 8)
        assert not rule.on_loop
        rule.observe_pool(50e-6)
        assert rule.on_loop
        for _ in range(10):  # a full clean window: the next back-off is short again
            rule.observe_loop(50e-6, 50e-6)
        rule.observe_loop(1.0, 1.0)
        _feed_pool(rule, 50e-6, 5)
        assert rule.on_loop

    def test_pinned_rules_ignore_measurements(self) -> None:
        pooled, pinned = InlineRule(False, probe=2), InlineRule(True, probe=2)
        _feed_pool(pooled, 1e-6, 100)
        pinned.observe_loop(10.0, 10.0)
        assert not pooled.on_loop and pinned.on_loop


def _on_loop(url: str, handler: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf'kaon_replica_handler_on_loop{{handler="{handler}"}} ([\d.]+)', text)
    assert match, text
    return float(match.group(1))


def _healthz_while(url: str, seconds: float, calls: int) -> float:
    """The slowest /healthz answer while `calls` requests of `seconds` each run.

    Clients are built before the clock starts: building one takes tens of milliseconds
    of this process's GIL, which would be measured as the replica's delay.
    """
    limits = httpx.Limits(max_connections=calls)
    with (
        httpx.Client(timeout=10, limits=limits) as busy_client,
        httpx.Client(timeout=5) as probe,
        concurrent.futures.ThreadPoolExecutor(calls) as pool,
    ):
        probe.get(f"{url}/healthz")  # connected
        body = {"seconds": seconds}
        busy = [pool.submit(busy_client.post, f"{url}/compute", json=body) for _ in range(calls)]
        time.sleep(seconds / 4)  # the slow calls are running now
        worst = 0.0
        while not all(f.done() for f in busy):
            start = time.perf_counter()
            assert probe.get(f"{url}/healthz").status_code == 200
            worst = max(worst, time.perf_counter() - start)
            time.sleep(0.01)
        assert all(f.result().status_code == 200 for f in busy)
    return worst


class TestOverHttp:
    def test_cheap_handler_moves_to_the_loop_slow_one_stays_in_the_pool(self) -> None:
        with spawn_replica("tests.serving.services:Placement") as (_, url), httpx.Client() as c:
            first = c.post(f"{url}/compute", json={}).json()
            assert first == {"main_thread": False}  # measured in the pool first
            for _ in range(40):
                c.post(f"{url}/compute", json={})
            assert c.post(f"{url}/compute", json={}).json() == {"main_thread": True}
            assert _on_loop(url, "compute") == 1.0
            # slow now: the first slow call runs on the loop, and sends it back
            c.post(f"{url}/compute", json={"seconds": 0.05})
            assert _on_loop(url, "compute") == 0.0
            metrics = c.get(f"{url}/metrics").text
            assert 'kaon_replica_handler_moves_total{handler="compute"} 2.0' in metrics
            # the loop stays free: no health check ever waits for a slow call to end
            assert _healthz_while(url, 0.5, 4) < 0.25

    def test_slow_def_handler_never_stalls_healthz(self) -> None:
        with spawn_replica("tests.serving.services:Placement") as (_, url):
            # half a slow call: a loop that ran one would have held a probe at least that long
            assert _healthz_while(url, 0.3, 8) < 0.15
            assert _healthz_while(url, 0.3, 8) < 0.15
            assert _on_loop(url, "compute") == 0.0

    def test_pinned_handlers(self) -> None:
        with spawn_replica("tests.serving.services:Placement") as (_, url), httpx.Client() as c:
            for _ in range(60):
                assert c.post(f"{url}/pooled").json() == {"main_thread": False}
                assert c.post(f"{url}/pinned").json() == {"main_thread": True}
            assert _on_loop(url, "pooled") == 0.0
            assert _on_loop(url, "pinned") == 1.0
