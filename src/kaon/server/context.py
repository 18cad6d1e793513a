"""What every request of one control plane shares, built once by `create_app`."""

from __future__ import annotations

from dataclasses import dataclass, field

from kaon.autoscaling import LoadBoard
from kaon.executors.pools import Pools
from kaon.server.config import Settings
from kaon.server.db.session import Database
from kaon.server.reconcilers.deployments import DeploymentReconciler
from kaon.server.reconcilers.jobs import JobReconciler
from kaon.server.reconcilers.pools import PoolReconciler
from kaon.server.reconcilers.usage import UsageRetention
from kaon.server.services.gateway import RouteVersions
from kaon.server.services.history import PoolHistory
from kaon.server.services.timeline import DeploymentTimeline
from kaon.server.wake import Wake


@dataclass(frozen=True)
class ControlPlane:
    """The control plane's parts: the database, the executors (one per pool, behind one
    interface), the reconcilers and the little state that lives in memory (the gateways'
    load reports, route versions)."""

    settings: Settings
    db: Database
    executor: Pools
    jobs: JobReconciler
    pools: PoolReconciler
    deployments: DeploymentReconciler
    loads: LoadBoard
    routes: RouteVersions
    usage: UsageRetention
    timeline: DeploymentTimeline = field(default_factory=DeploymentTimeline)  # console charts
    history: PoolHistory = field(default_factory=PoolHistory.from_env)  # the pool over a day

    @property
    def wake(self) -> Wake:
        return Wake(jobs=self.jobs.poke, deployments=self.deployments.poke, pools=self.pools.poke)
