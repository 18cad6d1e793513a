"""Waking the reconcilers after a request wrote new desired state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Wake:
    """Tells the reconcilers that there is work now, so a submitted job starts in
    milliseconds instead of at the next tick. Each call is safe from any thread; a service
    calls it only after its transaction committed, so the reconciler sees the change."""

    jobs: Callable[[], None] = _nothing
    deployments: Callable[[], None] = _nothing
    pools: Callable[[], None] = _nothing
