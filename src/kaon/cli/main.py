"""The `kaon` command. Every command talks to the control plane through `kaon.Client`.

Exit codes scripts can rely on: 0 success; 1 the job (or command) failed; 2 bad input;
3 not found; 4 not authenticated or not allowed; 5 control plane unreachable;
6 timed out.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from kaon.cli import deploy as deploy_cli
from kaon.cli import jobs as jobs_cli
from kaon.cli import pools as pools_cli
from kaon.cli import quotas as quotas_cli
from kaon.cli.common import ClientOpt, JsonOpt, exit_on_error, make_client
from kaon.cli.daemon import Daemon, wait_healthy
from kaon.cli.render import console, err, nodes_table, print_json, rows_table
from kaon.sdk.client import Client
from kaon.sdk.config import ClientConfig, home, load_config, save_config, save_gateway_url

app = typer.Typer(
    name="kaon",
    help="Kaon: run training jobs and deployments on the compute you already have.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(jobs_cli.app, name="job")
app.add_typer(quotas_cli.app, name="quota")
app.add_typer(deploy_cli.app, name="deploy")
app.add_typer(pools_cli.app, name="pool")
app.command("serve")(deploy_cli.serve)
token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
workspace_app = typer.Typer(
    help="Workspaces: every resource belongs to one.", no_args_is_help=True
)
app.add_typer(token_app, name="token")
app.add_typer(workspace_app, name="workspace")

F = TypeVar("F", bound=Callable[..., Any])
SERVER = "kaon.server"
GATEWAY = "kaon.gateway"


def _server_daemon() -> Daemon:
    return Daemon(home(), "server", SERVER)


def _gateway_daemon() -> Daemon:
    return Daemon(home(), "gateway", GATEWAY)


def _start_gateway(url: str, token: str | None, port: int) -> str:
    """Start the gateway with a token of its own (role 'gateway'), unless it runs."""
    daemon = _gateway_daemon()
    gateway_url = f"http://127.0.0.1:{port}"
    if daemon.pid() is not None:
        return gateway_url
    if not token:
        return "not started (no admin token; run 'kaon login' and 'kaon up' again)"
    name = f"gateway-{secrets.token_hex(3)}"
    secret = Client(url, token=token).tokens.create(name, role="gateway").token
    daemon.start(
        {"KAON_GATEWAY_TOKEN": secret},
        ["--port", str(port), "--control-plane", url, "--poll", "0.25"],
    )
    with err.status(f"starting the gateway on {gateway_url} ..."):
        probe = Client(gateway_url, token="")
        if not wait_healthy(probe.healthy, 30):
            return f"did not start; see {daemon.log_file}"
    return gateway_url


@app.command()
def server(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8470,
    database_url: Annotated[
        str | None, typer.Option("--db", help="SQLite path or postgresql:// URL")
    ] = None,
) -> None:
    """Run the control plane in the foreground."""
    os.environ["KAON_HOST"], os.environ["KAON_PORT"] = host, str(port)
    if database_url:
        os.environ["KAON_DATABASE_URL"] = database_url
    os.execv(sys.executable, [sys.executable, "-m", SERVER])


@app.command()
def up(
    port: Annotated[int, typer.Option(help="control-plane port")] = 8470,
    gateway_port: Annotated[int, typer.Option(help="gateway port")] = 8471,
    database_url: Annotated[
        str | None, typer.Option("--db", help="SQLite path or postgresql:// URL")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for it to be ready")] = 60.0,
    ray_address: Annotated[
        str | None,
        typer.Option(help="attach this Ray cluster (host:port) as pool 'ray' (KAON_RAY_ADDRESS)"),
    ] = None,
    host: Annotated[
        str, typer.Option(help="address to listen on; other machines need a reachable one")
    ] = "127.0.0.1",
) -> None:
    """Start the control plane in the background and print its URL and admin token."""
    daemon = _server_daemon()
    url = f"http://127.0.0.1:{port}"
    if daemon.pid() is None:
        bootstrap = "kaon_" + secrets.token_urlsafe(32)
        env = {"KAON_PORT": str(port), "KAON_HOME": str(home()), "KAON_BOOTSTRAP_TOKEN": bootstrap}
        env["KAON_HOST"] = host
        if database_url:
            env["KAON_DATABASE_URL"] = database_url
        if ray_address:
            env["KAON_RAY_ADDRESS"] = ray_address
        daemon.start(env)
        with err.status(f"starting the control plane on {url} ..."):
            probe = Client(url, token="")
            ready = wait_healthy(probe.healthy, timeout)
        if not ready:
            err.print(f"[red]the control plane did not start; see {daemon.log_file}[/]")
            raise typer.Exit(5)
        try:
            Client(url, token=bootstrap).whoami()
            save_config(ClientConfig(url=url, token=bootstrap))
        except Exception:
            pass  # an admin token existed already; keep the saved one
    config = load_config()
    with exit_on_error():
        gateway = _start_gateway(url, config.token, gateway_port)
    if gateway != config.gateway_url:
        save_gateway_url(gateway)  # `kaon deploy` prints this address
    if ray_address and config.token:
        with exit_on_error():
            pools_cli.wait_connected(Client(url, token=config.token).pools.get, "ray", 180)
    console.print(f"Kaon control plane: [bold]{url}[/] (logs: {daemon.log_file})")
    console.print(f"Kaon gateway:       [bold]{gateway}[/]")
    if config.token:
        console.print(f"admin token: [bold]{config.token}[/]  (saved in {home() / 'config.json'})")
    else:
        console.print("the server already had an admin token; use [bold]kaon login[/]")


@app.command()
def down() -> None:
    """Stop the background control plane. Running jobs keep running and are re-adopted
    on the next `kaon up`."""
    _gateway_daemon().stop()
    stopped = _server_daemon().stop()
    console.print("stopped the control plane" if stopped else "the control plane was not running")


@app.command()
def login(
    url: Annotated[str, typer.Argument(help="control-plane URL")],
    token: Annotated[str, typer.Option(prompt=True, hide_input=True, help="API token")],
    workspace: Annotated[str, typer.Option(help="default workspace")] = "default",
) -> None:
    """Check a token against a control plane and save both for later commands."""
    with exit_on_error():
        me = Client(url, token=token, workspace=workspace).whoami()
    path = save_config(ClientConfig(url=url.rstrip("/"), token=token, workspace=workspace))
    console.print(f"logged in to {url} as token '{me.token}' ({me.role}); saved to {path}")


@app.command()
def whoami(client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """Show the token in use and the workspaces it sees."""
    with exit_on_error():
        me = make_client(client).whoami()
    if json_:
        print_json(me)
    else:
        console.print(f"token '{me.token}' ({me.role}), workspaces: {', '.join(me.workspaces)}")


@app.command()
def nodes(client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """Show the pool: each node's capacity, what is allocated and what is free."""
    with exit_on_error():
        pool = make_client(client).nodes.list()
    if json_:
        print_json(pool)
    else:
        console.print(nodes_table(pool))


