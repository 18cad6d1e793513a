"""The job reconciler: observe running workers, schedule queued jobs, launch placed ones.

Each pass has three steps, each of which loads what it needs in a short transaction,
talks to the executor with no transaction open, and writes its result back guarded by
the job's `version` (a write that finds the row changed is dropped; the next pass sees
the new state). Any step may be cut short by a crash: the executor's calls are
idempotent and the next pass, in this process or a restarted one, picks up from the
database.

    observe:  STARTING/RUNNING/RETRYING/PREEMPTED -> poll workers -> job_steps.next_step
    schedule: QUEUED -> kaon.scheduler.schedule(pool) -> STARTING (+ worker rows)
    launch:   STARTING without handles -> executor.launch -> RUNNING

`run_once()` is one pass, the unit the tests drive; `run_forever()` repeats it, at once
when poked (a submit, a cancel, a worker that ended) and otherwise every `interval_s`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from kaon.executors.base import Executor
from kaon.executors.pools import Pools
from kaon.server.db.models import utcnow
from kaon.server.db.session import Database
from kaon.server.reconcilers.job_launch import LaunchConfig, launch
from kaon.server.reconcilers.job_observe import observe
from kaon.server.reconcilers.job_schedule import CapacityRequests, schedule
from kaon.server.reconcilers.loop import Loop

__all__ = ["JobReconciler", "LaunchConfig"]


class JobReconciler(Loop):
    name = "jobs"

    def __init__(
        self,
        db: Database,
        executor: Executor,
        config: LaunchConfig,
        clock: Callable[[], datetime] = utcnow,
        interval_s: float = 1.0,
    ) -> None:
        super().__init__()
        self.db = db
        self.executor = executor
        self.config = config
        self.clock = clock
        self.interval_s = interval_s
        self.capacity = CapacityRequests(executor) if isinstance(executor, Pools) else None

    async def started(self) -> None:
        self.executor.set_listener(self.poke)  # a worker that ends wakes the loop

    async def run_once(self) -> bool:
        """One pass. True when it left work for an immediate next pass (a job it stopped
        or preempted, whose workers must be observed gone before it moves on)."""
        again = await observe(self.db, self.executor, self.config.stop_grace_s, self.clock)
        again |= await schedule(self.db, self.clock, self.config.token_key, self.capacity)
        again |= await launch(self.db, self.executor, self.config, self.clock)
        return again
