r"""Every policy on the Philly week, on three pool sizes and on each half of the week.

Each scenario runs twice: with per-tenant quotas (each tenant's share of the GPU-hours)
and as one shared queue without them. Runs each replay in its own process (two at a time
by default), prints a Markdown table per scenario, writes every summary as JSON
(``--out``) and the queue/utilization plots of the 48 x 8 week (``--plot``; the run
without quotas gets a ``-no-quotas`` suffix).

The week is not in the repository (540 kB); examples/traces/README.md says where the
public trace is and how to cut the week out of it:

    curl -LO https://raw.githubusercontent.com/petuum/adaptdl/osdi21-artifact/simulator/traces/philly.csv
    python examples/traces/philly_week.py philly.csv 2017-10-09 > philly_week_2017-10-09.csv
    .venv/bin/python benchmarks/scheduler_week.py --trace philly_week_2017-10-09.csv \
        --out scheduler_week.json --plot docs/img/scheduler_week.png

A trace shorter than half a week has no second half: those scenarios are left out.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from kaon.scheduler import get_policy
from kaon.scheduler.sim.metrics import summarize
from kaon.scheduler.sim.plot import plot
from kaon.scheduler.sim.simulator import SimConfig, Simulator
from kaon.scheduler.sim.trace import TraceError, TraceJob, read_trace

POLICIES = ("kaon", "fifo", "easy", "las", "srtf")
HALF_S = 3.5 * 86_400.0
COLUMNS = (
    "avg_jct_s", "p50_jct_s", "p99_jct_s", "avg_queue_delay_s", "p99_queue_delay_s",
    "arrival_window_utilization", "jain_fairness", "quota_guarantee", "preemptions",
)  # fmt: skip


def scenarios(full: list[TraceJob]) -> dict[str, tuple[int, list[TraceJob], bool]]:
    """Scenario name -> (nodes, jobs, quotas). Halves start their clock at their first
    submit. Each runs with per-tenant quotas and as one shared queue without them."""
    first = [j for j in full if j.submit < HALF_S]
    second = [j for j in full if j.submit >= HALF_S]
    cases = {
        "week, 48 x 8 GPUs": (48, full),
        "week, 40 x 8 GPUs": (40, full),
        "week, 64 x 8 GPUs": (64, full),
        "first half, 48 x 8 GPUs": (48, first),
        "second half, 48 x 8 GPUs": (48, second),
    }
    return {
        f"{name}, {'quotas' if quotas else 'no quotas'}": (nodes, jobs, quotas)
        for quotas in (True, False)
        for name, (nodes, jobs) in cases.items()
        if jobs  # a trace shorter than half a week has no second half
    }


Replay = tuple[str, str, int, list[TraceJob], bool, float, Path | None]


def replay(args: Replay) -> dict[str, Any]:
    scenario, policy, nodes, jobs, quotas, penalty, series_dir = args
    start = time.perf_counter()
    config = SimConfig(nodes=nodes, gpus_per_node=8, restart_penalty_s=penalty, quotas=quotas)
    result = Simulator(jobs, config, get_policy(policy, restart_penalty_s=penalty)).run()
    summary = summarize(result, policy)
    summary["scenario"], summary["wall_s"] = scenario, time.perf_counter() - start
    if series_dir is not None:
        (series_dir / f"{policy}.pickle").write_bytes(pickle.dumps(result))
    return summary


def table(rows: list[dict[str, Any]]) -> str:
    head = "| policy | " + " | ".join(COLUMNS) + " | replay s |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) and r[c] < 10 else f"{r[c]:,.0f}"
                 for c in COLUMNS]  # fmt: skip
        lines.append(f"| {r['policy']} | " + " | ".join(cells) + f" | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--trace", type=Path, required=True, help="a week of the Philly trace (see above)"
    )
    parser.add_argument("--restart-penalty", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", help="run only the scenarios whose name contains this")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    try:
        runs = scenarios(read_trace(args.trace))
    except TraceError as e:
        parser.error(str(e))
    if args.only:
        runs = {k: v for k, v in runs.items() if args.only in k}
    plotted = {name for name in runs if name.startswith("week, 48")} if args.plot else set()
    series = {name: args.plot.parent / f".series-{n}" for n, name in enumerate(sorted(plotted))}
    for d in series.values():
        d.mkdir(parents=True, exist_ok=True)
    work = [
        (name, policy, nodes, jobs, quotas, args.restart_penalty, series.get(name))
        for name, (nodes, jobs, quotas) in runs.items()
        for policy in POLICIES
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(replay, work))
    for name in runs:
        print(f"\n### {name}\n\n" + table([r for r in results if r["scenario"] == name]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    for name, d in series.items():
        assert args.plot is not None
        loaded = {p: pickle.loads((d / f"{p}.pickle").read_bytes()) for p in POLICIES}
        out = args.plot if name.endswith(", quotas") else _suffixed(args.plot, "-no-quotas")
        plot(loaded, out, title=f"Philly {name}")
        print(f"plot: {out.resolve()}")
        for p in POLICIES:
            (d / f"{p}.pickle").unlink()
        d.rmdir()


def _suffixed(path: Path, suffix: str) -> Path:
    return path.with_name(path.stem + suffix + path.suffix)


if __name__ == "__main__":
    main()
