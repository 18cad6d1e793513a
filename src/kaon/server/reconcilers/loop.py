"""The loop every reconciler runs: one pass, then wait for a poke or the interval.

A pass that raises is logged and the loop goes on (Ray Serve's "the loop never dies"):
the next pass starts again from the database. `run_once()` is the pass and the unit tests
drive; `poke()` wakes the loop at once, from any thread (a request handler, an executor's
reaper thread), so new work never waits for the interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging


class Loop:
    """Base of the reconcilers. Subclasses implement `run_once()`; a True answer means
    "more work is due at once" and the next pass follows after `busy_interval_s`."""

    name = "reconcile"
    interval_s: float = 1.0
    busy_interval_s: float = 0.0

    def __init__(self) -> None:
        self.wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logger = logging.getLogger(f"kaon.reconciler.{self.name}")

    def poke(self) -> None:
        """Wake the loop now; safe from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.wakeup.set)

    async def run_once(self) -> bool:
        raise NotImplementedError

    async def started(self) -> None:
        """Called once in the loop's task before the first pass."""

    async def stopped(self) -> None:
        """Called once when the loop ends (its task is cancelled at shutdown)."""

    async def run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.started()
        try:
            while True:
                self.wakeup.clear()
                busy = False
                try:
                    busy = await self.run_once()
                except Exception:
                    self._logger.exception("%s pass failed", self.name)  # keep looping
                wait = self.busy_interval_s if busy else self.interval_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), wait)
        finally:
            await self.stopped()
