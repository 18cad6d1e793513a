"""SIGTERM is a request, not a crash.

A platform that needs the machine back sends SIGTERM and waits a grace period. The
handler here only sets a flag; the loop reads it after each step, so the step in flight
finishes, a checkpoint is written, and `Preempted` ends the process with
`EXIT_CODE_RESUME` (75), which the platform reads as "preempted, resume me" and which does
not spend one of the job's retries.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from kaon.core.jobs import EXIT_CODE_RESUME

__all__ = ["Preempted", "SigtermFlag"]


class Preempted(SystemExit):
    """Raised by `fit()` after SIGTERM, once the checkpoint is on disk. Left uncaught it
    ends the process with `EXIT_CODE_RESUME` (75): "preempted, resume me"."""

    def __init__(self, step: int) -> None:
        super().__init__(EXIT_CODE_RESUME)
        self.step = step


class SigtermFlag:
    """Turns SIGTERM into a flag the loop reads after each step."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The handler, for the length of the block; the previous one is put back."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
