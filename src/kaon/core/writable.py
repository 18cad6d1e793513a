"""Whether a folder can be written, asked once at start rather than learnt from a failure.

Kaon keeps its database, keys, code, logs and run folders under ``KAON_HOME``. A home on
a read-only disk (or one this user may not write) would otherwise show up late and
confusingly: as a traceback from the first file written, or as every launched job failing
for a reason that has nothing to do with the job. The control plane and ``kaon up`` ask
here first and refuse to start with the reason instead.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def unwritable(folder: Path) -> str | None:
    """Why nothing can be written in `folder` (made if missing), or None if a file can be
    created and removed there. Tries for real: modes alone do not tell (root, read-only
    mounts, ACLs)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check-{secrets.token_hex(4)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def unwritable_message(folder: Path) -> str | None:
    """The error to show for a home that cannot be written, or None."""
    why = unwritable(folder)
    if why is None:
        return None
    return (
        f"KAON_HOME {folder} is not writable ({why}): Kaon keeps its database, keys, logs "
        "and run folders there. Make it writable by this user, or set KAON_HOME to a "
        "folder that is; queued jobs stay queued until then."
    )
