"""Free capacity of the pool during one pass, and gang placement on it.

A pass places thousands of jobs on up to a thousand nodes, so the free capacity is kept
in a form that answers "the best node for k workers of this job" without scanning every
node: schedulable nodes sit in buckets by their number of free GPUs, each bucket a list
of node positions kept sorted (so the choice is deterministic). Best fit is then "the
first fitting node in the smallest bucket that holds enough GPUs", and "no node has room"
is often known from two counters (total free GPUs, largest non-empty bucket) without
looking at a node at all.

Gang placement is all or nothing. A gang that fits on one node goes on the fullest node
that still fits it (best fit, which keeps big holes for big jobs). A larger gang takes
whole nodes, largest first, so it spans the fewest nodes, and its tail goes best-fit,
all within one network domain (a pool of nodes that reach each other).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import replace

from kaon.scheduler.model import NodeCapacity, WorkerPlacement, Workload

_EPS = 1e-9


class FreeIndex:
    """Mutable free CPUs, memory and GPU indices of every node, bucketed by free GPUs."""

    def __init__(self, nodes: tuple[NodeCapacity, ...]) -> None:
        self.nodes = nodes
        self.by_id = {n.id: i for i, n in enumerate(nodes)}
        self.cpu = [n.cpu_free for n in nodes]
        self.memory = [n.memory_free for n in nodes]
        self.gpus = [sorted(n.gpus_free) for n in nodes]
        top = max((len(n.gpus) for n in nodes), default=0)
        top = max([top, *(len(g) for g in self.gpus)])
        self.buckets: list[list[int]] = [[] for _ in range(top + 1)]
        self.listed = [False] * len(nodes)  # False: unschedulable or held for a reservation
        self.domains = sorted({n.domain for n in nodes})
        self.only_domain: str | None = None  # set while a gang is spread over one domain
        self.free_gpus = 0
        self._hosts: dict[str, tuple[Workload, tuple[int, ...]]] = {}
        for i, n in enumerate(nodes):
            if n.schedulable:
                self._list(i)

    def hosts(self, w: Workload) -> tuple[int, ...]:
        """The positions of the nodes running workload `w` hosts workers on, each once.
        Remembered per workload: each preemption plan of a pass asks it of every candidate
        victim, and placements of running work do not change within a pass."""
        entry = self._hosts.get(w.id)
        if entry is None or entry[0] is not w:
            nodes = {self.by_id[wp.node_id] for wp in w.placement if wp.node_id in self.by_id}
            entry = self._hosts[w.id] = (w, tuple(nodes))
        return entry[1]

    # -- bucket bookkeeping ---------------------------------------------------------

    def _list(self, i: int) -> None:
        insort(self.buckets[len(self.gpus[i])], i)
        self.listed[i] = True
        self.free_gpus += len(self.gpus[i])

    def _unlist(self, i: int) -> None:
        bucket = self.buckets[len(self.gpus[i])]
        del bucket[bisect_left(bucket, i)]
        self.listed[i] = False
        self.free_gpus -= len(self.gpus[i])

    def hold(self, i: int) -> None:
        """Hide node `i` from later placements in this pass (a reservation)."""
        if self.listed[i]:
            self._unlist(i)

    def unhold(self, i: int) -> None:
        """Undo `hold`."""
        if not self.listed[i] and self.nodes[i].schedulable:
            self._list(i)

    def largest_free(self) -> int:
        """The most free GPUs on any one listed node."""
        for k in range(len(self.buckets) - 1, 0, -1):
            if self.buckets[k]:
                return k
        return 0

    # -- fitting ----------------------------------------------------------------------

    def capacity(self, i: int, w: Workload) -> int:
        """How many workers of `w` node `i` can host now (0 if it does not match)."""
        node = self.nodes[i]
        if w.gpu_type is not None and w.gpu_type != node.gpu_type:
            return 0
        if self.only_domain is not None and node.domain != self.only_domain:
            return 0
        if w.labels and not all(item in node.labels for item in w.labels):
            return 0
        cap = w.workers
        if w.gpus:
            cap = min(cap, len(self.gpus[i]) // w.gpus)
        if w.cpu > 0:
            cap = min(cap, int((self.cpu[i] + _EPS) // w.cpu))
        if w.memory > 0:
            cap = min(cap, self.memory[i] // w.memory)
        return max(cap, 0)

    def best_fit(self, w: Workload, k: int) -> int | None:
        """The fullest listed node that hosts `k` workers of `w`, or None."""
        start = k * w.gpus
        if start >= len(self.buckets):
            return None
        for bucket in self.buckets[start:]:
            for i in bucket:
                if self.capacity(i, w) >= k:
                    return i
        return None

    def roomiest(self, w: Workload) -> tuple[int, int] | None:
        """The listed node that hosts the most workers of `w`: (position, how many)."""
        best: tuple[int, int] | None = None
        for k in range(len(self.buckets) - 1, w.gpus - 1, -1):
            for i in self.buckets[k]:
                cap = self.capacity(i, w)
                if cap and (best is None or cap > best[1]):
                    best = (i, cap)
            if best is not None and w.gpus:
                return best  # a smaller bucket cannot host more GPU workers
        return best

    # -- changing capacity ------------------------------------------------------------

    def take(self, i: int, w: Workload, k: int) -> list[WorkerPlacement]:
        """Give `k` workers of `w` node `i`'s lowest free GPU indices."""
        listed = self.listed[i]
        if listed:
            self._unlist(i)
        out = []
        for _ in range(k):
            taken, self.gpus[i] = self.gpus[i][: w.gpus], self.gpus[i][w.gpus :]
            out.append(WorkerPlacement(self.nodes[i].id, tuple(taken)))
        self.cpu[i] -= w.cpu * k
        self.memory[i] -= w.memory * k
        if listed:
            self._list(i)
        return out

    def release(self, w: Workload) -> None:
        """Give back everything running workload `w` holds (it is being preempted)."""
        self._apply(w, +1)

    def claim(self, w: Workload) -> None:
        """Undo `release`: `w` holds its placement again."""
        self._apply(w, -1)

    def _apply(self, w: Workload, sign: int) -> None:
        for wp in w.placement:
            i = self.by_id.get(wp.node_id)
            if i is None:
                continue
            listed = self.listed[i]
            if listed:
                self._unlist(i)
            self.cpu[i] += sign * w.cpu
            self.memory[i] += sign * w.memory
            if sign > 0:
                self.gpus[i] = sorted({*self.gpus[i], *wp.gpus})
            else:
                self.gpus[i] = [g for g in self.gpus[i] if g not in wp.gpus]
            if listed:
                self._list(i)


