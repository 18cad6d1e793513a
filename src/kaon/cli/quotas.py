"""`kaon quota ...`: workspace quotas and borrow limits."""

from __future__ import annotations

from typing import Annotated

import typer

from kaon.cli.common import ClientOpt, JsonOpt, exit_on_error, make_client
from kaon.cli.render import console, print_json, rows_table
from kaon.core.quotas import QuotaView
from kaon.core.resources import format_memory

app = typer.Typer(help="Workspace quotas: nominal shares and borrow limits.", no_args_is_help=True)


def _fmt(value: float | int | None, memory: bool = False) -> str:
    if value is None:
        return "unlimited"
    return format_memory(int(value)) if memory else f"{value:g}"


def _row(q: QuotaView) -> tuple[str, ...]:
    spec, used = q.quota, q.used
    return (
        q.workspace,
        f"{used.gpus:g}/{_fmt(spec.gpus)}",
        f"{used.cpus:g}/{_fmt(spec.cpus)}",
        f"{format_memory(used.memory)}/{_fmt(spec.memory, memory=True)}",
        _fmt(spec.borrow_limit),
    )


@app.command("set")
def set_(
    workspace: str,
    gpus: Annotated[float | None, typer.Option(help="nominal GPUs")] = None,
    cpus: Annotated[float | None, typer.Option("--cpus", "--cpu", help="nominal CPUs")] = None,
    memory: Annotated[str | None, typer.Option(help="nominal memory, e.g. 256Gi")] = None,
    borrow_limit: Annotated[
        float | None,
        typer.Option(
            help="idle GPUs it may borrow beyond --gpus (GPUs only: CPUs and memory "
            "have --borrow-cpus and --borrow-memory)"
        ),
    ] = None,
    borrow_cpus: Annotated[
        float | None,
        typer.Option("--borrow-cpus", "--borrow-cpu", help="idle CPUs it may borrow"),
    ] = None,
    borrow_memory: Annotated[str | None, typer.Option(help="idle memory it may borrow")] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="bytes it may store (artifacts, code snapshots), e.g. 500Gi; unset: the "
            "instance's default (KAON_WORKSPACE_STORAGE_LIMIT)"
        ),
    ] = None,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Set a workspace's quota (admin). Unset values are unlimited.

    --borrow-limit covers GPUs only; --borrow-cpus and --borrow-memory set what it may
    borrow of the others. --cpu is accepted for --cpus, as kaon job run spells it.

    kaon quota set team-a --gpus 8 --cpus 64 --memory 256Gi --borrow-limit 8 --storage 500Gi
    """
    with exit_on_error():
        view = make_client(client).quotas.set(
            workspace, gpus, cpus, memory, borrow_limit, borrow_cpus, borrow_memory, storage
        )
    if json_:
        print_json(view)
    else:
        console.print(
            rows_table(("WORKSPACE", "GPUS", "CPUS", "MEMORY", "BORROW LIMIT"), [_row(view)])
        )


@app.command("list")
def list_(client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """Quotas and what each workspace uses now."""
    with exit_on_error():
        views = make_client(client).quotas.list()
    if json_:
        print_json(views)
        return
    columns = (
        "WORKSPACE",
        "GPUS used/quota",
        "CPUS used/quota",
        "MEMORY used/quota",
        "BORROW LIMIT",
    )
    console.print(rows_table(columns, [_row(v) for v in views]))


@app.command("delete")
def delete(workspace: str, client: ClientOpt = None) -> None:
    """Remove a workspace's quota (it becomes unlimited)."""
    with exit_on_error():
        make_client(client).quotas.delete(workspace)
    console.print(f"removed the quota of {workspace}")
