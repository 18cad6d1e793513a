"""A small DDP training run (gloo, CPU): every rank trains the same model on its own data,
gradients are averaged each step, and all ranks end with the same weights, which rank 0
prints (each rank prints a fingerprint of its weights, so you can compare them).

    kaon job run --workers 2 --cpu 2 --label kaon.io/pool=ray -- python ddp.py

Kaon gives every worker MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK and
NODE_RANK, so ``init_process_group`` needs no arguments, on one machine or several.
"""

from __future__ import annotations

import hashlib
import os
import socket

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same starting weights on every rank
    model = DDP(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    for _ in range(50):
        x = torch.randn(16, 4, generator=data)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()  # DDP averages the gradients of all ranks here
        optimizer.step()
    weights = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    fingerprint = hashlib.sha256(weights).hexdigest()[:16]
    node = os.environ["KAON_NODE_ADDRESS"]
    where = f"node rank {os.environ['NODE_RANK']} ({socket.gethostname()}, {node})"
    print(f"rank {rank}/{world} on {where}: loss {loss.item():.4f}, weights {fingerprint}")
    dist.barrier()  # leave together: gloo can abort when a peer tears down mid-talk
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
