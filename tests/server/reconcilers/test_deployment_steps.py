"""`deployment_steps.plan`: the deployment reconciler's pure decision, one rule per row.

Each row gives the deployment (desired count, generation), its replicas as observed
(state, generation, probe result, whether its job ended), and what the plan must say:
replicas to start, state changes, drains, kills, and the deployment's status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from kaon.core.deployments import DeploymentStatus
from kaon.core.replicas import ReplicaStatus
from kaon.server.reconcilers.deployment_steps import DeploymentFacts, ReplicaFacts, plan

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
R, D = ReplicaStatus, DeploymentStatus


def rep(
    name: str,
    state: ReplicaStatus = R.READY,
    gen: int = 1,
    probe: bool | None = True,
    done: bool = False,
    running: bool = True,
    failures: int = 0,
    age_s: float = 30,
    stop_in_s: float | None = None,
    ended_s_ago: float | None = None,
) -> ReplicaFacts:
    stop_at = None
    if stop_in_s is not None:
        stop_at = NOW + timedelta(seconds=stop_in_s)
    if ended_s_ago is not None:
        stop_at = NOW - timedelta(seconds=ended_s_ago)
    return ReplicaFacts(
        job_id=name,
        generation=gen,
        state=state,
        job_done=done,
        running=running,
        probe_ok=probe,
        failures=failures,
        created_at=NOW - timedelta(seconds=age_s),
        stop_at=stop_at,
    )


def dep(desired: int = 1, gen: int = 1, deleting: bool = False) -> DeploymentFacts:
    return DeploymentFacts(
        generation=gen, desired=desired, deleting=deleting, failure_threshold=2,
        startup_timeout_s=60, drain_s=1.5,
    )  # fmt: skip


@dataclass
class Want:
    start: int = 0
    states: dict[str, tuple[ReplicaStatus, int]] = field(default_factory=dict)
    drain: list[str] = field(default_factory=list)
    kill: list[str] = field(default_factory=list)
    status: DeploymentStatus | None = None
    remove: bool = False


ROWS = [
    # -- scaling, one generation --
    ("nothing yet: start the desired count", dep(2), [], Want(start=2, status=D.STARTING)),
    ("at the desired count and ready", dep(1), [rep("a")], Want(status=D.READY)),
    (
        "too many: drain the youngest not-ready first",
        dep(1),
        [rep("a"), rep("b", R.STARTING, probe=None, age_s=5)],
        Want(drain=["b"], status=D.READY),
    ),
    (
        "scaled to zero",
        dep(0),
        [],
        Want(status=D.SCALED_TO_ZERO),
    ),
    # -- health --
    (
        "first passing probe: ready",
        dep(1),
        [rep("a", R.STARTING)],
        Want(states={"a": (R.READY, 0)}, status=D.READY),
    ),
    (
        "a starting replica's failed probes do not count (still loading)",
        dep(1),
        [rep("a", R.STARTING, probe=False)],
        Want(status=D.STARTING),
    ),
    (
        "failures in a row: unhealthy at the threshold",
        dep(1),
        [rep("a", R.READY, probe=False, failures=1)],
        Want(states={"a": (R.UNHEALTHY, 2)}, start=0, status=D.STARTING),
    ),
    (
        "twice the threshold: failed, killed, and a new one after the back-off",
        dep(1),
        [rep("a", R.UNHEALTHY, probe=False, failures=3)],
        Want(states={"a": (R.FAILED, 4)}, kill=["a"], status=D.FAILING),
    ),
    (
        "healthy again",
        dep(1),
        [rep("a", R.UNHEALTHY, probe=True, failures=2)],
        Want(states={"a": (R.READY, 0)}, status=D.READY),
    ),
    (
        "never ready within the startup timeout: failed and killed",
        dep(1),
        [rep("a", R.STARTING, probe=False, age_s=61)],
        Want(states={"a": (R.FAILED, 0)}, kill=["a"], status=D.FAILING),
    ),
    # -- crashes and back-off --
    (
        "its job ended on its own: failed, replaced after 1 s",
        dep(1),
        [rep("a", R.READY, done=True, probe=None)],
        Want(states={"a": (R.FAILED, 0)}, status=D.FAILING),
    ),
    (
        "1 s after one crash: start again",
        dep(1),
        [rep("a", R.FAILED, probe=None, done=True, ended_s_ago=1.1)],
        Want(start=1, status=D.FAILING),
    ),
    (
        "three crashes in 5 min: wait 4 s after the newest",
        dep(1),
        [
            rep("a", R.FAILED, probe=None, done=True, ended_s_ago=60),
            rep("b", R.FAILED, probe=None, done=True, ended_s_ago=30),
            rep("c", R.FAILED, probe=None, done=True, ended_s_ago=3),
        ],
        Want(status=D.FAILING),
    ),
    (
        "crashes older than 5 min are forgotten",
        dep(1),
        [rep("a", R.FAILED, probe=None, done=True, ended_s_ago=301)],
        Want(start=1, status=D.STARTING),
    ),
    # -- draining --
    (
        "a drained replica is stopped once its drain time is up",
        dep(1),
        [rep("a"), rep("b", R.STOPPING, probe=None, stop_in_s=-0.1)],
        Want(kill=["b"], status=D.READY),
    ),
    (
        "... and not before",
        dep(1),
        [rep("a"), rep("b", R.STOPPING, probe=None, stop_in_s=1)],
        Want(status=D.READY),
    ),
    (
        "a stopping replica whose job ended is stopped",
        dep(1),
        [rep("a"), rep("b", R.STOPPING, probe=None, done=True)],
        Want(states={"b": (R.STOPPED, 0)}, status=D.READY),
    ),
    # -- rolling update --
    (
        "a new generation: start one new replica, keep the old serving",
        dep(2, gen=2),
        [rep("a"), rep("b")],
        Want(start=1, status=D.UPDATING),
    ),
    (
        "one new replica at a time",
        dep(2, gen=2),
        [rep("a"), rep("b"), rep("n1", R.STARTING, gen=2, probe=False)],
        Want(status=D.UPDATING),
    ),
    (
        "a new one ready: drain one old one, start the next new one",
        dep(2, gen=2),
        [rep("a"), rep("b"), rep("n1", R.READY, gen=2)],
        Want(drain=["a"], start=1, status=D.UPDATING),
    ),
    (
        "old replicas that serve nothing are drained at once",
        dep(1, gen=2),
        [rep("a", R.STARTING, probe=None), rep("n1", R.STARTING, gen=2, probe=None)],
        Want(drain=["a"], status=D.UPDATING),
    ),
    # -- deleting --
    (
        "deleting: drain everything live",
        dep(0, deleting=True),
        [rep("a"), rep("b", R.STARTING, probe=None)],
        Want(drain=["a", "b"], status=D.DELETING),
    ),
    (
        "deleting and nothing left: remove the deployment",
        dep(0, deleting=True),
        [rep("a", R.STOPPED, probe=None, done=True)],
        Want(status=D.DELETING, remove=True),
    ),
]


@pytest.mark.parametrize(("rule", "d", "replicas", "want"), ROWS, ids=[r[0] for r in ROWS])
def test_plan(rule: str, d: DeploymentFacts, replicas: list[ReplicaFacts], want: Want) -> None:
    p = plan(d, replicas, NOW)
    got = Want(p.start, p.states, sorted(p.drain), sorted(p.kill), p.status, p.remove)
    assert got == Want(
        want.start, want.states, sorted(want.drain), sorted(want.kill), want.status, want.remove
    ), rule
