"""`kaon sim`: replay a GPU-cluster trace through the real scheduling core."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from kaon.cli.render import console, err, rows_table


def sim(
    trace: Annotated[Path, typer.Option(help="CSV: timestamp,duration,num_gpus,gpu_time,cluster")],
    nodes: Annotated[int, typer.Option(min=1, help="nodes in the simulated pool")] = 48,
    gpus_per_node: Annotated[int, typer.Option(min=1, help="GPUs per node")] = 8,
    policy: Annotated[
        str,
        typer.Option(
            help="kaon, fifo, easy, las, gittins, srtf, kueue, kueue-fair or kai; "
            "several, comma-separated, print one row each and share one plot"
        ),
    ] = "kaon",
    restart_penalty: Annotated[float, typer.Option(min=0, help="seconds lost per restart")] = 60.0,
    seed: Annotated[int, typer.Option(help="seed for walltime estimates (easy)")] = 0,
    limit: Annotated[int | None, typer.Option(help="replay only the first N jobs")] = None,
    quotas: Annotated[
        bool, typer.Option(help="per-tenant quotas (GPU-hour shares); off: one shared queue")
    ] = True,
    json_: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    plot: Annotated[
        Path | None, typer.Option(help="write a PNG of queue length and utilisation here")
    ] = None,
) -> None:
    """Replay a trace with a discrete-event clock through `kaon.scheduler`'s very code.

    kaon sim --trace examples/traces/philly_sample.csv --nodes 12 --policy kaon

    kaon sim --trace examples/traces/philly_week_2017-10-16.csv --nodes 48 \
        --policy kaon,kueue,kueue-fair,kai --plot out/week.png

    A bad trace row (file:line: column ...), an unknown policy or a --plot folder that
    cannot be made exits with code 2 and a one-line message before the replay, never a
    traceback. See docs/scheduler.md for the model and the measured tables.
    """
    from kaon.scheduler.catalog import get_policy
    from kaon.scheduler.sim.metrics import summarize
    from kaon.scheduler.sim.simulator import SimConfig, SimResult, Simulator
    from kaon.scheduler.sim.trace import TraceError, read_trace

    names = [name.strip() for name in policy.split(",") if name.strip()]
    try:
        chosen = [get_policy(name, restart_penalty_s=restart_penalty) for name in names]
        if not chosen:
            raise ValueError("--policy: name at least one policy")
        jobs = read_trace(trace, limit=limit)
        if plot is not None:  # a week's replay takes minutes: find out now, not after it
            _make_folder(plot.parent)
    except (TraceError, ValueError) as e:
        from rich.markup import escape

        err.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    config = SimConfig(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        restart_penalty_s=restart_penalty,
        seed=seed,
        quotas=quotas,
    )
    results: dict[str, SimResult] = {}
    summaries: list[dict[str, Any]] = []
    for name, chosen_policy in zip(names, chosen, strict=True):
        with err.status(f"replaying {len(jobs)} jobs with policy {name} ..."):
            results[name] = Simulator(jobs, config, chosen_policy).run()
        summary = summarize(results[name], name)
        summary["quotas"] = quotas
        summaries.append(summary)
    if plot is not None:
        from kaon.scheduler.sim.plot import plot as draw

        shared = "quotas" if quotas else "no quotas"
        title = f"{trace.name}, {nodes} x {gpus_per_node} GPUs, {shared}"
        draw(results, plot, title=title)
    _show(summaries, json_)
    if plot is not None:  # on stderr, so that --json's stdout stays one JSON object
        err.print(f"plot: {plot.resolve()}", markup=False, highlight=False, soft_wrap=True)


# The columns of the comparison table (seconds; quota is the quota guarantee), what
# docs/scheduler.md reports for each policy; --json has every metric.
COLUMNS = (
    ("avg_jct_s", "AVG JCT"),
    ("p50_jct_s", "P50 JCT"),
    ("avg_queue_delay_s", "AVG WAIT"),
    ("p99_queue_delay_s", "P99 WAIT"),
    ("jain_fairness", "JAIN"),
    ("quota_guarantee", "QUOTA"),
    ("preemptions", "PREEMPT"),
)


def _show(summaries: list[dict[str, Any]], as_json: bool) -> None:
    """One policy: every metric, one per line (JSON: one object). Several: one row per
    policy with the compared columns (JSON: a list of objects)."""
    if as_json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
    elif len(summaries) == 1:
        console.print(
            rows_table(
                ("METRIC", "VALUE"),
                [(k, _fmt(v)) for k, v in summaries[0].items() if not isinstance(v, dict)],
            )
        )
    else:
        header = ("POLICY", *(title for _, title in COLUMNS))
        rows = [(s["policy"], *(_cell(s[key]) for key, _ in COLUMNS)) for s in summaries]
        console.print(rows_table(header, rows))


def _cell(value: Any) -> str:
    """Seconds as whole numbers, ratios to three places, counts as they are."""
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:,.0f}"
    return str(value)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--plot: cannot make the folder {folder}: {e.strerror}") from None


def _fmt(value: Any) -> str:
    return f"{value:,.3f}" if isinstance(value, float) else str(value)
