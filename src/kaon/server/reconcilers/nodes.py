"""The node reconciler: keeps the pool's inventory and heartbeats current."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kaon.executors.base import Executor
from kaon.server.db.session import Database
from kaon.server.services.pool import register_node

logger = logging.getLogger("kaon.reconciler.nodes")


class NodeReconciler:
    def __init__(self, db: Database, executor: Executor, interval_s: float = 15.0) -> None:
        self.db = db
        self.executor = executor
        self.interval_s = interval_s

    async def run_once(self) -> None:
        inventory = await asyncio.to_thread(self.executor.inventory)
        async with self.db.session() as s:
            for node in inventory:
                await register_node(s, node, self.executor.name)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            with contextlib.suppress(Exception):
                await self.run_once()
