"""One scheduling pass at scale: 10,000 pending jobs on a 1,000-node x 8-GPU pool.

The pool is 80% busy with 1-GPU to 8-GPU jobs of ten workspaces that have quotas; the
queue mixes 1, 2, 4, 8 and 16-GPU gangs with varied service, so placement, quota checks,
preemption attempts and the drain reservation all run. Prints the median and worst of
several passes per policy and its ratio to `las`'s in the same run; the goals are at most
1.5x `las`'s and under 100 ms for `kaon`.

    .venv/bin/python benchmarks/scheduler_pass.py
    .venv/bin/python benchmarks/scheduler_pass.py --paired 30   # the ratio, steadier
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from kaon.scheduler import (
    NodeCapacity,
    PoolState,
    Quota,
    WorkerPlacement,
    Workload,
    get_policy,
    schedule,
)

NODES, GPUS, PENDING, BUSY = 1000, 8, 10_000, 0.8


def build(seed: int = 0) -> PoolState:
    rng = random.Random(seed)
    now = 1_000_000.0
    nodes, running = [], []
    for n in range(NODES):
        used, g = 0, 0
        while used < GPUS * BUSY:
            size = min(rng.choice([1, 1, 1, 2, 4, 8]), GPUS - used)
            gpus = tuple(range(used, used + size))
            running.append(
                Workload(
                    id=f"r{n}-{g}",
                    workspace=f"ws{rng.randrange(10)}",
                    workers=1,
                    cpu=1.0,
                    memory=1 << 30,
                    gpus=size,
                    submitted_at=now - rng.uniform(0, 9e4),
                    attained_gpu_s=rng.uniform(0, 1e6),
                    placement=(WorkerPlacement(f"n{n}", gpus),),
                    started_at=now - rng.uniform(0, 5e4),
                )  # fmt: skip
            )
            used += size
            g += 1
        nodes.append(
            NodeCapacity(
                id=f"n{n}",
                cpu=128.0,
                memory=1 << 40,
                gpus=tuple(range(GPUS)),
                cpu_free=128.0 - g,
                memory_free=(1 << 40) - g * (1 << 30),
                gpus_free=tuple(range(used, GPUS)),
            )  # fmt: skip
        )
    pending = tuple(
        Workload(
            id=f"p{i}",
            workspace=f"ws{rng.randrange(10)}",
            workers=2 if (s := rng.choice([1] * 20 + [2, 4, 8, 16])) == 16 else 1,
            cpu=1.0,
            memory=1 << 30,
            gpus=8 if s == 16 else s,
            submitted_at=now - rng.uniform(0, 9e4),
            attained_gpu_s=rng.choice([0.0, 0.0, rng.uniform(0, 1e5)]),
        )  # fmt: skip
        for i in range(PENDING)
    )
    quotas = {f"ws{i}": Quota(gpus=NODES * GPUS / 10) for i in range(10)}
    return PoolState(
        now=now, nodes=tuple(nodes), pending=pending, running=tuple(running), quotas=quotas
    )


def paired(pool: PoolState, passes: int) -> None:
    """Kaon and las in turn, `passes` times each: on a shared machine, load that comes and
    goes then falls on both alike, so their ratio is steadier than from separate runs."""
    kaon, las = get_policy("kaon"), get_policy("las")
    kaon_s: list[float] = []
    las_s: list[float] = []
    for _ in range(passes):
        for policy, times in ((kaon, kaon_s), (las, las_s)):
            start = time.perf_counter()
            schedule(pool, policy)
            times.append(time.perf_counter() - start)
    k, q = statistics.median(kaon_s) * 1e3, statistics.median(las_s) * 1e3
    print(f"{passes} passes each, in turn: kaon median {k:.1f} ms, las {q:.1f} ms, {k / q:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paired", type=int, default=0, help="only kaon and las, in turn")
    args = parser.parse_args()
    pool = build()
    if args.paired:
        print(f"load average {os.getloadavg()[0]:.2f}")
        paired(pool, args.paired)
        return
    print(f"{NODES} nodes x {GPUS} GPUs, {len(pool.running)} running, {PENDING} pending")
    print(f"load average {os.getloadavg()[0]:.2f}")
    rows = []
    for name in ("kaon", "fifo", "easy", "las", "gittins", "srtf", "kueue", "kueue-fair", "kai"):
        policy = get_policy(name)
        times = []
        for _ in range(7):
            start = time.perf_counter()
            decisions = schedule(pool, policy)
            times.append(time.perf_counter() - start)
        rows.append((name, statistics.median(times) * 1e3, max(times) * 1e3, decisions))
    las = next(median for name, median, _, _ in rows if name == "las")
    for name, median, worst, decisions in rows:  # machines differ: the ratio is what compares
        print(
            f"{name:10} median {median:6.1f} ms  worst {worst:6.1f} ms  {median / las:4.2f}x las"
            f"  placed {len(decisions.placements)}  preempted {len(decisions.preemptions)}"
        )
    kaon = rows[0][1]
    print(f"kaon / las {kaon / las:.2f} (goal: at most 1.5); kaon {kaon:.1f} ms (goal: under 100)")


if __name__ == "__main__":
    main()
