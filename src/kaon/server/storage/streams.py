"""Bridges between the event loop and the worker thread that seals, opens and stores a
blob, each with a few chunks of read-ahead, so the network and the CPU work overlap
instead of taking turns (a push is as fast as the slower of the two, not their sum).

A blob store is synchronous (`kaon.server.storage.blobstore`): a request's body reaches
it as a plain iterator (`to_thread_iter`), and what it yields reaches the response as an
async iterator (`to_async_iter`). Each side holds at most `depth` chunks (of about a
MiB) in memory, whatever the size of the blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

BATCH = 1 << 20
DEPTH = 4


async def _batches(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[list[bytes]]:
    """The stream's chunks in lists of about `size` bytes (a hop between threads costs
    more than a socket read, which is often 64 KiB); not joined, as the consumer cuts
    them to its own sizes and a join here would copy every byte once more."""
    parts: list[bytes] = []
    have = 0
    async for chunk in chunks:
        parts.append(chunk)
        have += len(chunk)
        if have >= size:
            yield parts
            parts, have = [], 0
    if parts:
        yield parts


class _End:
    """The end of a stream, or the error that ended it."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def to_thread_iter(
    chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop, depth: int = DEPTH
) -> tuple[Iterator[bytes], asyncio.Task[None]]:
    """An async stream (a request's body) as an iterator for a worker thread, read ahead
    by a task of the loop. The task is returned so the caller can cancel it when the
    thread stops early (an upload over its limit)."""
    queue: asyncio.Queue[list[bytes] | _End] = asyncio.Queue(maxsize=depth)

    async def pump() -> None:
        try:
            async for batch in _batches(chunks, BATCH):
                await queue.put(batch)
            await queue.put(_End())
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the client went away: the thread raises it
            await queue.put(_End(e))

    task = loop.create_task(pump())

    def iterate() -> Iterator[bytes]:
        while True:
            item = asyncio.run_coroutine_threadsafe(queue.get(), loop).result()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield from item

    return iterate(), task


async def to_async_iter(chunks: Iterator[bytes], depth: int = DEPTH) -> AsyncIterator[bytes]:
    """A blocking iterator (a blob being opened) run in a thread of its own, `depth`
    chunks ahead of the consumer; an error it raises is raised here. Closing this early
    (the client went away) stops the thread at its next chunk."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | _End] = asyncio.Queue()
    room = threading.Semaphore(depth)
    stop = threading.Event()

    def put(item: bytes | _End) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def produce() -> None:
        try:
            for chunk in chunks:
                room.acquire()
                if stop.is_set():
                    return
                put(chunk)
            put(_End())
        except BaseException as e:
            put(_End(e))

    threading.Thread(target=produce, name="kaon-blob-read", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            room.release()
            yield item
    finally:
        stop.set()
        room.release()
