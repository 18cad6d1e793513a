"""`kaon backup create | verify | restore FILE`: local admin commands, beside the database.

A backup is taken from, and restored into, the control plane's own home and database
(``KAON_HOME``, ``KAON_DATABASE_URL``), not through the API: a restore happens before
any control plane runs. The work is done by ``python -m kaon.server.backup`` in a child
process, the way `kaon server` runs the control plane, since the CLI never imports the
control plane; this module only starts it and draws what it reports (a progress bar for
people, the final JSON object for scripts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from kaon.cli.common import EXIT_FAILED, JsonOpt
from kaon.cli.render import console, err, print_json

BACKUP_MODULE = "kaon.server.backup"
PHASES = {  # phase: (label, unit); a unit of None means bytes
    "database": ("copying the database", "pages"),
    "tables": ("reading tables", "tables"),
    "files": ("copying files", None),
    "artifacts": ("copying artifacts", "values"),
    "checking": ("checking the sha256", None),
    "reading": ("decrypting and checking", None),
    "writing": ("restoring", None),
}

app = typer.Typer(
    help="Back up a control plane to one encrypted file, verify one, restore one.",
    no_args_is_help=True,
)

FileArg = Annotated[Path, typer.Argument(help="the backup file")]
HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="the control plane's home (default: KAON_HOME)")
]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="SQLite path or postgresql:// URL (default: KAON_DATABASE_URL)"),
]


@app.command("create")
def create(file: FileArg, home: HomeOpt = None, db: DbOpt = None, json_: JsonOpt = False) -> None:
    """Back up the database, the home's state files and the artifact store, while Kaon runs.

    The master key is never in a backup: keep it apart; a restore needs it."""
    _run("create", file, home, db, json_)


@app.command("verify")
def verify(file: FileArg, home: HomeOpt = None, db: DbOpt = None, json_: JsonOpt = False) -> None:
    """Check a backup end to end (its sha256, every chunk, the master key); write nothing."""
    _run("verify", file, home, db, json_)


@app.command("restore")
def restore(file: FileArg, home: HomeOpt = None, db: DbOpt = None, json_: JsonOpt = False) -> None:
    """Restore a backup into an empty home and an empty database, then start Kaon there.

    The master key the backup was made under must be in the home (master.key) or in
    KAON_MASTER_KEY. Everything is checked before anything is written."""
    _run("restore", file, home, db, json_)


def _run(command: str, file: Path, home: Path | None, db: str | None, json_: bool) -> None:
    env = dict(os.environ)
    if home is not None:
        env["KAON_HOME"] = str(home.expanduser())
    if db is not None:
        env["KAON_DATABASE_URL"] = db
    argv = [sys.executable, "-m", BACKUP_MODULE, command, str(file.expanduser().absolute())]
    final: dict[str, Any] | None = None
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        with _Bar(enabled=not json_) as bar:
            for line in child.stdout:
                event = _parse(line)
                if event is None:
                    continue
                if event.get("event") == "progress":
                    bar.update(str(event["phase"]), int(event["done"]), int(event["total"]))
                else:
                    final = event
        code = child.wait()
    _finish(command, final, code, json_)


def _parse(line: str) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


class _Bar:
    """One bar per phase, on stderr, so stdout stays the result alone."""

    def __init__(self, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[amount]}"),
            console=err,
            disable=not enabled,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, phase: str, done: int, total: int) -> None:
        label, unit = PHASES.get(phase, (phase, ""))
        amount = f"{done}/{total} {unit}" if unit else f"{decimal(done)}/{decimal(total)}"
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(label, total=max(total, 1), amount=amount)
        self.progress.update(self.tasks[phase], completed=done, total=max(total, 1), amount=amount)


def _finish(command: str, final: dict[str, Any] | None, code: int, json_: bool) -> None:
    if final is None or final.get("event") != "result":
        message = (final or {}).get("message") or f"the backup command exited with {code}"
        if json_:
            print_json({"ok": False, "error": message})
        else:
            err.print(f"[red]error:[/] {message}")
        raise typer.Exit(code or EXIT_FAILED)
    result = {k: v for k, v in final.items() if k != "event"}
    if json_:
        print_json({"ok": True, **result})
        return
    contents = result.get("contents", {})
    rows = sum(contents.get("tables", {}).values())
    what = {"create": "backed up", "verify": "the backup is whole", "restore": "restored"}[command]
    console.print(
        f"{what}: {rows} rows, {contents.get('files', 0)} files, "
        f"{contents.get('artifacts', 0)} artifacts ({result['file']}, {result['bytes']} bytes)"
    )
    console.print(
        f"[dim]schema {result['schema_revision']}, master key {result['master_key_id']}, "
        f"sha256 {result['sha256']}[/]"
    )
    if command == "create":
        console.print(
            "[dim]the master key is not in the backup: keep it apart, a restore needs it[/]"
        )
    if command == "restore":
        console.print("[dim]start the control plane on this home and database: kaon up[/]")
