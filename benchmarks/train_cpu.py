"""kaon.train's overhead over a hand-written PyTorch loop, on the seed example's MLP.

    python benchmarks/train_cpu.py                 # table
    python benchmarks/train_cpu.py --json          # machine-readable
    python benchmarks/train_cpu.py --quick         # a few seconds, for tests

Both sides train the same 2-5-1 MLP on the same 100 points (batch 4, Adam, binary
cross-entropy) for the same number of steps, each reading its epoch loss as the seed
example does. They run back to back, in alternating order, several times; the ratio reported is
the median of the per-repeat ratios. The
trainer's time includes its constructor (checks and the dry forward pass) and `fit()`;
checkpoints, TensorBoard and console output are off, as the hand-written loop has none.
Times are CPU seconds of the process (see `timed`). A step here is ~1 ms of
Python-dominated work, so this is a worst case for overhead:
any per-step cost the trainer adds shows up in full.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kaon
from kaon.train import TrainConfig, Trainer


def seed_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1), nn.Sigmoid())


def blobs(n: int = 100) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    labels = (torch.arange(n) % 2).float().unsqueeze(1)
    x = (labels * 2 - 1) * 1.5 + torch.randn(n, 2, generator=generator)
    return TensorDataset((x - x.mean(0)) / x.std(0), labels)


def plain_loop(data: TensorDataset, epochs: int) -> None:
    """What one writes by hand: the loop the seed example had."""
    model = seed_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator())
    step = 0
    for _ in range(epochs):
        total = 0.0
        for inputs, targets in loader:
            loss = F.binary_cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            step += 1
        kaon.report(step=step, loss=total / len(loader))


def with_trainer(data: TensorDataset, epochs: int, out: str) -> None:
    config = TrainConfig(
        loss="bce", optimizer="adam", lr=0.01, batch_size=4, epochs=epochs,
        checkpointing=False, tensorboard=False, progress=False, output_dir=out,
    )  # fmt: skip
    Trainer(seed_mlp(), data, config=config).fit()


def timed(fn: Callable[[], None]) -> float:
    """CPU seconds of this process: on a shared machine, wall time mostly measures the
    neighbours. With one torch thread and no loader workers, this is the loop's work."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def measure(epochs: int, repeats: int) -> dict[str, object]:
    data = blobs()
    with tempfile.TemporaryDirectory() as out:
        sides: dict[str, Callable[[], None]] = {
            "plain": lambda: plain_loop(data, epochs),
            "trainer": lambda: with_trainer(data, epochs, out),
        }
        for fn in sides.values():
            fn()  # warm-up: first-call costs (imports, allocator) are not the loop's
        times: dict[str, list[float]] = {name: [] for name in sides}
        for i in range(repeats):
            order = list(sides) if i % 2 == 0 else list(reversed(sides))  # no order bias
            for name in order:
                times[name].append(timed(sides[name]))
    plain, trainer = (statistics.median(times[name]) for name in ("plain", "trainer"))
    # Each repeat runs the two back to back, so their ratio sees the same neighbours'
    # load; the median of those ratios is steadier than the ratio of the medians.
    ratio = statistics.median(t / p for p, t in zip(times["plain"], times["trainer"], strict=True))
    steps = epochs * 25
    return {
        "benchmark": "train_cpu", "steps": steps, "repeats": repeats,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "plain_s": plain, "trainer_s": trainer,
        "plain_steps_per_s": steps / plain, "trainer_steps_per_s": steps / trainer,
        "ratio": ratio, "overhead_pct": (ratio - 1) * 100,
        "runs": times,
    }  # fmt: skip


def print_table(r: dict[str, object]) -> None:
    print(f"seed MLP, {r['steps']} steps, median of {r['repeats']} runs, "
          f"torch {r['torch']}, {r['threads']} thread(s)")  # fmt: skip
    print(f"{'loop':<10}{'CPU s':>10}{'steps/s':>12}")
    print(f"{'plain':<10}{r['plain_s']:>10.3f}{r['plain_steps_per_s']:>12,.0f}")
    print(f"{'kaon':<10}{r['trainer_s']:>10.3f}{r['trainer_steps_per_s']:>12,.0f}")
    print(f"ratio kaon/plain {r['ratio']:.3f} (median of per-repeat ratios; "
          f"overhead {r['overhead_pct']:+.1f}%)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 3 repeats")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # tiny matmuls: threads only add noise
    epochs, repeats = (2, 3) if args.quick else (args.epochs, args.repeats)
    result = measure(epochs, repeats)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
