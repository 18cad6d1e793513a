"""The character model of ``examples/char_lm``, here so this folder deploys on its own.

`kaon deploy create --path examples/llm` uploads this folder and nothing else, so the
service must find the model's class (and the checkpoint) inside it.
"""

import argparse
import inspect
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def load_text() -> str:
    """Python's LICENSE.txt (or the argparse source where it is left out): no download."""
    license_file = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if license_file.is_file():
        return license_file.read_text(encoding="utf-8", errors="replace")
    return inspect.getsource(argparse)


def alphabet(text: str) -> str:
    return "".join(sorted(set(text)))


class Block(nn.Module):
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
        return self.head(self.norm(x))
