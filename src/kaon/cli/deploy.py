"""`kaon deploy ...` and `kaon serve`: models served from the pool behind the gateway."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from kaon.cli.common import EXIT_INPUT, ClientOpt, JsonOpt, exit_on_error, make_client
from kaon.cli.render import console, err, print_json, rows_table
from kaon.core.deployments import DeploymentView
from kaon.sdk.config import load_config

app = typer.Typer(help="Serve models: deployments behind the gateway.", no_args_is_help=True)


def _spec(
    file: Path | None,
    service: str | None,
    from_job: str | None,
    min_replicas: int | None,
    max_replicas: int | None,
    cpu: float | None,
    memory: str | None,
    gpus: int | None,
    public: bool | None,
    env: list[str] | None,
) -> tuple[dict[str, Any], Path | None]:
    data: dict[str, Any] = {}
    path = None
    if file is not None:
        loaded = yaml.safe_load(file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise typer.BadParameter(f"{file} must hold a mapping of deployment fields")
        data = loaded
        if "path" in data:
            path = file.parent / str(data.pop("path"))
    if service:
        data["service"] = service
    if from_job:
        data["from_job"] = from_job
    resources = dict(data.get("resources") or {})
    for key, value in (("cpu", cpu), ("memory", memory), ("gpus", gpus)):
        if value is not None:
            resources[key] = value
    if resources:
        data["resources"] = resources
    scaling = dict(data.get("autoscaling") or {})
    if min_replicas is not None:
        scaling["min_replicas"] = min_replicas
    if max_replicas is not None:
        scaling["max_replicas"] = max_replicas
    if scaling:
        data["autoscaling"] = scaling
    if public is not None:
        data["public"] = public
    for pair in env or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"--env expects KEY=VALUE, got {pair!r}")
        data.setdefault("env", {})[key] = value
    return data, path


FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="deployment spec YAML")]
PathOpt = Annotated[
    Path | None, typer.Option("--path", help="folder to upload (the service code)")
]
ServiceOpt = Annotated[str | None, typer.Option(help="module:Class of a kaon.Service")]
FromJobOpt = Annotated[
    str | None, typer.Option("--from-job", help="serve a kaon.train job's model")
]
MinOpt = Annotated[int | None, typer.Option("--min", help="fewest replicas (0: scale to zero)")]
MaxOpt = Annotated[int | None, typer.Option("--max", help="most replicas")]
CpuOpt = Annotated[float | None, typer.Option(help="CPUs per replica")]
MemOpt = Annotated[str | None, typer.Option(help="memory per replica, e.g. 2Gi")]
GpuOpt = Annotated[int | None, typer.Option(help="GPUs per replica")]
PublicOpt = Annotated[
    bool | None, typer.Option("--public/--private", help="callable without a token")
]
EnvOpt = Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, repeatable")]


@app.command()
def create(
    name: str,
    file: FileOpt = None,
    path: PathOpt = None,
    service: ServiceOpt = None,
    from_job: FromJobOpt = None,
    min_replicas: MinOpt = None,
    max_replicas: MaxOpt = None,
    cpu: CpuOpt = None,
    memory: MemOpt = None,
    gpus: GpuOpt = None,
    public: PublicOpt = None,
    env: EnvOpt = None,
    wait: Annotated[bool, typer.Option(help="wait until a replica is ready")] = True,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Deploy a kaon.Service from a folder, or the model of a kaon.train job.

    kaon deploy create clf --path examples/binary_classifier --service serve:Classifier
    kaon deploy create clf --from-job j-3f9c2a7b1d04
    """
    data, file_path = _spec(
        file, service, from_job, min_replicas, max_replicas, cpu, memory, gpus, public, env
    )
    folder = path or file_path
    if folder is None and "from_job" not in data:
        folder = Path(".")
    kaon = make_client(client)
    with exit_on_error():
        with err.status("uploading and creating ..."):
            view = kaon.deployments.create(name, path=folder, spec=data)
        if wait:
            with err.status(f"waiting for {name} to be ready ..."):
                view = kaon.deployments.wait_ready(name, timeout=300)
    _show(view, json_)


