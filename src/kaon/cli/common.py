"""Options and error handling shared by every command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from kaon.cli.render import err
from kaon.core.errors import (
    AuthError,
    InvalidSpecError,
    KaonError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from kaon.sdk.client import Client, ConnectionFailed

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
ClientOpt = Annotated[
    str | None, typer.Option("--workspace", "-W", help="workspace (default: from config)")
]

EXIT_FAILED, EXIT_INPUT, EXIT_NOT_FOUND, EXIT_AUTH, EXIT_UNREACHABLE, EXIT_TIMEOUT = (
    1,
    2,
    3,
    4,
    5,
    6,
)
_CODES: list[tuple[type[BaseException], int]] = [
    (ConnectionFailed, EXIT_UNREACHABLE),
    (AuthError, EXIT_AUTH),
    (PermissionDeniedError, EXIT_AUTH),
    (NotFoundError, EXIT_NOT_FOUND),
    (InvalidSpecError, EXIT_INPUT),
    (PayloadTooLargeError, EXIT_INPUT),
    (TimeoutError, EXIT_TIMEOUT),
]


def make_client(workspace: str | None = None) -> Client:
    return Client(workspace=workspace)


@contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn Kaon errors into one red line and a documented exit code."""
    try:
        yield
    except (KaonError, TimeoutError, OSError, ValueError) as e:
        code = next((c for cls, c in _CODES if isinstance(e, cls)), EXIT_FAILED)
        if isinstance(e, ValueError | OSError) and not isinstance(e, KaonError):
            code = EXIT_INPUT
        field = f" ({e.field})" if isinstance(e, InvalidSpecError) and e.field else ""
        err.print(f"[red]error{field}:[/] {e}")
        if isinstance(e, AuthError):
            err.print("[dim]log in with: kaon login URL --token TOKEN[/]")
        raise typer.Exit(code) from None
