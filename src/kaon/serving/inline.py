"""Where a sync (``def``) handler's next call runs: on the event loop, or in the thread pool.

Handing a call to a thread costs about 400 µs of CPU on a small machine (a future, a
wake-up of the worker, a wake-up of the loop, and the GIL passed back and forth each time
the handler releases it, which torch does in every op). For a model that runs in 60 µs
that hop is most of the cost of a request; for one that runs in 50 ms it is noise, and
running it on the loop would stall every other request, ``/healthz`` included.

So the replica measures. `InlineRule` keeps a handler in the pool until it has seen it
run there, then moves it to the loop when it is cheap, and back as soon as it is not:

- **pool -> loop**: the median wall time of the last `probe` pooled calls is under
  `budget_s`. The median, not the tail: under load a pooled call also waits for the GIL
  (the loop holds it), which inflates its tail but not its typical run; a handler that
  sleeps or blocks on I/O has a large median and never moves.
- **loop -> pool**, whichever comes first:

  - one call over `limit_s` (10 ms) of wall time in which the thread waited (slept, did
    I/O, took a lock): not one the kernel merely preempted (see `voluntary_waits`);
  - the p99 of its **CPU time** over `tail_s` (1 ms): more than 1% of the last `window`
    (1,000) calls;
  - the median of its **wall time** over `budget_s`: more than half of the last `probe`.

  The tail is judged on CPU time because on a busy machine the wall time of a 60 µs call
  includes, every few hundred calls, a preemption by the kernel that says nothing about
  the handler; and at 1 ms, not 200 µs, because the CPU time of that call has a p99 of
  150-400 µs on a busy 2-core machine (caches and the other hyperthread are shared).
  Judged on a 200 µs p99, or on wall time, the seed MLP flapped between the loop and the
  pool hundreds of times a minute and lost a third of its throughput. A call of up to
  1 ms now and then holds the other requests for about what the hop itself would add.
  Blocking (sleep, I/O, a lock) costs wall time but no CPU, so the wall-time median and
  the wall-time limit catch a handler that starts to block. Under heavy load the kernel
  also preempts a 60 µs call for 10-90 ms now and then (measured: 25 such calls in 10 s
  with two CPU hogs next to the benchmark), so a call over the limit counts only if the
  thread waited of its own accord during it: Linux counts those waits per thread
  (voluntary context switches), preemptions are counted apart.
- **back-off**: after a move back, the handler stays in the pool for `probe` calls, then
  twice as many after each further move (up to `max_cooldown`), so one whose cost flips
  does not keep probing the loop. A full window of cheap calls on the loop resets it.

The rule is plain bookkeeping, called on the loop thread only, so it needs no lock.
"""

from __future__ import annotations

import resource
import statistics
from collections import deque

__all__ = ["InlineRule", "voluntary_waits"]

BUDGET_S = 200e-6
TAIL_S = 1e-3
LIMIT_S = 10e-3


_RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)  # Linux only


def voluntary_waits() -> int:
    """How many times this thread has waited of its own accord (-1 where unknown).

    A blocking call (sleep, I/O, a lock) waits; a call the kernel preempts does not. Half
    a microsecond per call, against the 400 µs hop it saves.
    """
    if _RUSAGE_THREAD is None:
        return -1
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


class _Window:
    """The last `size` yes/no marks and how many are yes, in O(1) per mark."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.yes = 0
        self._marks: deque[bool] = deque(maxlen=size)

    def push(self, mark: bool) -> None:
        if len(self._marks) == self.size and self._marks[0]:
            self.yes -= 1
        self._marks.append(mark)
        self.yes += mark

    @property
    def full(self) -> bool:
        return len(self._marks) == self.size

    def clear(self) -> None:
        self._marks.clear()
        self.yes = 0


class InlineRule:
    """Decides whether a sync handler runs on the loop; fed with each call's times.

    ``fixed`` pins the answer (the handler's ``run_inline`` option): True always on the
    loop, False always in the pool; None measures.
    """

    def __init__(
        self,
        fixed: bool | None = None,
        *,
        budget_s: float = BUDGET_S,
        tail_s: float = TAIL_S,
        limit_s: float = LIMIT_S,
        probe: int = 32,
        window: int = 1000,
        max_cooldown: int = 4096,
    ) -> None:
        self.on_loop = bool(fixed)
        self.moves = 0  # loop <-> pool changes, for the metrics and tests
        self._fixed = fixed
        self._budget_s = budget_s
        self._tail_s = tail_s
        self._limit_s = limit_s
        self._probe = probe
        self._max_cooldown = max_cooldown
        self._pool_times: deque[float] = deque(maxlen=probe)
        self._cpu_slow = _Window(window)  # loop calls over tail_s in CPU time
        self._wall_slow = _Window(probe)  # loop calls over budget in wall time
        self._cooldown = 0
        self._next_cooldown = probe

    @property
    def limit_s(self) -> float:
        """Calls longer than this (wall time) are checked for waiting; see `observe_loop`."""
        return self._limit_s

    def observe_pool(self, wall_s: float) -> None:
        """A call that ran in the pool took `wall_s` (measured in the worker thread)."""
        if self._fixed is not None:
            return
        self._pool_times.append(wall_s)
        if self._cooldown > 0:
            self._cooldown -= 1
            return
        full = len(self._pool_times) == self._probe
        if full and statistics.median(self._pool_times) < self._budget_s:
            self._move(on_loop=True)

    def observe_loop(self, wall_s: float, cpu_s: float, waited: bool = True) -> None:
        """A call that ran on the loop took `wall_s`, of which `cpu_s` on the CPU;
        `waited`: the thread waited of its own accord during it (True when unknown)."""
        if self._fixed is not None:
            return
        self._cpu_slow.push(cpu_s > self._tail_s)
        self._wall_slow.push(wall_s > self._budget_s)
        over = wall_s > self._limit_s and (waited or cpu_s > self._limit_s)
        tail = self._cpu_slow.yes * 100 > self._cpu_slow.size
        blocking = self._wall_slow.yes * 2 > self._wall_slow.size
        if over or tail or blocking:
            self._cooldown = self._next_cooldown
            self._next_cooldown = min(2 * self._next_cooldown, self._max_cooldown)
            self._move(on_loop=False)
        elif self._cpu_slow.full and self._cpu_slow.yes == 0:
            self._next_cooldown = self._probe  # a full window of cheap calls: forgive

    def _move(self, *, on_loop: bool) -> None:
        self.on_loop = on_loop
        self.moves += 1
        self._pool_times.clear()
        self._cpu_slow.clear()
        self._wall_slow.clear()