@app.command()
def update(
    name: str,
    file: FileOpt = None,
    path: PathOpt = None,
    service: ServiceOpt = None,
    from_job: FromJobOpt = None,
    min_replicas: MinOpt = None,
    max_replicas: MaxOpt = None,
    cpu: CpuOpt = None,
    memory: MemOpt = None,
    gpus: GpuOpt = None,
    public: PublicOpt = None,
    env: EnvOpt = None,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Change a deployment; replicas roll one at a time with no failed request."""
    kaon = make_client(client)
    with exit_on_error():
        current = kaon.deployments.get(name).spec.model_dump(exclude_none=True)
        if path is not None:
            current.pop("snapshot", None)
        changes, file_path = _spec(
            file, service, from_job, min_replicas, max_replicas, cpu, memory, gpus, public, env
        )
        if "service" in changes:
            current.pop("from_job", None)
        if "from_job" in changes:
            current.pop("service", None)
        current.update(changes)
        view = kaon.deployments.update(name, current, path=path or file_path)
    _show(view, json_)


@app.command("list")
def list_(client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """Deployments in the workspace, with their replicas."""
    with exit_on_error():
        views = make_client(client).deployments.list()
    if json_:
        print_json(views)
        return
    gateway = load_config().gateway_url
    rows = [
        (
            v.name,
            v.status,
            f"{v.ready_replicas}/{v.desired_replicas}",
            str(v.generation),
            f"{gateway}/{v.name}/",
            v.message,
        )
        for v in views
    ]
    console.print(rows_table(("NAME", "STATUS", "READY", "GEN", "URL", "INFO"), rows))


@app.command()
def get(name: str, client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """One deployment, its replicas and why it is where it is."""
    with exit_on_error():
        view = make_client(client).deployments.get(name)
    _show(view, json_)


@app.command()
def logs(
    name: str,
    replica: Annotated[str | None, typer.Option(help="replica id (default: the newest)")] = None,
    client: ClientOpt = None,
) -> None:
    """A replica's log: setup() tracebacks and request errors land here."""
    with exit_on_error():
        sys.stdout.write(make_client(client).deployments.logs(name, replica))


@app.command()
def delete(name: str, client: ClientOpt = None) -> None:
    """Stop every replica and remove the deployment."""
    with exit_on_error():
        make_client(client).deployments.delete(name)
    err.print(f"deleting {name}: replicas are draining")


@app.command()
def token(
    name: str,
    token_name: Annotated[str, typer.Option("--name", help="a label for the token")] = "token",
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create a token that can call only this deployment (shown once)."""
    with exit_on_error():
        created = make_client(client).deployments.create_token(name, token_name)
    if json_:
        print_json(created)
    else:
        console.print(f"token for {name}: [bold]{created.token}[/]")


def _show(view: DeploymentView, json_: bool) -> None:
    if json_:
        print_json(view)
        return
    console.print(f"[bold]{view.name}[/] {view.status}: {view.message}")
    gateway = load_config().gateway_url
    console.print(f"  call: POST {gateway}/{view.name}/<handler>  (Authorization: Bearer <token>)")
    rows = [
        (r.job_id, str(r.generation), r.state, r.url or "-", str(r.pid or "-"), r.message)
        for r in view.replicas
    ]
    if rows:
        console.print(rows_table(("REPLICA", "GEN", "STATE", "URL", "PID", "INFO"), rows))


def serve(
    path: Annotated[Path, typer.Argument(help="folder with the service code")] = Path("."),
    service: Annotated[str, typer.Option(help="module:Class of a kaon.Service")] = "",
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
) -> None:
    """Run one replica of a service locally, for development (no control plane)."""
    if not service:
        err.print("[red]error:[/] give --service module:Class")
        raise typer.Exit(EXIT_INPUT)
    from kaon.serving.runtime import serve as run_replica

    raise typer.Exit(run_replica(str(path), service, host, port))
