"""``python -m kaon.server.backup create|verify|restore FILE``: the local admin command.

It reads ``KAON_HOME`` and ``KAON_DATABASE_URL`` as the server does. Its output is one
JSON object a line, for the `kaon backup` command to draw (the CLI never imports the
control plane): ``{"event": "progress", "phase", "done", "total"}`` as it goes, then one
``{"event": "result", ...}`` or ``{"event": "error", "message"}``. Exit status: 0 done,
2 refused (nothing was written), 1 failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from kaon.core.errors import KaonError
from kaon.server.backup import run
from kaon.server.backup.format import BackupRefusedError
from kaon.server.config import Settings

EXIT_FAILED, EXIT_REFUSED = 1, 2
COMMANDS = {"create": run.create, "verify": run.verify, "restore": run.restore}


def _emit(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Reporter:
    """Progress events, at most ten a second per phase (and always its last one)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last.get(phase, 0.0) < 0.1:
            return
        self._last[phase] = now
        _emit({"event": "progress", "phase": phase, "done": done, "total": total})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaon.server.backup")
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    os.umask(0o077)  # what it writes (a backup, a restored home) is this user's alone
    try:
        result = COMMANDS[args.command](Settings.from_env(), args.file, Reporter())
    except BackupRefusedError as e:
        _emit({"event": "error", "message": e.message, "refused": True})
        return EXIT_REFUSED
    except (KaonError, OSError) as e:
        _emit({"event": "error", "message": str(e), "refused": False})
        return EXIT_FAILED
    except Exception as e:  # a database error, say: its kind and message, and the trace
        traceback.print_exc()
        _emit({"event": "error", "message": f"{type(e).__name__}: {e}", "refused": False})
        return EXIT_FAILED
    _emit({"event": "result", **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
