"""Where a sync (``def``) handler's next call runs: on the event loop, or in the thread pool.

Handing a call to a thread costs about 400 µs of CPU on a small machine (a future, a
wake-up of the worker, a wake-up of the loop, and the GIL passed back and forth each time
the handler releases it, which torch does in every op). For a model that runs in 50 µs
that hop is most of the cost of a request; for one that runs in 50 ms it is noise, and
running it on the loop would stall every other request, ``/healthz`` included.

So the replica measures. `InlineRule` keeps a handler in the pool until it has seen it
run there, then moves it to the loop when it is cheap, and back as soon as it is not:

- **pool -> loop**: the median wall time of the last `probe` pool calls is under
  `budget_s`. The median, not the tail: under load a pooled call also waits for the GIL
  (the loop holds it), which inflates its tail but not its typical run; a handler that
  sleeps or blocks on I/O has a large median and never moves.
- **loop -> pool**: one call over `limit_s`, or more than 1% of the last `window` calls
  over `budget_s` (the p99 is over the budget). A handler that is slow now and then thus
  stalls the loop once, for one call, and goes back to the pool.
- **back-off**: after a move back, the handler stays in the pool for `probe` calls, then
  twice as many after each further move (up to `max_cooldown`), so one whose cost flips
  does not keep probing the loop. A full window of cheap calls on the loop resets it.

The rule is plain bookkeeping, called on the loop thread only, so it needs no lock.
"""

from __future__ import annotations

import statistics
from collections import deque

__all__ = ["InlineRule"]

BUDGET_S = 200e-6
LIMIT_S = 10e-3


class InlineRule:
    """Decides whether a sync handler runs on the loop; fed with each call's wall time.

    ``fixed`` pins the answer (the handler's ``run_inline`` option): True always on the
    loop, False always in the pool; None measures.
    """

    def __init__(
        self,
        fixed: bool | None = None,
        *,
        budget_s: float = BUDGET_S,
        limit_s: float = LIMIT_S,
        probe: int = 32,
        window: int = 100,
        max_cooldown: int = 4096,
    ) -> None:
        self.on_loop = bool(fixed)
        self.moves = 0  # loop <-> pool changes, for the metrics and tests
        self._fixed = fixed
        self._budget_s = budget_s
        self._limit_s = limit_s
        self._probe = probe
        self._window = window
        self._max_cooldown = max_cooldown
        self._pool_times: deque[float] = deque(maxlen=probe)
        self._loop_slow: deque[bool] = deque(maxlen=window)
        self._slow = 0  # how many of _loop_slow are True
        self._cooldown = 0
        self._next_cooldown = probe

    def observe_pool(self, seconds: float) -> None:
        """A call that ran in the pool took `seconds` (wall time, in the worker)."""
        if self._fixed is not None:
            return
        self._pool_times.append(seconds)
        if self._cooldown > 0:
            self._cooldown -= 1
            return
        full = len(self._pool_times) == self._probe
        if full and statistics.median(self._pool_times) < self._budget_s:
            self._move(on_loop=True)

    def observe_loop(self, seconds: float) -> None:
        """A call that ran on the loop took `seconds`."""
        if self._fixed is not None:
            return
        slow = seconds > self._budget_s
        if len(self._loop_slow) == self._window and self._loop_slow[0]:
            self._slow -= 1
        self._loop_slow.append(slow)
        self._slow += slow
        if seconds > self._limit_s or self._slow * 100 > self._window:
            self._cooldown = self._next_cooldown
            self._next_cooldown = min(2 * self._next_cooldown, self._max_cooldown)
            self._move(on_loop=False)
        elif len(self._loop_slow) == self._window and self._slow == 0:
            self._next_cooldown = self._probe  # a full window of cheap calls: forgive

    def _move(self, *, on_loop: bool) -> None:
        self.on_loop = on_loop
        self.moves += 1
        self._pool_times.clear()
        self._loop_slow.clear()
        self._slow = 0
