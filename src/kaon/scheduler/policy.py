"""Scheduling policies. `schedule(snapshot)` is the one entry point the control plane uses.

This first policy is priority, then FIFO, with gang placement that never over-commits a
node: the whole gang fits or nothing is placed. A job that does not fit blocks the jobs
behind it (no backfill yet), so big jobs are not starved by a stream of small ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kaon.scheduler.model import (
    Decisions,
    NodeSnapshot,
    Placement,
    Snapshot,
    WorkerPlacement,
    Workload,
)


@dataclass
class _Free:
    """Mutable free capacity of one node during a pass."""

    node: NodeSnapshot
    cpu: float
    memory: int
    gpus: list[int]

    def fits(self, w: Workload) -> bool:
        return (
            self.node.schedulable
            and w.cpu <= self.cpu + 1e-9
            and w.memory <= self.memory
            and w.gpus <= len(self.gpus)
            and (w.gpu_type is None or w.gpu_type == self.node.gpu_type)
            and all(item in self.node.labels for item in w.labels)
        )

    def take(self, w: Workload) -> WorkerPlacement:
        self.cpu -= w.cpu
        self.memory -= w.memory
        taken, self.gpus = self.gpus[: w.gpus], self.gpus[w.gpus :]
        return WorkerPlacement(self.node.id, tuple(taken))


def _free_map(nodes: tuple[NodeSnapshot, ...]) -> list[_Free]:
    return [_Free(n, n.cpu_free, n.memory_free, sorted(n.gpus_free)) for n in nodes]


def place_gang(free: list[_Free], w: Workload) -> tuple[WorkerPlacement, ...] | None:
    """Place every worker of `w`, or none. Prefers one node, then the fewest nodes.

    On success `free` is updated; on failure it is left as it was.
    """
    saved = [(f.cpu, f.memory, list(f.gpus)) for f in free]
    order = sorted(free, key=lambda f: (-_capacity_for(f, w), len(f.gpus), f.cpu))
    placed: list[WorkerPlacement] = []
    for f in order:
        while len(placed) < w.workers and f.fits(w):
            placed.append(f.take(w))
        if len(placed) == w.workers:
            return tuple(placed)
    for f, (cpu, memory, gpus) in zip(free, saved, strict=True):
        f.cpu, f.memory, f.gpus = cpu, memory, gpus
    return None


def _capacity_for(f: _Free, w: Workload) -> int:
    """How many workers of `w` fit on this node (capped at the gang size)."""
    if not f.fits(w):
        return 0
    limits = [w.workers, int((f.cpu + 1e-9) // w.cpu) if w.cpu else w.workers]
    limits.append(f.memory // w.memory if w.memory else w.workers)
    if w.gpus:
        limits.append(len(f.gpus) // w.gpus)
    return max(0, min(limits))


def fits_anywhere(nodes: tuple[NodeSnapshot, ...], w: Workload) -> bool:
    """Could the gang fit on an empty pool? False means it must be rejected, not queued."""
    empty = tuple(
        replace(n, cpu_free=n.cpu, memory_free=n.memory, gpus_free=n.gpus) for n in nodes
    )
    return place_gang(_free_map(empty), w) is not None


def schedule(snapshot: Snapshot) -> Decisions:
    """Priority first, then submit time; place whole gangs; stop at the first that waits."""
    free = _free_map(snapshot.nodes)
    placements: list[Placement] = []
    waiting: dict[str, str] = {}
    queue = sorted(snapshot.pending, key=lambda w: (-w.priority, w.submitted_at, w.id))
    blocked = False
    for w in queue:
        if w.not_before is not None and w.not_before > snapshot.now:
            waiting[w.id] = "backing off before a retry"
            continue
        if blocked:
            waiting[w.id] = "behind an earlier job that does not fit yet"
            continue
        workers = place_gang(free, w)
        if workers is None:
            waiting[w.id] = "no node has room for the whole gang yet"
            blocked = True
            continue
        placements.append(Placement(w.id, workers))
    return Decisions(placements=tuple(placements), waiting=waiting)
