"""The control plane's home (``KAON_HOME``) is its user's alone.

It holds everything a job of one team must never reach: the database (every workspace's
jobs and token hashes), the key that derives job tokens, the master keys, the saved
admin token, every workspace's code, logs and checkpoints. On every start the home is
made 0700 and the group's and others' permissions are taken from each file and folder
directly in it (the owner's stay: a home shared with other files keeps them usable),
which also repairs a home made by an older Kaon. Below that nothing is reachable
without passing through them, and the server runs with umask 077 (`kaon.server.serve`),
so what it writes later is private as well.

Modes keep out other users of the machine. They do not keep out a process of the same
user: a job run as the control plane's own user can read all of it (see
docs/security.md for that trust model, and for running workers as other users).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from kaon.core.errors import KaonError
from kaon.core.writable import unwritable_message

PRIVATE_DIR = 0o700
PASSABLE_DIR = 0o711
OTHERS = 0o077  # every permission of the group and of other users

logger = logging.getLogger("kaon.security")


def make_home_private(home: Path, passable: bool = False) -> None:
    """Create `home` if needed, and take every permission but its owner's from it and
    from what lies directly in it. A home whose modes the server cannot change (another
    user's) is left as it is, with a warning; one it cannot write at all (a read-only
    disk) stops the start with `HomeNotWritableError`, before any job is looked at, so
    queued jobs wait rather than fail launching into it.

    `passable`: workers run as other users (`kaon.server.security.uids`), so they must
    pass through the home to their own run folders: it is 0711 (no listing), and the
    executor opens the folders on their way (`kaon.executors.local`)."""
    problem = unwritable_message(home)  # makes it, if it can
    if problem is not None:
        raise HomeNotWritableError(problem)
    try:
        os.chmod(home, PASSABLE_DIR if passable else PRIVATE_DIR)
        for entry in os.scandir(home):
            if entry.is_symlink():
                continue  # an operator's link to another disk: its own modes apply
            if passable and entry.name in ("runs", "checkpoints"):
                continue  # the executor keeps these passable
            mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
            if mode & OTHERS:
                os.chmod(entry.path, mode & ~OTHERS)  # the owner's own bits stay as they are
    except OSError as e:
        logger.warning("cannot make %s private to its user: %s", home, e)


class HomeNotWritableError(KaonError):
    """The home cannot be written: the control plane does not start."""
