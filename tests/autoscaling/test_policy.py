"""The autoscaling policy, table by table. Pure: no fixtures, no clock, no sleeping."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from kaon.autoscaling import Load, ScalingState, decide, wanted
from kaon.core.deployments import ScalingPolicy

POLICY = ScalingPolicy(
    min_replicas=0, max_replicas=8, target_in_flight=4, scale_up_delay_s=5,
    scale_down_delay_s=30, scale_to_zero_after_s=60,
)  # fmt: skip


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        (Load(), 0),
        (Load(in_flight=1), 1),
        (Load(in_flight=4), 1),
        (Load(in_flight=5), 2),
        (Load(in_flight=3, queued=6), 3),
        (Load(in_flight=1000), 250),  # unclamped
    ],
)
def test_wanted_by_in_flight(load: Load, expected: int) -> None:
    assert wanted(POLICY, load) == expected


@pytest.mark.parametrize(
    ("rps", "in_flight", "expected"),
    [(0, 0, 0), (10, 0, 1), (10.5, 0, 2), (50, 0, 5), (50, 40, 10)],
)
def test_wanted_by_rps_and_in_flight_takes_the_larger(
    rps: float, in_flight: int, expected: int
) -> None:
    policy = POLICY.model_copy(update={"target_rps": 10.0})
    assert wanted(policy, Load(in_flight=in_flight, requests_per_s=rps)) == expected


# (replicas, load, now, memory) -> replicas decided
S = ScalingState


@pytest.mark.parametrize(
    ("state", "now", "expected"),
    [
        # zero replicas and demand: start at once, no delay
        (S(0, Load(queued=1)), 0, 1),
        (S(0, Load(queued=9)), 0, 3),  # enough for the queue
        (S(0, Load(queued=100)), 0, 8),  # never over max
        (S(0, Load()), 0, 0),  # no demand, stay at zero
        # going up waits for the delay
        (S(1, Load(in_flight=12)), 0, 1),
        (S(1, Load(in_flight=12), pending_since=0, pending_target=3), 4.9, 1),
        (S(1, Load(in_flight=12), pending_since=0, pending_target=3), 5, 3),
        # up to the smallest count wanted during the window (a spike does not over-react)
        (S(1, Load(in_flight=32), pending_since=0, pending_target=2), 5, 2),
        # going down waits longer
        (S(4, Load(in_flight=4), pending_since=0, pending_target=1, last_busy_at=0), 29, 4),
        (S(4, Load(in_flight=4), pending_since=0, pending_target=1, last_busy_at=0), 30, 1),
        # down to the largest count wanted during the window
        (S(4, Load(in_flight=1), pending_since=0, pending_target=3, last_busy_at=0), 30, 3),
        # idle but not long enough for zero: keep one
        (S(1, Load(), last_busy_at=0), 59, 1),
        (S(3, Load(), pending_since=0, pending_target=1, last_busy_at=0), 30, 1),
        # idle long enough: scale to zero at once
        (S(1, Load(), last_busy_at=0), 60, 0),
        # ... but not while the replica is still starting: the idle clock waits for it
        (S(1, Load(), last_busy_at=0, warming=True), 60, 1),
        # min_replicas holds even when idle forever
        (S(2, Load(), last_busy_at=0), 10_000, 2),
        # after a restart (rule 5): counted busy at the restart, so no scale to zero ...
        (S.initial(1, now=1000), 1059, 1),
        (S.initial(1, now=1000), 1060, 0),  # ... until idle the full window after it
        # ... and no scale-down before the reports are back: the delay starts over
        (S.initial(3, now=1000), 1029, 3),
    ],
)
def test_decide(state: ScalingState, now: float, expected: int) -> None:
    policy = POLICY if state.replicas != 2 else POLICY.model_copy(update={"min_replicas": 2})
    assert decide(policy, state, now).replicas == expected


def run(policy: ScalingPolicy, steps: list[tuple[float, Load]], replicas: int) -> list[int]:
    """Feed a load timeline through decide, as the reconciler would; replicas after each."""
    state = ScalingState(replicas=replicas)
    counts = []
    for now, load in steps:
        decision = decide(policy, state.observe(load), now)
        state = decision.state
        counts.append(decision.replicas)
    return counts


def test_a_load_that_oscillates_faster_than_the_delay_does_not_flap() -> None:
    high, low = Load(in_flight=12), Load(in_flight=2)
    steps = [(float(t), high if t % 10 < 5 else low) for t in range(60)]
    counts = run(POLICY.model_copy(update={"scale_up_delay_s": 0}), steps, replicas=1)
    assert counts[0] == 3
    assert set(counts) == {3}  # the lows never last the 30 s scale-down delay


def test_burst_then_idle_timeline() -> None:
    steps = [(0.0, Load(queued=1))]  # first request at zero
    steps += [(float(t), Load(in_flight=16)) for t in range(1, 12)]  # sustained load
    steps += [(float(t), Load()) for t in range(12, 120)]  # then nothing
    counts = run(POLICY, steps, replicas=0)
    assert counts[0] == 1  # cold start at once
    assert counts[5] == 1 and counts[6] == 4  # up after 5 s of wanting 4
    assert counts[12 + 29] == 4 and counts[12 + 30] == 1  # down to one after 30 s
    assert counts[70] == 1 and counts[71] == 0  # zero 60 s after the last load (t=11)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas must not exceed"),
        ({"target_in_flight": 0}, "greater than 0"),
        ({"target_rps": -1}, "greater than 0"),
        ({"target_in_flight": None, "target_rps": None}, "set target_in_flight"),
        ({"scale_down_delay_s": -1}, "greater than or equal"),
    ],
)
def test_policy_validation(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ScalingPolicy(**fields)  # type: ignore[arg-type]


def test_state_observe_keeps_memory() -> None:
    state = S(2, Load(), pending_since=1.0, pending_target=3, last_busy_at=0.5)
    fresh = state.observe(Load(in_flight=7), replicas=4)
    assert fresh == replace(state, load=Load(in_flight=7), replicas=4)


def test_a_restart_mid_rollout_delays_but_never_hastens() -> None:
    """The same load timeline with and without a restart (fresh state) halfway through a
    pending scale-down: the restarted run reaches the same count, only later."""
    steps = [(float(t), Load(in_flight=4)) for t in range(80)]
    steady = run(POLICY, steps, replicas=4)
    state = ScalingState(replicas=4, last_busy_at=0)
    restarted = []
    for now, load in steps:
        if now == 20:
            state = ScalingState.initial(state.replicas, now)  # the control plane restarts
        decision = decide(POLICY, state.observe(load), now)
        state = decision.state
        restarted.append(decision.replicas)
    assert steady.index(1) == 30  # 30 s of wanting fewer
    assert restarted.index(1) == 50  # the window started over at the restart (t=20)
    assert all(r >= s for r, s in zip(restarted, steady, strict=True))
