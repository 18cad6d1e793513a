"""The `kaon` command. Every command talks to the control plane through `kaon.Client`.

Exit codes scripts can rely on: 0 success; 1 the job (or command) failed; 2 bad input;
3 not found; 4 not authenticated or not allowed; 5 control plane unreachable;
6 timed out.
"""

from __future__ import annotations

import functools
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import typer.main
from rich.markup import escape
from typer.core import TyperArgument, TyperGroup, TyperOption

from kaon.cli import artifacts as artifacts_cli
from kaon.cli import audit as audit_cli
from kaon.cli import backup as backup_cli
from kaon.cli import deploy as deploy_cli
from kaon.cli import jobs as jobs_cli
from kaon.cli import models as models_cli
from kaon.cli import pools as pools_cli
from kaon.cli import quotas as quotas_cli
from kaon.cli import secrets as secrets_cli
from kaon.cli import users as users_cli
from kaon.cli.common import (
    EXIT_INPUT,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    ClientOpt,
    JsonOpt,
    exit_on_error,
    make_client,
)
from kaon.cli.daemon import (
    Daemon,
    Started,
    describe,
    free_ports_near,
    port_free,
    port_holder,
    says_address_in_use,
)
from kaon.cli.render import console, err, nodes_table, print_json, rows_table
from kaon.core.auth import parse_expiry
from kaon.core.errors import KaonError
from kaon.core.tls import (
    CERT_FILE,
    KEY_FILE,
    SELF_SIGNED_DIR,
    fingerprint,
    is_loopback,
    listen_refusal,
)
from kaon.core.writable import unwritable_message
from kaon.sdk.admin import Tokens
from kaon.sdk.client import Client
from kaon.sdk.config import (
    ClientConfig,
    home,
    load_config,
    own_instance_id,
    save_ca_file,
    save_config,
    save_gateway_url,
    save_instance_id,
)

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
app.add_typer(secrets_cli.app, name="secret")
app.add_typer(secrets_cli.admin_app, name="admin")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(artifacts_cli.app, name="artifact")
app.add_typer(backup_cli.app, name="backup")
app.add_typer(models_cli.app, name="model")
app.command("serve")(deploy_cli.serve)
token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
workspace_app = typer.Typer(
    help="Workspaces: every resource belongs to one.", no_args_is_help=True
)
app.add_typer(token_app, name="token")
app.add_typer(workspace_app, name="workspace")
users_cli.register(app, workspace_app)

F = TypeVar("F", bound=Callable[..., Any])
SERVER = "kaon.server"
GATEWAY = "kaon.gateway"
DEFAULT_PORT, DEFAULT_GATEWAY_PORT = 8470, 8471
OTHER_PORTS = "to use other ports: kaon up --port N --gateway-port M"


def _server_daemon() -> Daemon:
    return Daemon(home(), "server", SERVER)


def _gateway_daemon() -> Daemon:
    return Daemon(home(), "gateway", GATEWAY)


