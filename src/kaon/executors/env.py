"""The environment every worker gets, so `torch.distributed` works unchanged.

Pure: both the local and the Ray executor build it from the gang's layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kaon.core.replicas import ENV_NODE_ADDRESS, ENV_PORT
from kaon.executors.base import GangLaunch, WorkerLaunch

# Server-side settings that must never leak into user code.
_SERVER_ONLY = ("KAON_DATABASE_URL", "KAON_BOOTSTRAP_TOKEN", "KAON_TEST_DATABASE_URL")


def worker_env(
    gang: GangLaunch,
    worker: WorkerLaunch,
    master_addr: str,
    master_port: int,
    base: Mapping[str, str],
    *,
    node_address: str,
    port: int,
    checkpoint_dir: str,
    output_dir: str | None = None,
) -> dict[str, str]:
    """`base` (the host's environment, less Kaon's own settings), then the job's env,
    then the distributed layout and the worker's place, which the job cannot override."""
    env = {k: v for k, v in base.items() if not k.startswith("KAON_") and k not in _SERVER_ONLY}
    env.update(gang.env)
    nodes = _node_order(gang.workers)
    on_node = [w.index for w in gang.workers if w.node_id == worker.node_id]
    env.update(
        {
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
            "WORLD_SIZE": str(len(gang.workers)),
            "RANK": str(worker.index),
            "LOCAL_RANK": str(on_node.index(worker.index)),
            "LOCAL_WORLD_SIZE": str(len(on_node)),
            "NODE_RANK": str(nodes.index(worker.node_id)),
            "KAON_WORKER_INDEX": str(worker.index),
            "KAON_NODE_RANK": str(nodes.index(worker.node_id)),
            "KAON_WORLD_SIZE": str(len(gang.workers)),
            "KAON_ATTEMPT": str(gang.attempt),
            "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in worker.gpus),
            "KAON_CHECKPOINT_DIR": checkpoint_dir,
            ENV_PORT: str(port),
            ENV_NODE_ADDRESS: node_address,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if output_dir is not None:  # kept as an artifact when the job succeeds
        env["KAON_OUTPUT_DIR"] = output_dir
    return env


def _node_order(workers: Sequence[WorkerLaunch]) -> list[str]:
    """Nodes in the order of their first worker, so worker 0's node is node rank 0."""
    order: list[str] = []
    for w in sorted(workers, key=lambda w: w.index):
        if w.node_id not in order:
            order.append(w.node_id)
    return order
