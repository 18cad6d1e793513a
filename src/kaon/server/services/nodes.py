"""The resource pool: nodes, their capacity, and what jobs hold on them."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.nodes import GpuInfo, NodeView
from kaon.executors.base import NodeInventory
from kaon.server.db.models import Job, Node, Worker, utcnow


async def register_node(session: AsyncSession, inv: NodeInventory, executor: str) -> None:
    """Insert or refresh a node's inventory and heartbeat."""
    node = await session.get(Node, inv.id)
    gpus = [g.model_dump() for g in inv.gpus]
    if node is None:
        node = Node(
            id=inv.id,
            name=inv.name,
            executor=executor,
            address=inv.address,
            cpu=inv.cpu,
            memory=inv.memory,
            gpus=gpus,
            labels=dict(inv.labels),
        )
        session.add(node)
    else:
        node.name, node.address, node.executor = inv.name, inv.address, executor
        node.cpu, node.memory, node.gpus, node.labels = inv.cpu, inv.memory, gpus, dict(inv.labels)
        node.state = "ready"
    node.heartbeat_at = utcnow()
    await session.flush()


async def list_nodes(session: AsyncSession) -> list[NodeView]:
    nodes = (await session.execute(select(Node).order_by(Node.name))).scalars().all()
    held = await allocations(session)
    views = []
    for n in nodes:
        cpu, memory, gpus = held.get(n.id, (0.0, 0, []))
        views.append(
            NodeView(
                id=n.id,
                name=n.name,
                executor=n.executor,
                address=n.address,
                state=n.state,
                labels=n.labels,
                cpu=n.cpu,
                memory=n.memory,
                gpus=[GpuInfo.model_validate(g) for g in n.gpus],
                cpu_allocated=cpu,
                memory_allocated=memory,
                gpus_allocated=sorted(gpus),
                heartbeat_at=n.heartbeat_at,
            )
        )
    return views


async def allocations(session: AsyncSession) -> dict[str, tuple[float, int, list[int]]]:
    """Per node: CPUs, memory and GPU indices held by workers of live jobs."""
    rows = await session.execute(
        select(Worker.node_id, Worker.cpu, Worker.memory, Worker.gpus)
        .join(Job, Job.id == Worker.job_id)
        .where(Worker.active.is_(True))
    )
    cpu: dict[str, float] = defaultdict(float)
    memory: dict[str, int] = defaultdict(int)
    gpus: dict[str, list[int]] = defaultdict(list)
    for node_id, c, m, g in rows.tuples():
        cpu[node_id] += c
        memory[node_id] += m
        gpus[node_id].extend(int(i) for i in g)
    return {n: (cpu[n], memory[n], gpus[n]) for n in cpu}
