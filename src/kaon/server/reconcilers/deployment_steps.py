"""What to do next with a deployment's replicas: a pure function of the facts.

The reconciler gathers the facts (replicas, their jobs, health probes, the desired count),
calls `plan`, and carries the plan out. Rules:

- A replica becomes READY on its first passing health probe. Until then failed probes do
  not count (it is still loading); one that is not ready `startup_timeout_s` after it was
  created is replaced. A READY replica becomes UNHEALTHY after `failure_threshold` failed
  probes in a row, and is replaced after twice that many.
- A replica whose job ended on its own is FAILED; a new one starts 1 s after it, and
  the wait doubles with each crash in the last five minutes (1, 2, 4 ... 60 s, counted
  from the newest crash), so a crash loop does not spin.
- Scaling down or rolling out never cuts a request: a replica leaves the route table
  first (STOPPING), and only `drain_s` later is its process asked to stop (SIGTERM; the
  replica finishes what it holds).
- A rollout starts one new-generation replica at a time and drains one old replica each
  time a new one is ready, so serving capacity never drops below the desired count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kaon.core.deployments import DeploymentStatus
from kaon.core.replicas import ReplicaStatus

R = ReplicaStatus
CRASH_WINDOW = timedelta(minutes=5)
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class ReplicaFacts:
    job_id: str
    generation: int
    state: ReplicaStatus
    job_done: bool  # the replica's job reached a terminal status
    running: bool  # the job's worker runs (so it can be probed)
    probe_ok: bool | None  # None: not probed this pass
    failures: int
    created_at: datetime
    stop_at: datetime | None = None  # STOPPING: when to stop the process; FAILED: when it ended


@dataclass(frozen=True)
class DeploymentFacts:
    generation: int
    desired: int
    deleting: bool
    failure_threshold: int
    startup_timeout_s: float
    drain_s: float


@dataclass
class Plan:
    start: int = 0  # new replicas of the current generation to create
    # job -> (state, failures), for replicas whose state or failure count changed
    states: dict[str, tuple[ReplicaStatus, int]] = field(default_factory=dict)
    drain: list[str] = field(default_factory=list)  # -> STOPPING, stop after drain_s
    kill: list[str] = field(default_factory=list)  # stop the job now
    status: DeploymentStatus = DeploymentStatus.STARTING
    message: str = ""
    remove: bool = False  # deleting, and nothing is left: remove the deployment


def plan(d: DeploymentFacts, replicas: list[ReplicaFacts], now: datetime) -> Plan:
    p = Plan()
    current = {r.job_id: _observe(d, r, now, p) for r in replicas}
    live = [r for r in replicas if current[r.job_id].is_live()]
    if d.deleting:
        p.drain += [r.job_id for r in live]
        remaining = [r for r in replicas if not current[r.job_id].is_terminal()]
        p.status, p.message = DeploymentStatus.DELETING, "stopping replicas"
        p.remove = not remaining
        return p
    new = [r for r in live if r.generation == d.generation]
    old = [r for r in live if r.generation != d.generation]
    ready_new = [r for r in new if current[r.job_id] is R.READY]
    if old:
        _roll(d, new, old, ready_new, current, p)
    else:
        _scale(d, new, current, p, replicas, now)
    _status(d, replicas, new, old, ready_new, current, p, now)
    return p


def _observe(d: DeploymentFacts, r: ReplicaFacts, now: datetime, p: Plan) -> ReplicaStatus:
    """The replica's state after this pass's facts; records changes in `p`. Every move is
    checked against the replica state machine (`ReplicaStatus.check_transition`)."""
    state, failures = r.state, r.failures
    if r.job_done and not state.is_terminal():
        state = R.STOPPED if state is R.STOPPING else R.FAILED
    elif state.is_live() and r.probe_ok is True:
        state, failures = R.READY, 0
    elif state in (R.READY, R.UNHEALTHY) and r.probe_ok is False and r.running:
        failures += 1
        if state is R.READY and failures >= d.failure_threshold:
            state = R.UNHEALTHY
        if failures >= 2 * d.failure_threshold:
            state = R.FAILED
            p.kill.append(r.job_id)
    if state is R.STARTING and (now - r.created_at).total_seconds() > d.startup_timeout_s:
        state = R.FAILED
        p.kill.append(r.job_id)
    if state is R.STOPPING and r.stop_at is not None and now >= r.stop_at:
        p.kill.append(r.job_id)
    if (state, failures) != (r.state, r.failures):
        if state is not r.state:
            r.state.check_transition(state)
        p.states[r.job_id] = (state, failures)
    return state


def _roll(
    d: DeploymentFacts,
    new: list[ReplicaFacts],
    old: list[ReplicaFacts],
    ready_new: list[ReplicaFacts],
    current: dict[str, ReplicaStatus],
    p: Plan,
) -> None:
    """One new replica at a time; drain an old one for each new one that is ready."""
    not_ready_old = [r for r in old if current[r.job_id] is not R.READY]
    p.drain += [r.job_id for r in not_ready_old]  # they serve nothing: no need to wait
    ready_old = [r for r in old if current[r.job_id] is R.READY]
    starting_new = len(new) - len(ready_new)
    if starting_new == 0 and len(new) < max(d.desired, 1):
        p.start = 1
    serving = len(ready_new) + len(ready_old)
    if ready_new and ready_old and serving > d.desired:
        p.drain.append(ready_old[0].job_id)
    elif ready_new and ready_old and len(ready_new) >= d.desired:
        p.drain.append(ready_old[0].job_id)


def _scale(
    d: DeploymentFacts,
    new: list[ReplicaFacts],
    current: dict[str, ReplicaStatus],
    p: Plan,
    replicas: list[ReplicaFacts],
    now: datetime,
) -> None:
    if len(new) < d.desired:
        wait = _backoff(replicas, current, now)
        if wait <= 0:
            p.start = d.desired - len(new)
    elif len(new) > d.desired:
        order = sorted(new, key=lambda r: (current[r.job_id] is R.READY, r.created_at))
        p.drain += [r.job_id for r in order[: len(new) - d.desired]]


def _ended_at(r: ReplicaFacts, now: datetime) -> datetime:
    """When a failed replica ended: as recorded, or now for one that failed this pass."""
    return r.stop_at if r.state is R.FAILED and r.stop_at is not None else now


def _crashes(
    replicas: list[ReplicaFacts], current: dict[str, ReplicaStatus], now: datetime
) -> list[datetime]:
    """When each replica that failed in the last `CRASH_WINDOW` ended, this pass's too."""
    ended = [_ended_at(r, now) for r in replicas if current[r.job_id] is R.FAILED]
    return [at for at in ended if now - at < CRASH_WINDOW]


