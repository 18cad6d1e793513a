"""Queue length and GPU utilization over time, one line per policy (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from kaon.scheduler.sim.simulator import SimResult

_HOUR = 3600.0


def _step_series(
    result: SimResult, points: int = 2000
) -> tuple[list[float], list[int], list[float]]:
    """Down-sample to about `points` samples (the last state of each bucket), in hours."""
    s = result.series
    if not s.t:
        return [], [], []
    stride = max(len(s.t) // points, 1)
    idx = range(0, len(s.t), stride)
    hours = [s.t[i] / _HOUR for i in idx]
    queued = [s.queued[i] for i in idx]
    util = [s.busy_gpus[i] / result.total_gpus for i in idx]
    return hours, queued, util


def _last_busy_hour(results: dict[str, SimResult]) -> float | None:
    """The last hour at which any policy still had a job waiting or most GPUs busy."""
    ends = [
        t / _HOUR
        for r in results.values()
        for t, q, b in zip(r.series.t, r.series.queued, r.series.busy_gpus, strict=True)
        if q > 0 or b > r.total_gpus / 4
    ]
    return max(ends) if ends else None


def plot(results: dict[str, SimResult], out: Path | str, title: str = "") -> None:
    """Write a two-panel PNG: jobs waiting, and the fraction of GPUs allocated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for name, result in results.items():
        hours, queued, util = _step_series(result)
        top.step(hours, queued, where="post", label=name, linewidth=0.8)
        bottom.step(hours, util, where="post", label=name, linewidth=0.8)
    end = _last_busy_hour(results)
    if end is not None:  # a multi-day job can run on alone for weeks: stop a day after
        bottom.set_xlim(0, end + 24.0)
    top.set_ylabel("jobs waiting")
    top.set_yscale("symlog")
    top.set_ylim(bottom=0)
    bottom.set_ylabel("GPUs allocated (fraction)")
    bottom.set_xlabel("hours since the first submit")
    bottom.set_ylim(0, 1.05)
    top.legend(loc="upper left", ncol=len(results), fontsize="small")
    if title:
        top.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
