"""The pure scheduling core: the state of the pool and its workloads in, decisions out.

No I/O and no clock of its own, so the control plane's job reconciler and the trace
simulator call the very same code. `schedule(pool)` runs Kaon's policy; the baselines
(`fifo`, `easy`, `las`, `gittins`, `srtf`, and the quota-aware `kueue`, `kueue-fair`
and `kai`) are selected with `schedule(pool, policy=...)`.
"""

from kaon.scheduler.capacity import fits_anywhere, place_gang
from kaon.scheduler.catalog import POLICIES, get_policy
from kaon.scheduler.demand import capacity_demand
from kaon.scheduler.engine import schedule
from kaon.scheduler.gittins import GittinsPolicy
from kaon.scheduler.model import (
    Decisions,
    NodeCapacity,
    Placement,
    PoolState,
    Preemption,
    Quota,
    WorkerPlacement,
    Workload,
)
from kaon.scheduler.policies import (
    EasyPolicy,
    FifoPolicy,
    KaonPolicy,
    LasPolicy,
    Policy,
    SrtfPolicy,
)
from kaon.scheduler.sharing import KaiPolicy, KueueFairPolicy, KueuePolicy

__all__ = [
    "POLICIES",
    "Decisions",
    "EasyPolicy",
    "FifoPolicy",
    "GittinsPolicy",
    "KaiPolicy",
    "KaonPolicy",
    "KueueFairPolicy",
    "KueuePolicy",
    "LasPolicy",
    "NodeCapacity",
    "Placement",
    "Policy",
    "Preemption",
    "Quota",
    "PoolState",
    "SrtfPolicy",
    "WorkerPlacement",
    "Workload",
    "capacity_demand",
    "fits_anywhere",
    "get_policy",
    "place_gang",
    "schedule",
]