def _backoff(
    replicas: list[ReplicaFacts], current: dict[str, ReplicaStatus], now: datetime
) -> float:
    """Seconds to wait before starting a replica again after recent crashes: 1 s after
    the first, doubling with each one since (to 60 s), counted from the newest."""
    crashes = _crashes(replicas, current, now)
    if not crashes:
        return 0.0
    delay = min(2.0 ** (len(crashes) - 1), MAX_BACKOFF_S)
    return delay - (now - max(crashes)).total_seconds()


def _status(
    d: DeploymentFacts,
    replicas: list[ReplicaFacts],
    new: list[ReplicaFacts],
    old: list[ReplicaFacts],
    ready_new: list[ReplicaFacts],
    current: dict[str, ReplicaStatus],
    p: Plan,
    now: datetime,
) -> None:
    ready = sum(1 for s in current.values() if s is R.READY)
    crashes = _crashes(replicas, current, now)
    if old:
        p.status = DeploymentStatus.UPDATING
        p.message = (
            f"rolling out generation {d.generation}: {len(ready_new)}/{d.desired} new ready"
        )
    elif d.desired == 0 and not new:
        p.status = DeploymentStatus.SCALED_TO_ZERO
        p.message = "no replica; the next request starts one"
    elif ready >= d.desired:
        p.status, p.message = DeploymentStatus.READY, f"{ready}/{d.desired} replicas ready"
    elif crashes and ready == 0:
        p.status = DeploymentStatus.FAILING
        p.message = (
            f"{len(crashes)} replica(s) crashed in the last 5 min; "
            "see 'kaon deploy logs' for the traceback"
        )
    else:
        p.status, p.message = DeploymentStatus.STARTING, f"{ready}/{d.desired} replicas ready"
