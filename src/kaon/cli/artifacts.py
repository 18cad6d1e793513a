"""`kaon artifact ...`: push a folder as a versioned artifact, list, get and delete them.

kaon artifact push digits data/digits --kind dataset     # -> digits:1
kaon artifact get digits:1 /tmp/digits                   # every file's sha256 checked
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from kaon.cli.common import ClientOpt, JsonOpt, exit_on_error, make_client
from kaon.cli.render import console, err, print_json, rows_table
from kaon.core.artifacts import ArtifactKind, ArtifactView
from kaon.sdk.artifacts import Progress as Advance
from kaon.sdk.artifacts import scan

app = typer.Typer(help="Versioned, encrypted artifacts: datasets, models, outputs.")
app.info.no_args_is_help = True


@contextmanager
def _bar(label: str, total: int) -> Iterator[Advance]:
    """A byte progress bar on stderr (nothing when stderr is not a terminal)."""
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    with progress:
        task = progress.add_task(label, total=max(total, 1))
        yield lambda n: progress.advance(task, n)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _rows(views: list[ArtifactView]) -> list[tuple[str, ...]]:
    return [
        (
            v.ref,
            v.kind.value,
            str(v.file_count),
            _size(v.size),
            v.source_job_id or "",
            v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
        for v in views
    ]


@app.command("push")
def push(
    name: str,
    path: Path,
    kind: Annotated[ArtifactKind, typer.Option("--kind", help="what it holds")] = (
        ArtifactKind.OTHER
    ),
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Keep a folder (or one file) as the next version of NAME; blobs the workspace
    already holds are not sent again."""
    with exit_on_error():
        files = scan(path)
        total = sum(f.entry.size for f in files)
        with _bar(f"push {name}", total) as advance:
            view = make_client(client).artifacts.push(
                name, path, kind=kind.value, progress=advance, files=files
            )
    if json_:
        print_json(view)
    else:
        console.print(f"pushed {view.ref} ({view.file_count} files, {_size(view.size)})")


@app.command("list")
def list_(
    name: Annotated[str | None, typer.Argument(help="only this artifact's versions")] = None,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Every version, newest first within each name."""
    with exit_on_error():
        views = make_client(client).artifacts.list(name)
    if json_:
        print_json(views)
        return
    columns = ("ARTIFACT", "KIND", "FILES", "SIZE", "FROM JOB", "CREATED (UTC)")
    console.print(rows_table(columns, _rows(views)))


@app.command("get")
def get(
    ref: Annotated[str, typer.Argument(help="NAME (the latest) or NAME:VERSION")],
    dest: Path,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Download a version into DEST, checking every file's sha256."""
    with exit_on_error():
        kaon = make_client(client)
        view = kaon.artifacts.get(ref)
        with _bar(f"get {view.ref}", view.size) as advance:
            kaon.artifacts.download(view.ref, dest, progress=advance)
    if json_:
        print_json(view)
    else:
        console.print(f"{view.ref}: {view.file_count} files in {dest}")


@app.command("delete")
def delete(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    client: ClientOpt = None,
) -> None:
    """Delete one version; the blobs no other version uses are deleted with it."""
    with exit_on_error():
        view = make_client(client).artifacts.delete(ref)
    console.print(f"deleted {view.ref}")
