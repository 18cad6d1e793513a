"""The node reconciler: keeps the pool's inventory and heartbeats current."""

from __future__ import annotations

import asyncio

from kaon.executors.base import Executor
from kaon.server.db.session import Database
from kaon.server.reconcilers.loop import Loop
from kaon.server.services.pool import register_node


class NodeReconciler(Loop):
    name = "nodes"

    def __init__(self, db: Database, executor: Executor, interval_s: float = 15.0) -> None:
        super().__init__()
        self.db = db
        self.executor = executor
        self.interval_s = interval_s

    async def run_once(self) -> bool:
        inventory = await asyncio.to_thread(self.executor.inventory)
        async with self.db.session() as s:
            for node in inventory:
                await register_node(s, node, self.executor.name)
        return False
