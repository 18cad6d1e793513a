"""Tiresias' discretized 2D-Gittins index: a baseline that knows the distribution of past
jobs' service, but not any one job's duration.

Source: Gu et al., "Tiresias: A GPU Cluster Manager for Distributed Deep Learning",
NSDI'19, section 4.2, and its simulator (SymbioticLab/Tiresias, `run_sim.py`, schedule
`dlas-gpu-gittins`). The rules, one by one:

* Service is two-dimensional: GPUs x seconds run (`Workload.attained`).
* The queues are LAS's: attained GPU-seconds below 3,250, 7,200 and 18,000 put a job in
  queue 0, 1, 2, else 3. A job in a lower queue goes first and preempts running jobs of
  a higher queue (discretized so that jobs are not preempted at every small difference).
* Inside a queue, jobs go by their Gittins index, highest first, then by submit time.
  For attained service `a` and the service quantum `delta` (3,250 GPU-seconds, the
  simulator's `gittins_delta`), with `S` the service of a past job,

      G(a) = P(S - a <= delta | S > a) / E[min(S - a, delta) | S > a]

  the chance of finishing within the next quantum per GPU-second it costs. A job whose
  service is past every sample's gets index 0.
* Inside a queue the index orders the queue but does not preempt: the index of a
  running job changes as it runs, and preempting on it would swap jobs back and forth
  at every event, which the queues exist to avoid.

The distribution is fitted with `learn(samples)`; without samples every index is 0 and
the policy is exactly `las`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import ClassVar

from kaon.scheduler.model import Workload
from kaon.scheduler.policies import Blocking, Key, LasPolicy


@dataclass(frozen=True)
class GittinsPolicy(LasPolicy):
    """2D-Gittins inside LAS's queues; see the module docstring for the rules."""

    delta: float = 3250.0
    samples: tuple[float, ...] = ()  # past jobs' service in GPU-seconds, sorted
    prefix: tuple[float, ...] = field(default=(0.0,), repr=False)  # prefix sums of samples
    name: ClassVar[str] = "gittins"
    blocking: ClassVar[Blocking] = "skip"

    def learn(self, samples: Sequence[float]) -> GittinsPolicy:
        ordered = tuple(sorted(float(s) for s in samples))
        return GittinsPolicy(
            thresholds=self.thresholds,
            delta=self.delta,
            samples=ordered,
            prefix=(0.0, *accumulate(ordered)),
        )

    def index(self, attained: float) -> float:
        """G(attained): the chance to finish in the next `delta` GPU-seconds per
        GPU-second spent, among past jobs that ran at least `attained`."""
        data, n = self.samples, len(self.samples)
        lo = bisect_right(data, attained)
        if lo >= n:
            return 0.0
        hi = bisect_right(data, attained + self.delta)
        left = n - lo
        finish = (hi - lo) / left
        spent = self.prefix[hi] - self.prefix[lo] - attained * (hi - lo) + self.delta * (n - hi)
        return finish / (spent / left) if spent > 0 else 0.0

    def key(self, w: Workload, now: float) -> Key:
        attained = w.attained(now)
        queue = bisect_right(self.thresholds, attained)
        return (-w.priority, queue, -self.index(attained), w.submitted_at)
