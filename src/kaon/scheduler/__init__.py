"""The pure scheduling core: the state of the pool and its workloads in, decisions out.

No I/O and no clock of its own, so the control plane's job reconciler and the trace
simulator call the very same code. `schedule(pool)` runs Kaon's policy; the baselines
(`fifo`, `easy`, `las`, `srtf`) are selected with `schedule(pool, policy=...)`.
"""

from kaon.scheduler.capacity import fits_anywhere, place_gang
from kaon.scheduler.demand import capacity_demand
from kaon.scheduler.engine import schedule
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
    POLICIES,
    EasyPolicy,
    FifoPolicy,
    KaonPolicy,
    LasPolicy,
    Policy,
    SrtfPolicy,
    get_policy,
)

__all__ = [
    "POLICIES",
    "Decisions",
    "EasyPolicy",
    "FifoPolicy",
    "KaonPolicy",
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
