"""`kaon secret ...`: a workspace's secrets, and `kaon admin rotate-master-key`.

A value is read from standard input or a file, never from an argument: arguments end up
in shell history and in every user's process list.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from kaon.cli.common import ClientOpt, JsonOpt, exit_on_error, make_client
from kaon.cli.render import console, print_json, rows_table
from kaon.core.secrets import SecretView

app = typer.Typer(help="Secrets of a workspace, used by jobs as env.", no_args_is_help=True)
admin_app = typer.Typer(help="Operating the control plane (admin).", no_args_is_help=True)


def _read_value(from_file: Path | None) -> str:
    """The value from `from_file`, else standard input, less one trailing newline (what
    ``echo`` and editors add)."""
    if from_file is not None:
        text = from_file.read_text()
    else:
        if sys.stdin.isatty():
            console.print("value (end with Ctrl-D):", highlight=False)
        text = sys.stdin.read()
    text = text[:-1] if text.endswith("\n") else text
    if not text:
        raise ValueError("the secret's value is empty")
    return text


def _rows(views: list[SecretView]) -> list[tuple[str, ...]]:
    return [
        (v.name, str(v.version), v.updated_by, v.updated_at.strftime("%Y-%m-%d %H:%M:%S"))
        for v in views
    ]


@app.command("set")
def set_(
    name: str,
    from_file: Annotated[
        Path | None, typer.Option("--from-file", help="read the value from this file")
    ] = None,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create a secret or store a new version of it; the value comes from standard input
    (or --from-file), never from the command line.

    echo -n "$OPENAI_KEY" | kaon secret set openai-key
    """
    with exit_on_error():
        view = make_client(client).secrets.set(name, _read_value(from_file))
    if json_:
        print_json(view)
    else:
        console.print(f"secret {view.name} is at version {view.version}")


@app.command("list")
def list_(client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """Names, versions, who set them and when (never values)."""
    with exit_on_error():
        views = make_client(client).secrets.list()
    if json_:
        print_json(views)
        return
    console.print(rows_table(("NAME", "VERSION", "SET BY", "SET AT (UTC)"), _rows(views)))


@app.command("delete")
def delete(name: str, client: ClientOpt = None) -> None:
    """Delete a secret. Jobs that reference it and start later fail with the reason."""
    with exit_on_error():
        make_client(client).secrets.delete(name)
    console.print(f"deleted secret {name}")


@admin_app.command("rotate-master-key")
def rotate_master_key(json_: JsonOpt = False) -> None:
    """Re-wrap every workspace's data key under a new master key, while Kaon runs.

    With the key file in KAON_HOME, a new key is made and the old one forgotten once
    unused. With KAON_MASTER_KEY, put the new key first (KAON_MASTER_KEY=new,old),
    restart, run this, then drop the old key.
    """
    with exit_on_error():
        result = make_client().admin.rotate_master_key()
    if json_:
        print_json(result)
        return
    retired = ", ".join(result.retired) or "none"
    console.print(
        f"re-wrapped {result.rewrapped} data keys under {result.master_key_id}; retired: {retired}"
    )