@app.command()
def server(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = DEFAULT_PORT,
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
    port: Annotated[int, typer.Option(help="control-plane port")] = DEFAULT_PORT,
    gateway_port: Annotated[int, typer.Option(help="gateway port")] = DEFAULT_GATEWAY_PORT,
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
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="serve the API and the gateway over TLS with this certificate (PEM)"),
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="the certificate's key (PEM)")] = None,
    tls_self_signed: Annotated[
        bool, typer.Option(help="serve TLS with a key and self-signed certificate made here")
    ] = False,
    insecure: Annotated[
        bool, typer.Option(help="serve plain HTTP beyond loopback: tokens in clear text")
    ] = False,
) -> None:
    """Start the control plane and its gateway in the background; print the URL and token.

    This home's control plane, if it runs, is reused; a port held by anything else is not.
    Both listen on --host; beyond loopback they take a certificate (or --tls-self-signed),
    which both serve, or --insecure."""
    tls = _tls_choice(host, tls_cert, tls_key, tls_self_signed, insecure)  # before any bind
    scheme = "https" if _serves_tls(tls) else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    gateway_url = f"{scheme}://127.0.0.1:{gateway_port}"
    ca_file = _ca_file(tls)
    probe = Client(url, token="", timeout=1.0, verify=False)  # no token: nothing to protect
    if _check_ports(probe, port, gateway_port, host):
        daemon = _server_daemon()  # ours, maybe still starting
        _await(daemon, "control plane", port, lambda: _health(probe) is not None, timeout)
    else:
        problem = unwritable_message(home())  # before a log or pid file is written there
        if problem is not None:
            _fail(problem, EXIT_INPUT)
        env = {**_server_env(port, host, database_url, ray_address), **(tls or {})}
        env[GATEWAY_URL_ENV] = gateway_url  # the console's "try it" forwards there
        if ca_file is not None:
            env[GATEWAY_CA_ENV] = ca_file  # ... and verifies the gateway by this
        _start_server(probe, env, timeout, ca_file)
    _record_instance(probe)
    if ca_file is not None:
        save_ca_file(ca_file)  # every later command verifies this home's server by it
    config = load_config()
    listen = _GatewayListen(host, gateway_url, _gateway_tls_files(tls), ca_file)
    gateway = _start_gateway(url, config.token, port, gateway_port, listen)
    if gateway is not None and gateway != config.gateway_url:
        save_gateway_url(gateway)  # `kaon deploy` prints this address
    if ray_address and config.token:
        with exit_on_error():
            client = Client(url, token=config.token, ca_file=ca_file)
            pools_cli.wait_connected(client.pools.get, "ray", 180)
    _print_up(url, gateway, config.token, (port, gateway_port))
    if ca_file is not None:
        pem = Path(ca_file).read_text()
        console.print(f"TLS certificate: {escape(ca_file)}", soft_wrap=True)
        console.print(  # no emoji: ":AB:" pairs of the fingerprint are not codes
            f"  SHA-256 fingerprint: [bold]{fingerprint(pem)}[/]", soft_wrap=True, emoji=False
        )


def _tls_choice(
    host: str, cert: Path | None, key: Path | None, self_signed: bool, insecure: bool
) -> dict[str, str] | None:
    """The server's TLS settings (environment) for these flags, or None for plain HTTP.
    Exits with the reason, before anything binds, when plain HTTP would leave loopback
    without --insecure (which is then said loudly)."""
    if (cert is None) != (key is None):
        _fail("--tls-cert and --tls-key go together: give both", EXIT_INPUT)
    if cert is not None and self_signed:
        _fail("give --tls-cert and --tls-key, or --tls-self-signed, not both", EXIT_INPUT)
    refusal = listen_refusal(host, cert is not None or self_signed, insecure)
    if refusal is not None:
        _fail(refusal, EXIT_INPUT, hint=GATEWAY_SAME_RULE)
    if cert is not None and key is not None:
        for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
            if not path.is_file():
                _fail(f"{flag}: no file at {path}", EXIT_INPUT)
        return {"KAON_TLS_CERT": str(cert.resolve()), "KAON_TLS_KEY": str(key.resolve())}
    if self_signed:
        return {"KAON_TLS_SELF_SIGNED": "1"}
    if insecure and not is_loopback(host):
        err.print(
            f"[bold red]WARNING: INSECURE[/]: the API and the gateway on {escape(host)} speak "
            "plain HTTP; every token crosses the network in clear text",
            highlight=False,
            soft_wrap=True,
        )
        return {"KAON_INSECURE": "1"}
    return None


GATEWAY_SAME_RULE = (
    "the gateway listens on the same address, under the same rule: "
    "it serves the same certificate, or plain HTTP with --insecure"
)
GATEWAY_URL_ENV = "KAON_GATEWAY_URL"  # read by the console's "try it" (routers.console)
GATEWAY_CA_ENV = "KAON_GATEWAY_CA_FILE"  # ... which verifies an https gateway by this file