@token_app.command("create")
def token_create(
    name: str,
    workspace: Annotated[
        list[str] | None, typer.Option("--workspace", "-w", help="repeatable")
    ] = None,
    role: Annotated[str, typer.Option(help="member or admin")] = "member",
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create a token (its secret is shown once)."""
    with exit_on_error():
        created = make_client(client).tokens.create(name, workspace, role)
    if json_:
        print_json(created)
    else:
        console.print(f"token [bold]{created.name}[/] ({created.id}): {created.token}")
        console.print("[dim]store it now: Kaon keeps only its hash[/]")


@token_app.command("list")
def token_list(client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """List tokens by name (never their secrets)."""
    with exit_on_error():
        tokens = make_client(client).tokens.list()
    if json_:
        print_json(tokens)
        return
    rows = [
        (
            t.id,
            t.name,
            t.prefix + "...",
            t.role,
            ",".join(t.workspaces),
            "revoked" if t.revoked_at else "active",
        )
        for t in tokens
    ]
    console.print(rows_table(("ID", "NAME", "PREFIX", "ROLE", "WORKSPACES", "STATE"), rows))


@token_app.command("revoke")
def token_revoke(
    ref: Annotated[str, typer.Argument(help="token id or name")], client: ClientOpt = None
) -> None:
    """Revoke a token; it stops working at once."""
    with exit_on_error():
        token = make_client(client).tokens.revoke(ref)
    console.print(f"revoked token {token.name} ({token.id})")


@workspace_app.command("create")
def workspace_create(name: str, client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """Create a workspace (admin)."""
    with exit_on_error():
        ws = make_client(client).workspaces.create(name)
    print_json(ws) if json_ else console.print(f"created workspace {ws.name}")


@workspace_app.command("list")
def workspace_list(client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """List the workspaces this token sees."""
    with exit_on_error():
        spaces = make_client(client).workspaces.list()
    if json_:
        print_json(spaces)
    else:
        console.print(rows_table(("WORKSPACE",), [(w.name,) for w in spaces]))


def _register_optional() -> None:
    """Commands that live with their feature: the trace simulator (`kaon sim`)."""
    import importlib

    try:
        module = importlib.import_module("kaon.cli.sim")
    except ImportError:
        return
    app.command("sim")(module.sim)


_register_optional()


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["Path", "app", "main"]
