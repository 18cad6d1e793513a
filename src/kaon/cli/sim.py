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
    policy: Annotated[str, typer.Option(help="kaon, fifo, easy, las or srtf")] = "kaon",
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

    A bad trace row (file:line: column ...), an unknown policy or a --plot folder that
    cannot be made exits with code 2 and a one-line message before the replay, never a
    traceback. See docs/scheduler.md for the model and where the full traces come from.
    """
    from kaon.scheduler.policies import get_policy
    from kaon.scheduler.sim.metrics import summarize
    from kaon.scheduler.sim.simulator import SimConfig, Simulator
    from kaon.scheduler.sim.trace import TraceError, read_trace

    try:
        chosen = get_policy(policy, restart_penalty_s=restart_penalty)
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
    with err.status(f"replaying {len(jobs)} jobs with policy {policy} ..."):
        result = Simulator(jobs, config, chosen).run()
    summary = summarize(result, policy)
    summary["quotas"] = quotas
    if plot is not None:
        from kaon.scheduler.sim.plot import plot as draw

        draw({policy: result}, plot, title=f"{trace.name}, {nodes} x {gpus_per_node} GPUs")
    if json_:
        print(json.dumps(summary, indent=2))
    else:
        console.print(
            rows_table(
                ("METRIC", "VALUE"),
                [(k, _fmt(v)) for k, v in summary.items() if not isinstance(v, dict)],
            )
        )
    if plot is not None:  # on stderr, so that --json's stdout stays one JSON object
        err.print(f"plot: {plot.resolve()}", markup=False, highlight=False, soft_wrap=True)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--plot: cannot make the folder {folder}: {e.strerror}") from None


def _fmt(value: Any) -> str:
    return f"{value:,.3f}" if isinstance(value, float) else str(value)
