"""A real 2-worker DDP training job (gloo, CPU) run by Kaon: the ranks end with identical
weights. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaon.core.jobs import JobStatus
from tests.conftest import RunningServer

torch = pytest.importorskip("torch")

TRAIN = """
import os
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo")  # reads MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK
rank, world = dist.get_rank(), dist.get_world_size()
assert world == int(os.environ["WORLD_SIZE"]) == 2
assert os.environ["KAON_WORKER_INDEX"] == str(rank) == os.environ["RANK"]
torch.manual_seed(0)
model = DDP(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
for step in range(20):
    x = torch.randn(16, 4, generator=g)
    loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
out = os.path.join(os.environ["KAON_CHECKPOINT_DIR"], f"rank{rank}.pt")
torch.save(model.module.state_dict(), out)
print(f"rank {rank} done loss={loss.item():.4f}", flush=True)
dist.barrier()  # leave together: a rank that tears gloo down while its peer still talks
dist.destroy_process_group()  # can abort ("terminate called without an active exception")
"""


@pytest.mark.e2e
def test_two_worker_ddp_job_ends_with_identical_weights(
    server: RunningServer, tmp_path: Path
) -> None:
    workdir = tmp_path / "code"
    workdir.mkdir()
    (workdir / "train.py").write_text(TRAIN)
    client = server.client()
    job = client.jobs.submit(
        ["python", "train.py"], workdir=workdir, workers=2, cpu=1, memory="2Gi"
    )
    done = client.jobs.wait(job.id, timeout=120)
    assert done.status is JobStatus.SUCCEEDED, client.jobs.logs(job.id) + client.jobs.logs(
        job.id, worker=1
    )
    assert "rank 0 done" in client.jobs.logs(job.id, worker=0)
    assert "rank 1 done" in client.jobs.logs(job.id, worker=1)
    ckpt = server.settings.home / "checkpoints" / job.id
    w0 = torch.load(ckpt / "rank0.pt")
    w1 = torch.load(ckpt / "rank1.pt")
    assert w0.keys() == w1.keys()
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    torch.manual_seed(0)
    initial = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    assert not torch.equal(initial.state_dict()["0.weight"], w0["0.weight"])  # it trained
