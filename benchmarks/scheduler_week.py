r"""The tables of docs/scheduler.md: three Philly weeks, three pool sizes, every policy.

Each week (the three in examples/traces/ by default) is replayed on 40, 48 and 64 nodes
of 8 GPUs twice: with per-tenant quotas (each tenant's share of the GPU-hours) against
the quota-aware policies, and as one shared queue (`--no-quotas`) against the policies
that ignore quotas. Each replay runs in its own process (`--workers` at a time), a
Markdown table is printed per week and setting, every summary is written as JSON
(`--out`), and with `--plot DIR` each week's 48-node replays are drawn, one PNG per
setting (`scheduler_<week>.png`, `scheduler_<week>-no-quotas.png`).

    .venv/bin/python benchmarks/scheduler_week.py --out scheduler_weeks.json

The same rows, one command per cell, with `kaon sim --policy a,b,c` (docs/scheduler.md).
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
from kaon.scheduler.sim.trace import TraceError, read_trace

TRACES = Path(__file__).parents[1] / "examples/traces"
WEEKS = ("2017-10-09", "2017-10-16", "2017-11-06")
SIZES = (40, 48, 64)
PLOTTED = 48
WITH_QUOTAS = ("kaon", "kueue", "kueue-fair", "kai")
SHARED = ("kaon", "las", "gittins", "srtf", "fifo", "easy")
COLUMNS = (
    "avg_jct_s", "p50_jct_s", "avg_queue_delay_s", "p99_queue_delay_s",
    "jain_fairness", "quota_guarantee", "preemptions",
)  # fmt: skip

Replay = tuple[Path, int, bool, str, float, Path | None]


def replay(args: Replay) -> dict[str, Any]:
    trace, nodes, quotas, policy, penalty, series = args
    start = time.perf_counter()
    config = SimConfig(nodes=nodes, gpus_per_node=8, restart_penalty_s=penalty, quotas=quotas)
    result = Simulator(read_trace(trace), config, get_policy(policy, penalty)).run()
    summary = summarize(result, policy)
    summary.update(trace=trace.name, nodes=nodes, quotas=quotas)
    summary["wall_s"] = time.perf_counter() - start
    if series is not None:
        series.mkdir(parents=True, exist_ok=True)
        (series / f"{policy}.pickle").write_bytes(pickle.dumps(result))
    return summary


def table(rows: list[dict[str, Any]]) -> str:
    head = "| GPUs | policy | " + " | ".join(COLUMNS) + " | replay s |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) and r[c] < 10 else f"{r[c]:,.0f}"
                 for c in COLUMNS]  # fmt: skip
        lines.append(
            f"| {r['gpus']} | {r['policy']} | " + " | ".join(cells) + f" | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weeks", nargs="*", default=list(WEEKS))
    parser.add_argument("--restart-penalty", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path, help="a folder for one PNG per week and setting")
    args = parser.parse_args()
    traces = {week: TRACES / f"philly_week_{week}.csv" for week in args.weeks}
    for path in traces.values():
        try:
            read_trace(path, limit=1)
        except TraceError as e:
            parser.error(str(e))
    work: list[Replay] = []
    for week, path in traces.items():
        for nodes in SIZES:
            for quotas, policies in ((True, WITH_QUOTAS), (False, SHARED)):
                series = None
                if args.plot is not None and nodes == PLOTTED:
                    series = args.plot / f".series-{week}-{quotas}"
                work += [(path, nodes, quotas, p, args.restart_penalty, series) for p in policies]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(replay, work))
    for week, path in traces.items():
        for quotas in (True, False):
            rows = [r for r in results if r["trace"] == path.name and r["quotas"] is quotas]
            print(f"\n### {week}, {'quotas' if quotas else 'no quotas'}\n\n{table(rows)}")
            if args.plot is not None:
                _draw(args.plot, week, quotas)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


def _draw(folder: Path, week: str, quotas: bool) -> None:
    series = folder / f".series-{week}-{quotas}"
    policies = WITH_QUOTAS if quotas else SHARED
    loaded = {p: pickle.loads((series / f"{p}.pickle").read_bytes()) for p in policies}
    name = f"scheduler_{week}.png" if quotas else f"scheduler_{week}-no-quotas.png"
    setting = "quotas" if quotas else "no quotas"
    plot(loaded, folder / name, title=f"Philly week {week}, {PLOTTED} x 8 GPUs, {setting}")
    print(f"plot: {(folder / name).resolve()}")
    for p in policies:
        (series / f"{p}.pickle").unlink()
    series.rmdir()


if __name__ == "__main__":
    main()
