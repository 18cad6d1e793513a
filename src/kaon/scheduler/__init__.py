"""The pure scheduling core: a snapshot of the pool and the workloads in, decisions out.

No I/O and no clock of its own, so the control plane's job reconciler and the trace
simulator call the very same code. `schedule(snapshot)` runs Kaon's policy; the baselines
(`fifo`, `easy`, `las`, `srtf`) are selected with `schedule(snapshot, policy=...)`.
"""

from kaon.scheduler.capacity import fits_anywhere, place_gang
from kaon.scheduler.model import (
    Decisions,
    NodeSnapshot,
    Placement,
    Preemption,
    Quota,
    Snapshot,
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
from kaon.scheduler.policy import schedule

__all__ = [
    "POLICIES",
    "Decisions",
    "EasyPolicy",
    "FifoPolicy",
    "KaonPolicy",
    "LasPolicy",
    "NodeSnapshot",
    "Placement",
    "Policy",
    "Preemption",
    "Quota",
    "Snapshot",
    "SrtfPolicy",
    "WorkerPlacement",
    "Workload",
    "fits_anywhere",
    "get_policy",
    "place_gang",
    "schedule",
]
