"""Reservations for the job at the head of the queue, so backfill cannot delay it.

Two flavours, one per policy family:

* EASY (`easy_reservation`) knows walltime estimates: it replays the running jobs'
  estimated ends until the head fits, which gives the head's "shadow" start time and the
  nodes it will start on. A job behind the head may start on those nodes only if its own
  estimate ends before the shadow time; elsewhere it may start freely.
* Kaon (`drain_reservation`) knows no durations, so it cannot promise a time. It picks
  the nodes closest to hosting the head (most free GPUs first, fewest nodes) and holds
  them: nothing behind the head is placed there, so they drain toward the head and no
  backfilled job can stand in its way. The head may also preempt lower-ranked work on
  them under the usual preemption rules. The choice is recomputed every pass from the
  pool, and it is stable: held nodes only gain free GPUs, so they stay the closest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from kaon.scheduler.capacity import FreeIndex
from kaon.scheduler.model import Workload
from kaon.scheduler.preempt import _hosted


def estimated_end(v: Workload, now: float) -> float:
    """When running job `v` should end by its walltime estimate (inf without one)."""
    if v.walltime_s is None:
        return math.inf
    done = v.attained(now) / max(v.total_gpus, 1)
    return now + max(v.walltime_s - done, 1.0)


def easy_reservation(
    index: FreeIndex, head: Workload, running: Iterable[Workload], now: float
) -> tuple[float, list[int]]:
    """The head's shadow start time and the nodes it will use then (EASY backfill)."""
    nodes = [i for i in range(len(index.nodes)) if index.listed[i]]
    gpus = {i: len(index.gpus[i]) for i in nodes}
    cpu = {i: index.cpu[i] for i in nodes}
    memory = {i: index.memory[i] for i in nodes}
    cap = {i: _hosted(head, gpus[i], cpu[i], memory[i]) for i in nodes}
    total = sum(cap.values())
    shadow = math.inf
    for end, v in sorted(((estimated_end(v, now), v) for v in running), key=lambda e: e[0]):
        if total >= head.workers or math.isinf(end):
            break
        shadow = end
        for wp in v.placement:
            i = index.by_id.get(wp.node_id, -1)
            if i in cap:
                gpus[i] += len(wp.gpus)
                cpu[i] += v.cpu
                memory[i] += v.memory
                new = _hosted(head, gpus[i], cpu[i], memory[i])
                total += new - cap[i]
                cap[i] = new
    if total < head.workers:
        shadow = math.inf
    return shadow, _fewest(cap, head.workers)


def drain_reservation(index: FreeIndex, head: Workload) -> list[int]:
    """The nodes to hold for `head`: closest to hosting it first, as few as possible."""
    cap: dict[int, int] = {}
    order = sorted(
        (i for i in range(len(index.nodes)) if index.listed[i]),
        key=lambda i: (-len(index.gpus[i]), i),
    )
    for i in order:
        n = index.nodes[i]
        drained = _hosted(head, len(n.gpus), n.cpu, n.memory) if _matches(index, i, head) else 0
        if drained:
            cap[i] = drained
        if sum(cap.values()) >= head.workers:
            break
    return list(cap) if sum(cap.values()) >= head.workers else []


def _matches(index: FreeIndex, i: int, w: Workload) -> bool:
    node = index.nodes[i]
    if w.gpu_type is not None and w.gpu_type != node.gpu_type:
        return False
    return all(item in node.labels for item in w.labels)


def _fewest(cap: dict[int, int], workers: int) -> list[int]:
    """The fewest nodes (largest capacity first) that together host `workers` workers."""
    chosen: list[int] = []
    hosted = 0
    for i in sorted(cap, key=lambda i: (-cap[i], i)):
        if hosted >= workers or not cap[i]:
            break
        chosen.append(i)
        hosted += cap[i]
    return chosen
