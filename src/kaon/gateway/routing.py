"""Live routing state of the gateway: which replica gets the next request, and who waits.

Each deployment keeps its ready replicas with the number of requests outstanding at each
(sent by this gateway, not yet answered). A request goes to the replica with the fewest
outstanding requests (least outstanding requests, LOR), ties broken in turn, and never to
one already at ``max_concurrency``. When every replica is at its limit, or there is none,
the request waits in a FIFO queue of at most ``max_queue``:

- queue full                        -> `QueueFullError` (429 + Retry-After)
- no slot within the wait limit     -> `NoReplicaError` (503 + Retry-After)

The wait limit is the route's ``request_timeout_s``, or ``cold_start_timeout_s`` while the
deployment has no ready replica at all: that is how a scale-from-zero request is held until
the first replica appears instead of failing. A freed slot is handed straight to the
oldest waiter, so the queue is fair and a newcomer cannot overtake it.

All of this runs on the gateway's event loop only; nothing here locks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from kaon.core.gateway import Route
from kaon.core.replicas import REPLICA_KEY_HEADER

__all__ = ["DeploymentState", "NoReplicaError", "QueueFullError", "Replica"]

EJECT_S = 5.0
"""How long a replica that refused or dropped a connection is skipped. The control plane's
health checks take it out of the table for good; this covers the seconds before that."""


class QueueFullError(Exception):
    """The deployment's queue is at ``max_queue``."""


class NoReplicaError(Exception):
    """No replica slot came free within the wait limit."""


@dataclass(eq=False)
class Replica:
    url: str
    host: str
    port: int
    outstanding: int = 0
    ejected_until: float = 0.0
    key_line: bytes = b""  # the header line with its credential, added to each request
    key: str | None = None  # which a new connection's process must prove it holds

    def set_key(self, key: str | None) -> None:
        """Built once per route table, not per request: the gateway's budget is tight."""
        self.key = key
        self.key_line = b"%s: %s\r\n" % (REPLICA_KEY_HEADER.encode(), key.encode()) if key else b""

    @classmethod
    def parse(cls, url: str) -> Replica:
        parts = urlsplit(url)
        return cls(url, parts.hostname or "127.0.0.1", parts.port or 80)


class DeploymentState:
    """One deployment's replicas, outstanding counts and waiting requests."""

    def __init__(self, route: Route, on_demand: Callable[[str], None] | None = None) -> None:
        self.route = route
        self.key = route.key  # `kaon.core.gateway.deployment_key`: built once, not per request
        self.replicas: list[Replica] = []
        self.waiters: deque[asyncio.Future[Replica]] = deque()
        self._on_demand = on_demand
        self._turn = 0
        self.update(route)

    @property
    def name(self) -> str:
        return self.route.name

    @property
    def in_flight(self) -> int:
        return sum(r.outstanding for r in self.replicas)

    @property
    def queued(self) -> int:
        return len(self.waiters)

    @property
    def waiting_for_replica(self) -> bool:
        return bool(self.waiters) and not self.replicas

    def update(self, route: Route) -> list[Replica]:
        """Take a new route; keeps the counts of replicas still there. Returns those gone."""
        self.route = route
        known = {r.url: r for r in self.replicas}
        self.replicas = [
            known.pop(url) if url in known else Replica.parse(url) for url in route.replicas
        ]
        for replica in self.replicas:  # a replica restarted at the same URL has a new one
            replica.set_key(route.replica_keys.get(replica.url))
        self._dispatch()
        return list(known.values())

    def pick(self, exclude: Iterable[Replica] = ()) -> Replica | None:
        """The ready replica with the fewest outstanding requests and a free slot."""
        best: Replica | None = None
        count = len(self.replicas)
        now = time.monotonic()
        cap = self.route.max_concurrency
        self._turn += 1
        for i in range(count):
            r = self.replicas[(self._turn + i) % count]
            if r.outstanding >= cap or r.ejected_until > now or r in exclude:
                continue
            if best is None or r.outstanding < best.outstanding:
                best = r
        return best

    def take(self, replica: Replica) -> Replica:
        replica.outstanding += 1
        return replica

    async def acquire(self) -> Replica:
        """A replica slot for one request, waiting in the queue if need be."""
        if not self.waiters:
            replica = self.pick()
            if replica is not None:
                return self.take(replica)
        if len(self.waiters) >= self.route.max_queue:
            raise QueueFullError
        if not self.replicas:
            if self._on_demand is not None:
                self._on_demand(self.key)
        return await self._wait()

    async def _wait(self) -> Replica:
        cold = not self.replicas
        limit = self.route.cold_start_timeout_s if cold else self.route.request_timeout_s
        future: asyncio.Future[Replica] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        try:
            await asyncio.wait((future,), timeout=limit)
        except asyncio.CancelledError:
            self._abandon(future)
            raise
        if future.done():
            return future.result()
        self._abandon(future)
        raise NoReplicaError

    def _abandon(self, future: asyncio.Future[Replica]) -> None:
        """A waiter gave up; give back a slot handed to it meanwhile."""
        if future.done() and not future.cancelled():
            self.release(future.result())
            return
        future.cancel()
        try:
            self.waiters.remove(future)
        except ValueError:
            pass

    def release(self, replica: Replica) -> None:
        replica.outstanding -= 1
        self._dispatch()

    def eject(self, replica: Replica) -> None:
        replica.ejected_until = time.monotonic() + EJECT_S
        asyncio.get_running_loop().call_later(EJECT_S, self._dispatch)  # wake waiters then

    def _dispatch(self) -> None:
        """Hand free slots to waiters, oldest first."""
        while self.waiters:
            replica = self.pick()
            if replica is None:
                return
            future = self.waiters.popleft()
            if not future.done():
                future.set_result(self.take(replica))

    def fail_waiters(self) -> None:
        """The deployment left the table: its waiters get 503 at once."""
        while self.waiters:
            future = self.waiters.popleft()
            if not future.done():
                future.set_exception(NoReplicaError())
