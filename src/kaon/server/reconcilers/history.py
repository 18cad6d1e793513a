"""The history recording loop: samples the pool into the control plane's in-memory
history (`kaon.server.services.history`) every ``KAON_HISTORY_INTERVAL_S``."""

from __future__ import annotations

import time
from collections.abc import Callable

from kaon.server.db.session import Database
from kaon.server.reconcilers.loop import Loop
from kaon.server.services.history import PoolHistory, sample


class HistoryRecorder(Loop):
    """Samples the pool into `history` every `history.interval_s`."""

    name = "history"

    def __init__(
        self, db: Database, history: PoolHistory, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__()
        self.db = db
        self.history = history
        self.interval_s = history.interval_s
        self.clock = clock

    async def run_once(self) -> bool:
        now = self.clock()
        async with self.db.session() as s:
            await self.history.readings.read(s, now)
            self.history.record(await sample(s, now, self.history.readings.values(now)))
        return False
