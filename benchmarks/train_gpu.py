"""GPT throughput through kaon.train and through a plain PyTorch loop, side by side.

    python benchmarks/train_gpu.py                  # 124m and 1.3b, bf16, compiled (GPU)
    python benchmarks/train_gpu.py --json
    python benchmarks/train_gpu.py --tiny           # a tiny model on CPU, for tests

For each model both sides train the same GPT (examples/gpt/model.py) on the same random
tokens with the same settings: AdamW (fused on CUDA), clipping at 1.0, bf16 autocast with
the loss in float32, and `torch.compile` of model plus loss. Each runs 2 x --steps steps
and times the last --steps (the first ones include compilation), so both windows start
and end after a device sync. MFU is model FLOPs per second (6 per weight per token plus
attention, see GPTConfig.flops_per_token) over the bf16 matmul peak measured here with a
large torch.matmul, not the datasheet's.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "gpt"))
from model import CONFIGS, GPT, RandomTokens

from kaon.train import TrainConfig, Trainer

BATCH = {"124m": 16, "1.3b": 8, "tiny": 4}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a big square matmul: the ceiling MFU is measured against."""
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    iters = 50 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - start)


def plain_loop(name: str, args: argparse.Namespace, device: torch.device) -> float:
    """The loop one writes by hand (nanoGPT's shape); returns tokens/s of the timed half."""
    torch.manual_seed(0)
    model = GPT(name).to(device)
    c, batch = model.config, args.batch or BATCH[name]
    fused = True if device.type == "cuda" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=fused)
    amp = torch.bfloat16 if device.type == "cuda" else None

    def loss_of(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(inputs)
        return F.cross_entropy(logits.float().view(-1, c.vocab), targets.view(-1))

    step_loss: Callable[..., torch.Tensor] = torch.compile(loss_of) if args.compile else loss_of
    data = RandomTokens(2 * args.steps * batch, c.context, c.vocab)
    loader = DataLoader(data, batch_size=batch, shuffle=True, pin_memory=device.type == "cuda")
    start = 0.0
    for step, (inputs, targets) in enumerate(loader):
        if step == args.steps:
            sync(device)
            start = time.perf_counter()
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        step_loss(inputs, targets).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return args.steps * batch * c.context / (time.perf_counter() - start)


def with_trainer(name: str, args: argparse.Namespace, out: str) -> float:
    """The same run through kaon.train; its step log gives the timed half's rate."""
    torch.manual_seed(0)
    model = GPT(name)
    c, batch = model.config, args.batch or BATCH[name]
    config = TrainConfig(
        loss="cross_entropy", optimizer="adamw", lr=6e-4, weight_decay=0.1,
        batch_size=batch, max_steps=2 * args.steps, log_every_steps=args.steps,
        clip_grad_norm=1.0, compile=args.compile, checkpointing=False, tensorboard=False,
        progress=False, output_dir=out,
    )  # fmt: skip
    data = RandomTokens(2 * args.steps * batch, c.context, c.vocab)
    trainer = Trainer(model, data, config=config)
    trainer.fit()
    timed_half = trainer.history[-1]  # the window of steps (steps, 2 * steps]
    return timed_half["samples_per_s"] * c.context


def free_memory() -> None:
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_model(name: str, args: argparse.Namespace, device: torch.device, peak: float) -> Any:
    flops_per_token = CONFIGS[name].flops_per_token(GPT_PARAMS[name])
    with tempfile.TemporaryDirectory() as out:
        plain = plain_loop(name, args, device)
        free_memory()
        kaon = with_trainer(name, args, out)
        free_memory()
    return {
        "model": name, "batch": args.batch or BATCH[name], "context": CONFIGS[name].context,
        "params": GPT_PARAMS[name], "plain_tokens_per_s": plain, "kaon_tokens_per_s": kaon,
        "plain_mfu": plain * flops_per_token / peak, "kaon_mfu": kaon * flops_per_token / peak,
        "ratio": kaon / plain,
    }  # fmt: skip


GPT_PARAMS: dict[str, int] = {}


def count_params(name: str) -> int:
    with torch.device("meta"):  # no memory: only the shapes are needed
        return GPT(name).num_params()


def print_table(result: dict[str, Any]) -> None:
    peak = f"{result['peak_tflops']:.3g} TFLOP/s ({result['dtype']})"
    print(f"{result['device']}, torch {result['torch']}, measured matmul peak {peak}")
    print(f"{'model':<7}{'batch':>6}{'plain tok/s':>14}{'kaon tok/s':>14}"
          f"{'plain MFU':>11}{'kaon MFU':>10}{'kaon/plain':>12}")  # fmt: skip
    for r in result["models"]:
        print(f"{r['model']:<7}{r['batch']:>6}{r['plain_tokens_per_s']:>14,.0f}"
              f"{r['kaon_tokens_per_s']:>14,.0f}{r['plain_mfu']:>11.1%}{r['kaon_mfu']:>10.1%}"
              f"{r['ratio']:>12.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="124m,1.3b")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after as many)")
    parser.add_argument("--batch", type=int, default=None, help="override the batch size")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--tiny", action="store_true", help="tiny model, 8 steps, no compile")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.models, args.steps, args.compile = "tiny", 8, False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = measure_peak(device, dtype)
    names = args.models.split(",")
    GPT_PARAMS.update({name: count_params(name) for name in names})
    result = {
        "benchmark": "train_gpu", "torch": torch.__version__, "dtype": str(dtype),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "peak_tflops": peak / 1e12, "steps": args.steps, "compile": args.compile,
        "models": [bench_model(name, args, device, peak) for name in names],
    }  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