def _serves_tls(tls: dict[str, str] | None) -> bool:
    """Whether `_tls_choice`'s settings serve TLS (``--insecure`` alone does not)."""
    return tls is not None and "KAON_INSECURE" not in tls


def _ca_file(tls: dict[str, str] | None) -> str | None:
    """The certificate clients verify this home's server by: the operator's, or the
    self-signed one the server keeps under the home."""
    if tls is None or not _serves_tls(tls):
        return None
    return tls.get("KAON_TLS_CERT") or str(home() / SELF_SIGNED_DIR / CERT_FILE)


def _gateway_tls_files(tls: dict[str, str] | None) -> tuple[str, str] | None:
    """The certificate and key the gateway serves: the control plane's own (the
    self-signed pair is made by the control plane's first start, before the gateway's)."""
    if tls is None or not _serves_tls(tls):
        return None
    if "KAON_TLS_CERT" in tls:
        return tls["KAON_TLS_CERT"], tls["KAON_TLS_KEY"]
    folder = home() / SELF_SIGNED_DIR
    return str(folder / CERT_FILE), str(folder / KEY_FILE)


def _check_ports(probe: Client, port: int, gateway_port: int, host: str) -> bool:
    """Before anything starts: whether this home's control plane already runs on `port`.
    Exits with the reason (and other ports to use) if either port is someone else's, so a
    taken gateway port does not leave a control plane half set up."""
    if port == gateway_port:
        _fail(f"the control plane and the gateway need two ports, not {port} twice", EXIT_INPUT)
    running = _check_server_port(probe, port, host)
    _check_gateway_port(port, gateway_port, host)
    return running


def _check_server_port(probe: Client, port: int, host: str) -> bool:
    """A control plane that answers on `port` is this home's if it serves this home's
    instance id (or is this home's process); any other is refused, however healthy."""
    daemon = _server_daemon()
    health = _health(probe)
    if health is not None:
        if _is_own(health) or port in daemon.listening_ports():
            return True
        _taken(port, _foreign_server(port, health), _other_ports(port))
    if daemon.pid() is not None:
        _check_own_port(daemon, "control plane", port, "--port")
        return True
    if not port_free(host, port):
        _taken(port, _holder(port), _other_ports(port))
    return False


def _check_gateway_port(port: int, gateway_port: int, host: str) -> None:
    """The gateway answers no instance id; this home's is the one its pid file names."""
    daemon = _gateway_daemon()
    if daemon.pid() is not None:
        _check_own_port(daemon, "gateway", gateway_port, "--gateway-port")
    elif not port_free(host, gateway_port):
        _taken(gateway_port, _holder(gateway_port), _other_gateway_port(port, gateway_port))


def _check_own_port(daemon: Daemon, what: str, port: int, flag: str) -> None:
    """This home's daemon runs: refuse to start a second one elsewhere for the same home."""
    ports = daemon.listening_ports()
    if ports and port not in ports:
        other = min(ports)
        _fail(
            f"this home's {what} already runs on port {other} ({home()})",
            EXIT_INPUT,
            hint=f"use it (kaon up {flag} {other}), or stop it first (kaon down)",
        )


def _server_env(
    port: int, host: str, database_url: str | None, ray_address: str | None
) -> dict[str, str]:
    env = {"KAON_PORT": str(port), "KAON_HOME": str(home()), "KAON_HOST": host}
    env["KAON_BOOTSTRAP_TOKEN"] = "kaon_" + secrets.token_urlsafe(32)
    if database_url:
        env["KAON_DATABASE_URL"] = database_url
    if ray_address:
        env["KAON_RAY_ADDRESS"] = ray_address
    return env


