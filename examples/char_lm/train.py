"""A character-level transformer trained on a text that ships with Python itself.

    python train.py --epochs 15

The text is Python's own LICENSE.txt from the standard library folder (or, where a
distribution leaves it out, the source of the `argparse` module), so nothing is
downloaded. The last 10% is held out: its loss falls epoch by epoch, and at the end the
model writes a sample.

It writes to out/char_lm/ (``--out``): one folder per example, so two examples run from
the same place never resume each other's checkpoints, and the same folder on every run,
so running the command again resumes this one instead of starting over.

Its checkpoints keep the alphabet (``save_char_tokenizer``) and name this file's model
class as their factory, so a Kaon job of it is served with
``kaon deploy create chat --llm --from-job JOB`` (docs/llm.md).
"""

import argparse
import inspect
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from kaon.train import TrainConfig, Trainer, save_char_tokenizer, seed_everything


def load_text() -> str:
    license_file = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if license_file.is_file():
        return license_file.read_text(encoding="utf-8", errors="replace")
    return inspect.getsource(argparse)


class Chunks(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Windows of `block` characters, half overlapping; the target is shifted by one."""

    def __init__(self, tokens: torch.Tensor, block: int) -> None:
        self.tokens, self.block, self.stride = tokens, block, block // 2
        self.count = max(0, (len(tokens) - block - 1) // self.stride + 1)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.stride
        window = self.tokens[start : start + self.block + 1]
        return window[:-1], window[1:]


class Block(nn.Module):
    """Pre-norm causal self-attention and MLP, each added to the residual stream."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, block: int, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab, dim), nn.Embedding(block, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(layers)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.blocks(self.embed(idx) + self.position(positions))
        return self.head(self.norm(x))  # (batch, time, vocab): classes last


@torch.no_grad()
def generate(model: CharTransformer, prompt: torch.Tensor, length: int, block: int) -> list[int]:
    model.eval()
    idx = prompt.unsqueeze(0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(length):
        logits = model(idx[:, -block:])[0, -1] / 0.8  # temperature below 1: fewer typos
        next_id = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
        idx = torch.cat([idx, next_id.unsqueeze(0)], dim=1)
    return idx[0].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chars", type=int, default=None, help="use only this many chars")
    parser.add_argument("--sample", type=int, default=200, help="characters to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/char_lm", help="output folder")
    args = parser.parse_args()

    seed_everything(args.seed)
    text = load_text()[: args.chars]
    vocab = sorted(set(text))
    tokens = torch.tensor([vocab.index(c) for c in text], dtype=torch.long)
    split = int(len(tokens) * 0.9)
    train, val = Chunks(tokens[:split], args.block), Chunks(tokens[split:], args.block)
    kwargs = {"vocab": len(vocab), "block": args.block, "dim": args.dim, "layers": args.layers}
    model = CharTransformer(**kwargs)
    config = TrainConfig(
        loss="cross_entropy", optimizer="adamw", lr=3e-3, batch_size=32, epochs=args.epochs,
        schedule="cosine", warmup_steps=10, clip_grad_norm=1.0, seed=args.seed,
        output_dir=args.out,
    )  # fmt: skip
    save_char_tokenizer(config, "".join(vocab))  # so the job's model can be served
    trainer = Trainer(
        model, train, val, config=config,
        model_factory="train:CharTransformer", model_kwargs=kwargs,
    )  # fmt: skip
    trainer.fit()

    losses = [point["val_loss"] for point in trainer.history if "val_loss" in point]
    print(f"validation loss by epoch: {' -> '.join(f'{v:.3f}' for v in losses)}")
    sample = generate(model, tokens[split : split + args.block // 2], args.sample, args.block)
    print("sample:\n" + "".join(vocab[i] for i in sample))


if __name__ == "__main__":
    main()
