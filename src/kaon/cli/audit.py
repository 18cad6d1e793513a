"""`kaon audit ...`: read the audit log and verify its hash chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from kaon.cli.common import EXIT_FAILED, JsonOpt, exit_on_error, make_client
from kaon.cli.render import console, err, print_json, rows_table

app = typer.Typer(
    help="The audit log: who changed what, and who was refused.", no_args_is_help=True
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> datetime:
    """An ISO time (UTC when it names no zone), or an age such as ``30m``, ``2h``, ``7d``."""
    if text and text[-1] in _UNITS and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * _UNITS[text[-1]])
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@app.command("list")
def list_(
    workspace: Annotated[
        str | None, typer.Option("--workspace", "-W", help="only this workspace's records")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="from this time (ISO, UTC) or age (30m, 2h, 7d)")
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many, the newest")] = 1000,
    json_: JsonOpt = False,
) -> None:
    """Records, oldest first: an admin sees every workspace's, others their own."""
    with exit_on_error():
        when = parse_since(since) if since else None
        records = make_client().audit.list(workspace, when, limit)
    if json_:
        print_json(records)
        return
    rows = [
        (
            str(r.seq),
            r.time.strftime("%Y-%m-%d %H:%M:%S"),
            r.token_name or r.principal or "-",
            r.workspace or "-",
            r.action,
            r.resource or "-",
            f"{r.outcome} ({r.status})",
            r.source or "-",
        )
        for r in records
    ]
    columns = ("SEQ", "TIME (UTC)", "WHO", "WORKSPACE", "ACTION", "RESOURCE", "OUTCOME", "FROM")
    console.print(rows_table(columns, rows))


@app.command("verify")
def verify(json_: JsonOpt = False) -> None:
    """Walk the whole hash chain (admin); exits 1 naming the first record that was
    edited, deleted or moved."""
    with exit_on_error():
        result = make_client().audit.verify()
    if json_:
        print_json(result)
    elif result.ok:
        console.print(
            f"the audit log is intact: {result.checked} records, head {result.head_hash}"
        )
    else:
        err.print(f"[red]the audit log was tampered with:[/] {result.problem}")
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)