def place_gang(index: FreeIndex, w: Workload) -> tuple[WorkerPlacement, ...] | None:
    """Place every worker of `w`, or none: one node if it fits, else the fewest nodes.

    On success `index` is updated; on failure it is left as it was.
    """
    if w.total_gpus > index.free_gpus:
        return None
    if w.workers == 1 or w.total_gpus <= index.largest_free():
        i = index.best_fit(w, w.workers)
        if i is not None:
            return tuple(index.take(i, w, w.workers))
        if w.workers == 1:
            return None
    if len(index.domains) == 1:
        return _spread(index, w)
    for domain in index.domains:  # a gang spans nodes of one domain only
        index.only_domain = domain
        try:
            placed = _spread(index, w)
        finally:
            index.only_domain = None
        if placed is not None:
            return placed
    return None


def _spread(index: FreeIndex, w: Workload) -> tuple[WorkerPlacement, ...] | None:
    """Whole nodes first, largest first; the remainder on the best-fitting node."""
    done: list[tuple[int, list[WorkerPlacement]]] = []
    remaining = w.workers
    while remaining:
        i = index.best_fit(w, remaining)
        if i is not None:
            done.append((i, index.take(i, w, remaining)))
            break
        roomiest = index.roomiest(w)
        if roomiest is None:
            _undo(index, w, done)
            return None
        i, cap = roomiest
        done.append((i, index.take(i, w, min(cap, remaining))))
        remaining -= min(cap, remaining)
    return tuple(wp for _, wps in done for wp in wps)


def _undo(index: FreeIndex, w: Workload, done: list[tuple[int, list[WorkerPlacement]]]) -> None:
    for _, wps in done:
        index.release(replace(w, workers=len(wps), placement=tuple(wps)))


def fits_anywhere(nodes: tuple[NodeCapacity, ...], w: Workload) -> bool:
    """Could the gang fit on an empty pool? False means it must be rejected, not queued."""
    empty = tuple(
        replace(n, cpu_free=n.cpu, memory_free=n.memory, gpus_free=n.gpus)
        for n in nodes
        if n.schedulable
    )
    return place_gang(FreeIndex(empty), w) is not None
