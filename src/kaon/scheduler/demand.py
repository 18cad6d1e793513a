"""What an elastic pool should grow to: the capacity its autoscaler is asked for.

A Ray autoscaler sizes the cluster so that all the bundles it is asked for fit at once,
counting what already runs (``request_resources`` replaces the previous request; it is a
target, not an increment). So the request is every worker that runs in the pool now plus
every worker of the gangs that wait only for capacity (`Decisions.short_of_capacity`:
their quota admits them and nothing else holds them back). Work a quota refuses is left
out, so no workspace can make the pool grow past its quota and borrow limit; and work
that fits no node shape the autoscaler has is simply never satisfied, which its own
status reports.

A bundle is one worker: ``{"CPU": cpu, "memory": bytes, "GPU": n}``, plus the
``accelerator_type:<model>`` resource Ray gives nodes of that GPU model, when the job asks
for one.
"""

from __future__ import annotations

from kaon.scheduler.model import Decisions, PoolState, Workload

Bundle = dict[str, float]
ACCELERATOR = "accelerator_type:"


def bundle(w: Workload) -> Bundle:
    """One worker of `w` as a Ray resource bundle."""
    out: Bundle = {"CPU": w.cpu, "memory": float(w.memory)}
    if w.gpus:
        out["GPU"] = float(w.gpus)
        if w.gpu_type:
            out[ACCELERATOR + w.gpu_type] = 0.001
    return out


def capacity_demand(pool: PoolState, decisions: Decisions, domain: str) -> list[Bundle]:
    """The bundles to ask `domain`'s autoscaler for: what runs there and what waits for
    capacity (waiting work may start in any pool, so each elastic pool is asked for it;
    with one elastic pool, as is usual, that is exactly right)."""
    nodes = {n.id for n in pool.nodes if n.domain == domain}
    out: list[Bundle] = []
    for w in pool.running:
        out += [bundle(w) for wp in w.placement if wp.node_id in nodes]
    short = set(decisions.short_of_capacity)
    for w in pool.pending:
        if w.id in short:
            out += [bundle(w)] * w.workers
    return out
