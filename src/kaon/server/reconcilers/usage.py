"""The usage retention loop: deletes the resource usage of jobs that ended longer ago
than the server keeps it (``KAON_USAGE_RETENTION_DAYS``).

Samples arrive every few seconds from every worker, so a busy pool writes many rows; this
loop is what bounds them. It wakes rarely (``usage_cleanup_interval_s``) and deletes in
batches, answering "more to do" while a pass could not take every expired job.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from kaon.server.db.models import utcnow
from kaon.server.db.session import Database
from kaon.server.reconcilers.loop import Loop
from kaon.server.services import usage


class UsageRetention(Loop):
    """Deletes expired usage, one batch of jobs per pass."""

    name = "usage"

    def __init__(
        self,
        db: Database,
        retention_s: float,
        interval_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__()
        self.db = db
        self.retention = timedelta(seconds=retention_s)
        self.interval_s = interval_s
        self.clock = clock

    async def run_once(self) -> bool:
        async with self.db.session() as s:
            done = await usage.expire(s, self.clock(), self.retention)
        return done >= usage.EXPIRE_BATCH