def _start_server(
    probe: Client, env: dict[str, str], timeout: float, ca_file: str | None = None
) -> None:
    """Start this home's control plane; ready once it serves this home's instance id (so
    another server that answers meanwhile is never taken for it)."""
    daemon = _server_daemon()
    offset = daemon.log_size()
    daemon.start(env)
    port = int(env["KAON_PORT"])
    _await(daemon, "control plane", port, lambda: _is_own(_health(probe)), timeout, offset)
    bootstrap = env["KAON_BOOTSTRAP_TOKEN"]
    try:
        Client(probe.url, token=bootstrap, ca_file=ca_file).whoami()
        save_config(ClientConfig(url=probe.url, token=bootstrap, ca_file=ca_file))
    except Exception:
        pass  # an admin token existed already; keep the saved one


@dataclass(frozen=True)
class _GatewayListen:
    """Where and how the gateway of `kaon up` listens: the API's host and TLS choice."""

    host: str
    url: str  # how this machine reaches it (http or https, on loopback)
    tls: tuple[str, str] | None  # the certificate and key it serves
    ca_file: str | None  # what clients verify it (and it the control plane) by


def _start_gateway(
    url: str, token: str | None, port: int, gateway_port: int, listen: _GatewayListen
) -> str | None:
    """Start the gateway with a token of its own (role 'gateway'), unless it runs. None
    if it cannot: making its token takes an admin token. Over TLS it serves the control
    plane's certificate, and verifies the control plane by `ca_file` (``SSL_CERT_FILE``,
    which its HTTP client reads), as `kaon up`'s readiness probe verifies it."""
    daemon = _gateway_daemon()
    if daemon.pid() is not None:
        return listen.url
    if not token:
        return None
    name = f"{GATEWAY_TOKEN_PREFIX}{secrets.token_hex(3)}"
    with exit_on_error():
        tokens = Client(url, token=token, ca_file=listen.ca_file).tokens
        secret = tokens.create(name, role="gateway").token
        _revoke_old_gateway_tokens(tokens, keep=name)
    offset = daemon.log_size()
    env = {"KAON_HOME": str(home())}  # its home: `describe`
    if listen.ca_file is not None:
        env["SSL_CERT_FILE"] = listen.ca_file
    token_file = _hand_over(secret)  # the gateway reads and deletes it: not in its environ
    args = ["--host", listen.host, "--port", str(gateway_port), "--control-plane", url]
    args += ["--poll", "0.25", "--token-file", str(token_file)]
    if listen.tls is not None:
        args += ["--tls-cert", listen.tls[0], "--tls-key", listen.tls[1]]
    try:
        daemon.start(env, args)
        ready = Client(listen.url, token="", ca_file=listen.ca_file).healthy
        hint = functools.partial(_other_gateway_port, port, gateway_port)
        _await(daemon, "gateway", gateway_port, ready, 30, offset, hint)
    finally:
        token_file.unlink(missing_ok=True)  # read by now, or never: it must not linger
    return listen.url


def _hand_over(secret: str) -> Path:
    """A new file only this user may read, holding `secret`, under the home (whose
    ``config.json`` holds the admin token the same way)."""
    path = home() / f"gateway-token-{secrets.token_hex(8)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    return path


GATEWAY_TOKEN_PREFIX = "gateway-"  # the names `kaon up` gives its gateway's tokens


def _revoke_old_gateway_tokens(tokens: Tokens, keep: str) -> None:
    """The tokens of gateways this command started before (no gateway of this home runs
    now): revoked, so that each `kaon up` leaves one live gateway token, not one more."""
    for old in tokens.list():
        if (
            old.role == "gateway"
            and old.revoked_at is None
            and old.name.startswith(GATEWAY_TOKEN_PREFIX)
            and old.name != keep
        ):
            tokens.revoke(old.id)


