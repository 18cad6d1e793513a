"""Streaming services the tests serve as real replica processes.

Each generator reports what happened to it through files in a folder the test chooses
(``marks``): how many items it has yielded and whether it was closed. Files, because the
generator runs in another process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from pydantic import BaseModel

import kaon
from kaon.core.errors import InvalidSpecError


class Tick(BaseModel):
    i: int


def _wait_for(path: Path, limit_s: float = 20.0) -> bool:
    deadline = time.monotonic() + limit_s
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class Streamer(kaon.Service):
    @kaon.handler
    def gated(self, marks: str, n: int = 3) -> Iterator[str]:
        """Yields "0", then waits until the test has seen it (``marks/go``) before the rest:
        a buffering replica or gateway would make the test time out."""
        yield "0"
        if not _wait_for(Path(marks) / "go"):
            yield "gate timed out"
            return
        for i in range(1, n):
            yield str(i)

    @kaon.handler
    def endless(self, marks: str, size: int = 8, delay_s: float = 0.01) -> Iterator[str]:
        """Yields forever (until closed), counting its items in ``marks/count``."""
        folder = Path(marks)
        count = 0
        try:
            while True:
                yield "x" * size
                count += 1
                (folder / "count").write_text(str(count))
                if delay_s:
                    time.sleep(delay_s)
        finally:
            (folder / "closed").write_text(str(count))

    @kaon.handler
    async def ticks(self, marks: str, n: int = 3, delay_s: float = 0.0) -> AsyncIterator[Tick]:
        """An async generator of models; cancelled where it waits when the client leaves."""
        try:
            for i in range(n):
                yield Tick(i=i)
                await asyncio.sleep(delay_s)
        finally:
            (Path(marks) / "closed").write_text("async")

    @kaon.handler
    def refuses(self, n: int) -> Iterator[str]:
        """Raises before its first item: the caller gets a plain error status."""
        if n < 0:
            raise InvalidSpecError("n must not be negative")
        yield from (str(i) for i in range(n))


class Dying(kaon.Service):
    @kaon.handler
    def dies(self) -> Iterator[str]:
        """Yields once, then the process dies mid-stream."""
        import os

        (Path(os.environ["KAON_TEST_MARKS"]) / str(os.getpid())).touch()
        yield "first"
        time.sleep(0.2)
        os._exit(1)
