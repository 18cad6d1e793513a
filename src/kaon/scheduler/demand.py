"""What an elastic pool should grow to: the capacity its autoscaler is asked for.

A Ray autoscaler sizes the cluster so that all the bundles it is asked for fit at once,
counting what already runs (``request_resources`` replaces the previous request; it is a
target, not an increment). So the request is every worker that runs in the pool now plus
every worker of the gangs that wait only for capacity (`Decisions.short_of_capacity`:
their quota admits them and nothing else holds them back). Work a quota refuses is left
out, so no workspace can make the pool grow past its quota and borrow limit; and work
that fits no node shape the autoscaler has is simply never satisfied, which its own
status reports.

A bundle is one worker: ``{"CPU": cpu, "GPU": n}``, plus the ``accelerator_type:<model>``
resource Ray gives nodes of that GPU model, when the job asks for one. Memory is left
out of the request on purpose: node types often do not declare it (Ray fills it in only
for some clouds' instance types), and a demand for a resource no node type declares is
never met; a node with the CPUs and GPUs a worker needs has had the memory so far, and
Kaon still checks memory when it places the worker.
"""

from __future__ import annotations

from kaon.scheduler.model import Decisions, PoolState, Workload

Bundle = dict[str, float]
ACCELERATOR = "accelerator_type:"


def bundle(w: Workload) -> Bundle:
    """One worker of `w` as a Ray resource bundle."""
    out: Bundle = {"CPU": w.cpu}
    if w.gpus:
        out["GPU"] = float(w.gpus)
        if w.gpu_type:
            out[ACCELERATOR + w.gpu_type] = 0.001
    return out


def capacity_demand(pool: PoolState, decisions: Decisions, domain: str) -> list[Bundle]:
    """The bundles to ask `domain`'s autoscaler for: what runs there (placed in this
    pass included, or a node that has just come up for it would look idle until its job
    starts there) and what waits for capacity (waiting work may start in any pool, so
    each elastic pool is asked for it; with one elastic pool, as usual, that is exact)."""
    nodes = {n.id for n in pool.nodes if n.domain == domain}
    out: list[Bundle] = []
    for w in pool.running:
        out += [bundle(w) for wp in w.placement if wp.node_id in nodes]
    short = set(decisions.short_of_capacity)
    placed = {p.workload_id: p.workers for p in decisions.placements}
    for w in pool.pending:
        if w.id in placed:  # placed in this very pass: it holds its node from now on
            out += [bundle(w) for wp in placed[w.id] if wp.node_id in nodes]
        elif w.id in short:
            out += [bundle(w)] * w.workers
    return out
