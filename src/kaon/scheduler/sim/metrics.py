"""The numbers a replay is judged by, from a `SimResult`.

* JCT: finish minus submit. Queueing delay: JCT minus run time, i.e. every second a job
  was not making progress (waiting first, waiting again after a preemption, and restart
  penalties), so a policy cannot hide waits behind preemptions.
* `jain_fairness`: Jain's index over the tenants' mean slowdown (JCT / run time); 1 when
  every tenant's jobs are slowed down alike.
* `quota_guarantee`: for each tenant, the fraction of the time it had waiting jobs during
  which its quota was honoured, i.e. it held at least min(quota, demand): no waiting job
  of it would have fitted in its unused quota (gangs make quota lumpy, so a job bigger
  than the unused quota does not count against the scheduler). The worst tenant's value.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from kaon.scheduler.sim.simulator import SimResult


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, as numpy's default."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def jain(values: list[float]) -> float:
    """Jain's fairness index: (sum x)^2 / (n sum x^2), 1 for perfectly equal values."""
    if not values:
        return 1.0
    squares = sum(v * v for v in values)
    return sum(values) ** 2 / (len(values) * squares) if squares else 1.0


def busy_until(result: SimResult, end: float) -> float:
    """Allocated GPU-seconds from the first instant up to `end` (a step function)."""
    s = result.series
    total = 0.0
    for i in range(len(s.t) - 1):
        if s.t[i] >= end:
            break
        total += s.busy_gpus[i] * (min(s.t[i + 1], end) - s.t[i])
    return total


def summarize(result: SimResult, policy: str) -> dict[str, Any]:
    """The metrics of one replay as a flat, JSON-ready dict."""
    done = [j for j in result.jobs if j.finish is not None]
    jct = [j.finish - j.spec.submit for j in done if j.finish is not None]
    delay = [max(c - j.spec.duration, 0.0) for c, j in zip(jct, done, strict=True)]
    start = min((j.spec.submit for j in result.jobs), default=0.0)
    end = max((j.finish for j in done if j.finish is not None), default=start)
    makespan = end - start
    last_submit = max((j.spec.submit for j in result.jobs), default=start)
    window = (last_submit - start) * result.total_gpus
    offered = sum(j.spec.gpu_time for j in result.jobs)
    slowdown: dict[str, list[float]] = defaultdict(list)
    for c, j in zip(jct, done, strict=True):
        slowdown[j.spec.tenant].append(c / j.spec.duration)
    waits: dict[str, list[float]] = defaultdict(list)
    for d, j in zip(delay, done, strict=True):
        waits[j.spec.tenant].append(d)
    per_tenant = {t: sum(v) / len(v) for t, v in sorted(slowdown.items())}
    return {
        "policy": policy,
        "jobs": len(done),
        "rejected": len(result.rejected),
        "gpus": result.total_gpus,
        "avg_jct_s": sum(jct) / len(jct) if jct else 0.0,
        "p50_jct_s": percentile(jct, 50),
        "p99_jct_s": percentile(jct, 99),
        "avg_queue_delay_s": sum(delay) / len(delay) if delay else 0.0,
        "p99_queue_delay_s": percentile(delay, 99),
        "makespan_s": makespan,
        "gpu_utilization": result.busy_gpu_s / (result.total_gpus * makespan) if makespan else 0.0,
        "arrival_window_utilization": busy_until(result, last_submit) / window if window else 0.0,
        "offered_load": offered / window if window else 0.0,
        "jain_fairness": jain(list(per_tenant.values())),
        "quota_guarantee": min(result.guarantee.values(), default=1.0),
        "preemptions": result.preemptions,
        "scheduling_passes": result.passes,
        "tenant_mean_slowdown": per_tenant,
        "tenant_jobs": {t: len(v) for t, v in sorted(waits.items())},
        "tenant_quota_gpus": dict(sorted(result.quotas.items())),
        "tenant_avg_queue_delay_s": {t: sum(v) / len(v) for t, v in sorted(waits.items())},
        "tenant_quota_guarantee": dict(sorted(result.guarantee.items())),
    }