def _await(
    daemon: Daemon,
    what: str,
    port: int,
    ready: Callable[[], bool],
    timeout: float,
    offset: int | None = None,
    hint: Callable[[], str] | None = None,
) -> None:
    """Wait for a daemon of this home; if it exits first, say why at once (its log since
    `offset`), and if it never answers, say where to look."""
    offset = daemon.log_size() if offset is None else offset
    with err.status(f"starting the {what} on port {port} ..."):
        outcome = daemon.wait_ready(ready, timeout)
    if outcome is Started.READY:
        return
    if outcome is Started.TIMED_OUT:
        _fail(f"the {what} did not answer in {timeout:g} s; see {daemon.log_file}", EXIT_TIMEOUT)
    log = daemon.log_since(offset)
    if says_address_in_use(log):
        _taken(port, _holder(port), hint() if hint else _other_ports(port))
    tail = "\n".join(log.strip().splitlines()[-8:])
    _fail(
        f"the {what} exited as it started; the end of {daemon.log_file}:\n{tail}", EXIT_UNREACHABLE
    )


def _health(probe: Client) -> dict[str, Any] | None:
    """What answers ``/healthz`` there, or None when nothing does (or not with JSON)."""
    try:
        body = probe.request("GET", "/healthz").json()
    except (KaonError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _is_own(health: dict[str, Any] | None) -> bool:
    instance = health.get("instance_id") if health else None
    return instance is not None and instance == own_instance_id()


def _record_instance(probe: Client) -> None:
    """Write this home's instance id into its config: a record of the server `kaon up`
    started, also where the home's own file cannot be read."""
    health = _health(probe)
    if health and health.get("instance_id"):
        save_instance_id(str(health["instance_id"]))


def _foreign_server(port: int, health: dict[str, Any]) -> str:
    """Name the control plane of another home: by its process where this user may see it,
    else by the instance id it serves."""
    proc = port_holder(port)
    if proc is not None:
        return describe(proc)
    instance = health.get("instance_id")
    return f"another Kaon control plane (instance {instance})" if instance else "another server"


def _holder(port: int) -> str:
    proc = port_holder(port)
    return describe(proc) if proc is not None else "another program"


def _other_ports(port: int) -> str:
    """Free ports to suggest for both: +100, +200, ... keeps them recognisable."""
    base = free_ports_near(port, 2)
    return (
        f"to use other ports: kaon up --port {base} --gateway-port {base + 1}"
        if base
        else OTHER_PORTS
    )


def _other_gateway_port(port: int, gateway_port: int) -> str:
    free = free_ports_near(gateway_port, 1)
    return f"to use another gateway port: kaon up --port {port} --gateway-port {free or 'M'}"


def _taken(port: int, holder: str, hint: str) -> NoReturn:
    _fail(f"port {port} is taken by {holder}", EXIT_INPUT, hint=hint)


def _fail(message: str, code: int, hint: str | None = None) -> NoReturn:
    """One red line (log text is printed as it is, never read as markup), a hint, exit."""
    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err.print(escape(hint), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _print_up(url: str, gateway: str | None, token: str | None, ports: tuple[int, int]) -> None:
    """What `kaon up` did, unwrapped: tokens and paths are copied from it."""
    daemon = _server_daemon()
    if gateway is None:
        gateway = "not started (no admin token; run 'kaon login' and 'kaon up' again)"
    lines = [
        f"Kaon control plane: [bold]{url}[/] (logs: {daemon.log_file})",
        f"Kaon gateway:       [bold]{gateway}[/]",
        f"Kaon console:       [bold]{url}/console/[/] (sign in with a token)",
        f"admin token: [bold]{token}[/]  (saved in {home() / 'config.json'})"
        if token
        else "the server already had an admin token; use [bold]kaon login[/]",
    ]
    if ports == (DEFAULT_PORT, DEFAULT_GATEWAY_PORT):
        lines.append(f"[dim]{OTHER_PORTS}[/]")
    for line in lines:
        console.print(line, soft_wrap=True)


@app.command()
def down() -> None:
    """Stop the background control plane and gateway.

    Running jobs keep running and are re-adopted on the next `kaon up`."""
    gateway = _gateway_daemon().stop()
    server = _server_daemon().stop()
    stopped = [name for name, ran in (("control plane", server), ("gateway", gateway)) if ran]
    console.print(
        f"stopped the {' and the '.join(stopped)} ({home()})"
        if stopped
        else f"the control plane was not running ({home()})"
    )


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
    """Show the pool: each node, what is allocated of its CPUs, memory and GPUs, its labels."""
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
    role: Annotated[str, typer.Option(help="viewer, member or admin")] = "member",
    expires: Annotated[
        str | None,
        typer.Option(help="when it stops working: 7d, 12h, 30m or a date, 2026-12-31 (UTC)"),
    ] = None,
    user: Annotated[
        str | None, typer.Option(help="the user it acts for (default: this token's user)")
    ] = None,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create a token (its secret is shown once). It can do no more than the token that
    creates it or its user's role in each workspace, never outlives it, and is revoked
    with it (or with its user)."""
    try:
        expires_at = parse_expiry(expires, datetime.now(UTC)) if expires else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--expires") from None
    with exit_on_error():
        created = make_client(client).tokens.create(name, workspace, role, expires_at, user)
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
            _when(t.expires_at),
        )
        for t in tokens
    ]
    header = ("ID", "NAME", "PREFIX", "ROLE", "WORKSPACES", "STATE", "EXPIRES")
    console.print(rows_table(header, rows))


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "never"


@token_app.command("revoke")
def token_revoke(
    ref: Annotated[str, typer.Argument(help="token id or name")], client: ClientOpt = None
) -> None:
    """Revoke a token and every token it created; they stop working at once."""
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
    build_command()()


def build_command() -> TyperGroup:
    """The `kaon` command as `main` runs it: the Typer app, with its help tidied."""
    built = typer.main.get_command(app)
    assert isinstance(built, TyperGroup)  # an app of command groups
    _tidy_help_types(built, typer.Context(built))
    return built


def _tidy_help_types(command: Any, ctx: typer.Context) -> None:
    """Typer renders every option's type in help, flags too (``--help <bool>``), a
    repeatable option's or argument's as a list (``--env <list[str]>``, ``command...
    <list[str]>``) and a bounded number's as ``<float range> [x>=0]``. A flag takes no
    value, a repeatable option one value a time, and the bound is shown beside the type:
    show none, the item's type and the plain type."""
    for param in [*command.params, command.get_help_option(ctx)]:
        if isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = _metavar(param, ctx)
        elif isinstance(param, TyperArgument) and param.nargs != 1:
            param.__class__ = _RepeatedArgument
    for sub in getattr(command, "commands", {}).values():
        _tidy_help_types(sub, ctx)


def _metavar(param: TyperOption, ctx: typer.Context) -> str | None:
    if param.is_flag:
        return ""
    shown = param.display_type_rich(ctx)
    tidy = _plain_type(shown)
    return None if tidy == shown else tidy


def _plain_type(shown: str | None) -> str | None:
    """``<list[str]>`` -> ``<str>``, ``<float range>`` -> ``<float>``; others as they are."""
    if shown and shown.startswith("<list[") and shown.endswith("]>"):
        return f"<{shown[len('<list[') : -len(']>')]}>"
    if shown and shown.endswith(" range>"):
        return shown[: -len(" range>")] + ">"
    return shown


class _RepeatedArgument(TyperArgument):
    """An argument that takes several values (``command...``): its help shows the type of
    one value, as a repeatable option's does."""

    def display_type_rich(self, ctx: Any) -> str | None:  # Click's context (Typer's copy)
        return _plain_type(super().display_type_rich(ctx))


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["Path", "app", "build_command", "main"]
