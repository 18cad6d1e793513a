"""`kaon pool ...`: attach Ray clusters to the pool, list them, detach them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated

import typer

from kaon.cli.common import ClientOpt, JsonOpt, exit_on_error, make_client
from kaon.cli.render import console, err, print_json, rows_table
from kaon.core.pools import PoolState, PoolView
from kaon.core.resources import format_memory

app = typer.Typer(help="Pools: the machines and clusters work runs on.", no_args_is_help=True)
add_app = typer.Typer(help="Attach compute to the pool.", no_args_is_help=True)
app.add_typer(add_app, name="add")

HEADERS = ("POOL", "KIND", "ADDRESS", "STATE", "NODES", "CPUS", "MEMORY", "GPUS", "MESSAGE")


def _row(p: PoolView) -> tuple[str, ...]:
    return (
        p.name,
        p.kind.value + (" (elastic)" if p.elastic else ""),
        p.address or "-",
        p.state.value,
        str(p.nodes),
        f"{p.cpu:g}",
        format_memory(p.memory),
        str(p.gpus),
        p.message,
    )


def _show(views: list[PoolView], json_: bool) -> None:
    if json_:
        print_json(views if len(views) != 1 else views[0])
    else:
        console.print(rows_table(HEADERS, [_row(p) for p in views]))


@add_app.command("ray")
def add_ray(
    address: Annotated[str, typer.Option(help="the cluster's GCS host:port, or ray://host:port")],
    name: Annotated[str, typer.Option(help="the pool's name")] = "ray",
    api_url: Annotated[
        str | None, typer.Option(help="how the cluster's nodes reach this control plane")
    ] = None,
    wait: Annotated[bool, typer.Option(help="wait until it is connected")] = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 180.0,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Attach a running Ray cluster: its nodes join the pool (admin).

    kaon pool add ray --address 10.0.0.5:6379
    kaon pool add ray --address ray://head.example.com:10001 --name gpu-cloud
    """
    kaon = make_client(client)
    with exit_on_error():
        view = kaon.pools.add(name, address, api_url)
        if wait:
            view = wait_connected(kaon.pools.get, name, timeout)
    _show([view], json_)
    if view.state is PoolState.ERROR:
        raise typer.Exit(2)
    if view.state is not PoolState.READY and wait:
        raise typer.Exit(6)


def wait_connected(fetch: Callable[[str], PoolView], name: str, timeout: float) -> PoolView:
    """Poll until the pool connects (and has a node) or fails, showing what it does."""
    deadline = time.monotonic() + timeout
    view = fetch(name)
    with err.status(f"connecting to pool {name} ...") as status:
        while view.state is PoolState.CONNECTING and time.monotonic() < deadline:
            status.update(f"connecting to pool {name}: {view.message}")
            time.sleep(0.5)
            view = fetch(name)
        while view.state is PoolState.READY and view.nodes == 0 and time.monotonic() < deadline:
            status.update(f"pool {name}: waiting for its first node ({view.message})")
            time.sleep(0.5)
            view = fetch(name)
    if view.state is PoolState.ERROR:
        err.print(f"[red]pool {name}: {view.message}[/]")
    elif view.state is not PoolState.READY:
        err.print(f"[yellow]pool {name} is {view.state.value}: {view.message}[/]")
    return view


@app.command("list")
def list_(client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """Every pool: this machine and each attached cluster, with what it brings now."""
    with exit_on_error():
        views = make_client(client).pools.list()
    if json_:
        print_json(views)
    else:
        console.print(rows_table(HEADERS, [_row(p) for p in views]))


@app.command()
def remove(
    name: str,
    force: Annotated[
        bool, typer.Option(help="stop the jobs running there; they resume on other nodes")
    ] = False,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Detach a pool (admin). Its nodes take no new work; with --force, jobs running
    there are stopped and queued again elsewhere, from their last checkpoint."""
    with exit_on_error():
        view = make_client(client).pools.remove(name, force)
    _show([view], json_)
