"""The pure scheduling core: a snapshot of the pool and the workloads in, decisions out.

No I/O and no clock of its own, so the control plane's job reconciler and the trace
simulator call the very same code.
"""

from kaon.scheduler.model import (
    Decisions,
    NodeSnapshot,
    Placement,
    Preemption,
    Snapshot,
    WorkerPlacement,
    Workload,
)
from kaon.scheduler.policy import schedule

__all__ = [
    "Decisions",
    "NodeSnapshot",
    "Placement",
    "Preemption",
    "Snapshot",
    "WorkerPlacement",
    "Workload",
    "schedule",
]
