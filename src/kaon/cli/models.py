"""`kaon model ...`: the model registry of a workspace.

kaon model register churn --from-job j-3f9c2a7b1d04 --alias production
kaon model alias churn production 2       # deployments following it roll to 2
kaon deploy create churn --model churn:production
"""

from __future__ import annotations

from typing import Annotated

import typer

from kaon.cli.common import EXIT_INPUT, ClientOpt, JsonOpt, exit_on_error, make_client
from kaon.cli.render import console, err, print_json, rows_table
from kaon.core.registry import ModelVersionView, ModelView

app = typer.Typer(help="Registered models: versions and aliases.", no_args_is_help=True)


def _when(view: ModelView | ModelVersionView) -> str:
    return view.created_at.strftime("%Y-%m-%d %H:%M:%S")


def _metrics(view: ModelVersionView) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(view.metrics.items())) or "-"


@app.command()
def register(
    name: str,
    from_job: Annotated[
        str | None, typer.Option("--from-job", help="a succeeded kaon.train job")
    ] = None,
    artifact: Annotated[
        str | None, typer.Option("--artifact", help="an artifact: NAME or NAME:VERSION")
    ] = None,
    alias: Annotated[
        str | None, typer.Option("--alias", help="point this alias at the new version")
    ] = None,
    description: Annotated[str | None, typer.Option(help="what the model is")] = None,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Register a new version of a model from a job's checkpoints or an artifact."""
    if (from_job is None) == (artifact is None):
        err.print("[red]error:[/] give exactly one of --from-job and --artifact")
        raise typer.Exit(EXIT_INPUT)
    with exit_on_error():
        view = make_client(client).models.register(
            name, from_job=from_job, artifact=artifact, alias=alias, description=description
        )
    if json_:
        print_json(view)
        return
    aliases = f" ({', '.join(view.aliases)})" if view.aliases else ""
    console.print(f"registered {view.ref}{aliases} from {view.artifact}", highlight=False)


@app.command("list")
def list_(client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """Models of the workspace, their newest version and aliases."""
    with exit_on_error():
        views = make_client(client).models.list()
    if json_:
        print_json(views)
        return
    rows = [
        (
            v.name,
            str(v.latest_version or "-"),
            ", ".join(f"{a}={n}" for a, n in v.aliases.items()) or "-",
            v.created_by,
            _when(v),
        )
        for v in views
    ]
    console.print(rows_table(("NAME", "LATEST", "ALIASES", "CREATED BY", "CREATED (UTC)"), rows))


@app.command()
def show(name: str, client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """A model's versions (newest first) with their metrics, code and aliases."""
    with exit_on_error():
        view = make_client(client).models.get(name)
    if json_:
        print_json(view)
        return
    if view.description:
        console.print(view.description, highlight=False)
    rows = [
        (
            str(v.version),
            ", ".join(v.aliases) or "-",
            v.artifact,
            v.source_job_id or "-",
            _metrics(v),
            _when(v),
        )
        for v in view.versions
    ]
    columns = ("VERSION", "ALIASES", "ARTIFACT", "JOB", "METRICS", "CREATED (UTC)")
    console.print(rows_table(columns, rows))


@app.command()
def alias(
    name: str,
    alias: str,
    version: Annotated[int | None, typer.Argument(help="the version; omit with --remove")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="remove the alias")] = False,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Point an alias at a version (deployments following it roll), or remove it."""
    if remove == (version is not None):
        err.print("[red]error:[/] give a VERSION, or --remove")
        raise typer.Exit(EXIT_INPUT)
    with exit_on_error():
        models = make_client(client).models
        view = (
            models.remove_alias(name, alias)
            if version is None
            else models.set_alias(name, alias, version)
        )
    if json_:
        print_json(view)
    elif version is None:
        console.print(f"removed alias {name}:{alias}", highlight=False)
    else:
        console.print(f"{name}:{alias} -> version {version}", highlight=False)


@app.command()
def delete(ref: str, client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """Delete one version, NAME:VERSION (refused while an alias or deployment uses it)."""
    with exit_on_error():
        view = make_client(client).models.delete(ref)
    if json_:
        print_json(view)
    else:
        console.print(f"deleted {view.ref}", highlight=False)
