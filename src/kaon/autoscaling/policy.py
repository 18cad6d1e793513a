"""The autoscaling policy: load in, replica count out. A pure function, no clock, no I/O.

The deployment reconciler calls `decide` on each pass with the deployment's `ScalingPolicy`,
the state it kept from the previous decision, the newest load from the gateways (summed
by `kaon.autoscaling.load.LoadBoard`) and the current time, and keeps the returned state
for next time:

```python
state = ScalingState.initial(replicas=1, now=clock())
...
state = state.observe(load=Load(in_flight=12, queued=3, requests_per_s=40.0))
decision = decide(policy, state, now=clock())
state = decision.state          # keep it for the next pass
scale_to(decision.replicas)     # start or stop replicas
```

The rules:

1. Wanted = ceil(load / target per replica), for in-flight+queued and for requests/s;
   the larger wins, clamped to ``[min_replicas, max_replicas]``.
2. With zero replicas and any load: scale up at once (a cold start is already slow; the
   gateway holds the requests meanwhile).
3. Otherwise the wanted count must stay above the current one for ``scale_up_delay_s``
   (below: ``scale_down_delay_s``) before anything changes. The count then moves to the
   *least* extreme value wanted during that time (the smallest when going up, the largest
   when going down), so a one-off spike or lull inside the window cannot over-react.
4. While there was load within ``scale_to_zero_after_s``, at least one replica stays; the
   last one goes once the deployment was idle that long (``min_replicas == 0`` only).
   The idle clock only runs while a replica is ready: while the first ones are still
   starting (``warming``), a slow start cannot outlast a short idle window and be scaled
   to zero before it ever served.
5. After a control-plane restart the state starts over (`ScalingState.initial`): the
   replica count from the database, the deployment counted busy at that moment, no
   pending change. So a restart never scales a busy deployment down before the gateways'
   reports (one second apart) are back, and a change that was pending waits its full
   delay again: a restart can only delay a scaling step, never hasten one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from kaon.autoscaling.load import Load
from kaon.core.deployments import ScalingPolicy

__all__ = ["ScalingDecision", "ScalingState", "decide", "wanted"]


@dataclass(frozen=True)
class ScalingState:
    """Replicas now, the newest load, and what the policy remembers between calls.

    Where it lives: in the control plane's memory, one per deployment, in the deployment
    reconciler (`DeploymentReconciler.scaling`). Only the replica count is also in the
    database (``deployments.desired_replicas``); the rest is rebuilt by `initial` after a
    restart, which is safe by rule 5 above and tested in
    ``tests/server/reconcilers/test_deployments.py``.
    """

    replicas: int
    load: Load = Load()
    pending_since: float | None = None  # when wanted first differed from replicas
    pending_target: int | None = None  # least extreme count wanted since then
    last_busy_at: float | None = None  # last time there was any load
    warming: bool = False  # replicas are starting and none is ready yet

    @staticmethod
    def initial(replicas: int, now: float) -> ScalingState:
        """The state of a deployment first seen by this control plane (rule 5)."""
        return ScalingState(replicas=replicas, last_busy_at=now)

    def observe(
        self, load: Load, replicas: int | None = None, warming: bool = False
    ) -> ScalingState:
        """This state with fresh load (and, if it changed outside the policy, replicas)."""
        replicas = self.replicas if replicas is None else replicas
        return replace(self, load=load, replicas=replicas, warming=warming)


@dataclass(frozen=True)
class ScalingDecision:
    replicas: int
    reason: str
    state: ScalingState


def wanted(policy: ScalingPolicy, load: Load) -> int:
    """Replicas for `load` at the policy's targets, before clamping."""
    by_flight = by_rps = 0
    if policy.target_in_flight is not None:
        by_flight = math.ceil((load.in_flight + load.queued) / policy.target_in_flight)
    if policy.target_rps is not None:
        by_rps = math.ceil(load.requests_per_s / policy.target_rps - 1e-9)
    return max(by_flight, by_rps)


def decide(policy: ScalingPolicy, state: ScalingState, now: float) -> ScalingDecision:
    """The replica count for now, and the state to pass next time."""
    busy = state.load.busy
    last_busy = now if busy or state.warming else state.last_busy_at
    state = replace(state, last_busy_at=last_busy)
    floor = policy.min_replicas
    idle_for = math.inf if last_busy is None else now - last_busy
    if floor == 0 and state.replicas > 0 and idle_for < policy.scale_to_zero_after_s:
        floor = 1  # keep one warm until idle long enough
    target = min(max(wanted(policy, state.load), floor), policy.max_replicas)
    if state.replicas == 0 and busy:
        target = max(target, 1)
        return _act(state, target, f"demand with no replica: start {target} at once")
    if target == state.replicas:
        return ScalingDecision(state.replicas, "at target", _settled(state))
    if target == 0:
        return _act(state, 0, f"idle for {policy.scale_to_zero_after_s:g} s: scale to zero")
    return _pending(policy, state, target, now)


def _pending(
    policy: ScalingPolicy, state: ScalingState, target: int, now: float
) -> ScalingDecision:
    going_up = target > state.replicas
    was_up = state.pending_target is not None and state.pending_target > state.replicas
    if state.pending_since is None or state.pending_target is None or going_up != was_up:
        state = replace(state, pending_since=now, pending_target=target)
    else:
        keep = min if going_up else max  # the least extreme count wanted in the window
        state = replace(state, pending_target=keep(state.pending_target, target))
    delay = policy.scale_up_delay_s if going_up else policy.scale_down_delay_s
    assert state.pending_since is not None and state.pending_target is not None
    waited = now - state.pending_since
    if waited >= delay:
        verb = "up" if going_up else "down"
        return _act(state, state.pending_target, f"wanted {verb} for {waited:g} s")
    way = "more" if going_up else "fewer"
    return ScalingDecision(state.replicas, f"{way} wanted for {waited:g}/{delay:g} s", state)


def _act(state: ScalingState, replicas: int, reason: str) -> ScalingDecision:
    return ScalingDecision(replicas, reason, _settled(replace(state, replicas=replicas)))


def _settled(state: ScalingState) -> ScalingState:
    return replace(state, pending_since=None, pending_target=None)
