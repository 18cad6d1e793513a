"""Counting failed authentications per source address, in bounded memory.

A pure decision object, used by the control plane (`kaon.server.security.ratelimit`) and
by the gateway (`kaon.gateway.app`), which both check bearer tokens. Only failures are
written: a request with a good token reads one dictionary entry and writes nothing, so
guessing is slowed without slowing the callers who hold a token.

Each source gets a fixed window: its first failure opens it, and once `limit` failures
fall inside it the source is refused until the window ends (that wait is the
``Retry-After``). Sources are kept in least-recently-failed order and the oldest is
forgotten past `max_sources`, so a flood of addresses costs a bounded amount of memory (it
can push an address out early, which only gives that address a fresh window).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass

ENV_LIMIT = "KAON_AUTH_FAILURE_LIMIT"
ENV_WINDOW = "KAON_AUTH_FAILURE_WINDOW_S"
DEFAULT_LIMIT = 30
DEFAULT_WINDOW_S = 60.0
DEFAULT_SOURCES = 10_000


@dataclass
class _Window:
    start: float
    failures: int


class FailureLimiter:
    """Failed authentications per source within `window_s`; `limit` of them blocks it."""

    def __init__(
        self,
        limit: int = DEFAULT_LIMIT,
        window_s: float = DEFAULT_WINDOW_S,
        max_sources: int = DEFAULT_SOURCES,
    ) -> None:
        if limit < 1 or not window_s > 0 or max_sources < 1:
            raise ValueError("limit, window_s and max_sources must be positive")
        self.limit = limit
        self.window_s = window_s
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _Window] = OrderedDict()

    @classmethod
    def from_env(cls) -> FailureLimiter:
        """Settings from ``KAON_AUTH_FAILURE_LIMIT`` and ``KAON_AUTH_FAILURE_WINDOW_S``."""
        limit = int(os.environ.get(ENV_LIMIT, DEFAULT_LIMIT))
        window = float(os.environ.get(ENV_WINDOW, DEFAULT_WINDOW_S))
        return cls(limit, window)

    def __len__(self) -> int:
        return len(self._sources)

    def retry_after(self, source: str | None, now: float) -> int | None:
        """Whole seconds `source` must wait before it is heard again, or None if it may
        call now. Reads only, unless a window it finds is over (then it forgets it)."""
        if source is None:
            return None
        window = self._sources.get(source)
        if window is None:
            return None
        left = window.start + self.window_s - now
        if left <= 0:
            del self._sources[source]
            return None
        return max(1, math.ceil(left)) if window.failures >= self.limit else None

    def failed(self, source: str | None, now: float) -> bool:
        """Count one failure of `source`; True when this one reaches the limit (once per
        window: what a log line should say)."""
        if source is None:
            return False
        window = self._sources.pop(source, None)
        if window is None or now - window.start >= self.window_s:
            window = _Window(now, 0)
        window.failures += 1
        self._sources[source] = window  # the most recent failure last
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)
        return window.failures == self.limit
