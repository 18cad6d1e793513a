"""Choosing whom to preempt so that a waiting gang can start.

Preemption only happens when it lets the waiting job start in this very pass: the planner
picks nodes where the free capacity plus what eligible victims hold can host the gang,
preferring the nodes that need the fewest victims (and the least GPU capacity taken away),
releases those victims in the policy's victim order, and places the gang. If the gang
still does not fit, every victim is restored and nothing is preempted, so a preemption is
never speculative.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from kaon.scheduler.capacity import FreeIndex, place_gang
from kaon.scheduler.model import WorkerPlacement, Workload

_EPS = 1e-9


def plan(
    index: FreeIndex, w: Workload, victims: Sequence[Workload]
) -> tuple[tuple[WorkerPlacement, ...], list[Workload]] | None:
    """Preempt a subset of `victims` (in the given order) so that `w` fits; or None.

    On success `index` holds `w`'s placement and no longer holds the chosen victims.
    """
    by_node: dict[int, list[tuple[int, Workload]]] = defaultdict(list)  # (rank, victim)
    for rank, v in enumerate(victims):
        for i in index.hosts(v):
            if index.listed[i]:
                by_node[i].append((rank, v))
    options = [opt for i, vs in by_node.items() if (opt := _node_option(index, w, i, vs))]
    if not options:
        return None
    elsewhere = 0
    if w.workers > 1:  # free nodes without victims take part of a big gang for free
        elsewhere = sum(
            index.capacity(i, w)
            for bucket in index.buckets[max(w.gpus, 1) :]
            for i in bucket
            if i not in by_node
        )
    chosen = _choose(options, w.workers - elsewhere)
    if chosen is None:
        return None
    released: list[Workload] = []
    seen: set[str] = set()
    for v in chosen:
        if v.id not in seen:
            seen.add(v.id)
            index.release(v)
            released.append(v)
    placed = place_gang(index, w)
    if placed is None:
        for v in reversed(released):
            index.claim(v)
        return None
    return placed, released


_Option = tuple[tuple[int, int, float], int, list[Workload]]  # (cost, workers, victims)


def _node_option(
    index: FreeIndex, w: Workload, i: int, vs: list[tuple[int, Workload]]
) -> _Option | None:
    """The fewest victims on node `i` (a prefix, in victim order) that make the most room.

    Its cost: how many victims, then how far down the victim order it had to go, then the
    GPUs taken away; so the cheapest node is the one that hurts the fewest, least
    deserving jobs."""
    gpus, cpu, memory = len(index.gpus[i]), index.cpu[i], index.memory[i]
    node_id = index.nodes[i].id
    best: _Option | None = None
    taken: list[Workload] = []
    taken_gpus = 0
    for rank, v in vs:
        # workers of `v` on this node: it has one here, and most victims have one worker
        share = 1 if len(v.placement) == 1 else sum(wp.node_id == node_id for wp in v.placement)
        gpus += v.gpus * share
        cpu += v.cpu * share
        memory += v.memory * share
        taken.append(v)
        taken_gpus += v.total_gpus
        hosted = _hosted(w, gpus, cpu, memory)
        if hosted and (best is None or hosted > best[1]):
            cost = (len(taken), rank, float(taken_gpus))
            best = (cost, hosted, list(taken))
        if hosted >= w.workers:
            break
    return best


def _hosted(w: Workload, gpus: int, cpu: float, memory: int) -> int:
    """Workers of `w` that fit in this much room. Called once per candidate victim on
    every node a plan looks at, so comparisons stand in for `min` and `max` calls."""
    cap = w.workers
    if w.gpus and gpus // w.gpus < cap:
        cap = gpus // w.gpus
    if w.cpu > 0 and int((cpu + _EPS) // w.cpu) < cap:
        cap = int((cpu + _EPS) // w.cpu)
    if w.memory > 0 and memory // w.memory < cap:
        cap = memory // w.memory
    return cap if cap > 0 else 0


def _choose(options: list[_Option], workers: int) -> list[Workload] | None:
    """Cheapest single node that hosts the whole gang; else the most room per victim."""
    if workers <= 0:
        return []
    whole = [opt for opt in options if opt[1] >= workers]
    if whole:
        return min(whole, key=lambda opt: opt[0])[2]
    chosen: list[Workload] = []
    hosted = 0
    for _, n, vs in sorted(options, key=lambda opt: (opt[0][0] / opt[1], opt[0])):
        chosen.extend(vs)
        hosted += n
        if hosted >= workers:
            return chosen
    return None
