"""A GPT-2-style decoder (after nanoGPT's model.py), sized by name for throughput runs.

"124m" is GPT-2 small (12 layers, d=768, 12 heads, 1024 tokens of context); "1.3b" is
GPT-3 XL's shape (24 layers, d=2048, 16 heads, 2048 tokens); "tiny" is for tests. The
vocabulary is GPT-2's 50,257 tokens padded to 50,304, a multiple of 64 that the matmul
kernels prefer. Attention is `F.scaled_dot_product_attention`, which picks a fused
(flash) kernel on GPUs that have one. `RandomTokens` is the synthetic data for throughput
runs, here so the benchmark can import both from one module; `TextWindows` is a text's
bytes, for a model worth serving (``train.py --text``).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


@dataclass(frozen=True)
class GPTConfig:
    layers: int
    dim: int
    heads: int
    context: int
    vocab: int = 50304

    def flops_per_token(self, params: int) -> float:
        """Training FLOPs per token: 6 per weight (forward and backward) plus attention's
        12 * layers * dim * context (the PaLM paper's estimate, also nanoGPT's)."""
        return 6 * params + 12 * self.layers * self.dim * self.context


CONFIGS = {
    "tiny": GPTConfig(layers=2, dim=64, heads=4, context=64, vocab=512),
    "124m": GPTConfig(layers=12, dim=768, heads=12, context=1024),
    "1.3b": GPTConfig(layers=24, dim=2048, heads=16, context=2048),
}


class Attention(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.qkv = nn.Linear(c.dim, 3 * c.dim, bias=False)
        self.proj = nn.Linear(c.dim, c.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).transpose(1, 3).unbind(2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c.dim, bias=False), nn.LayerNorm(c.dim, bias=False)
        self.attn = Attention(c)
        self.mlp = nn.Sequential(
            nn.Linear(c.dim, 4 * c.dim, bias=False), nn.GELU(),
            nn.Linear(4 * c.dim, c.dim, bias=False),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Token ids (batch, time) -> logits (batch, time, vocab)."""

    def __init__(self, name: str = "tiny") -> None:
        super().__init__()
        self.config = c = CONFIGS[name]
        self.embed = nn.Embedding(c.vocab, c.dim)
        self.position = nn.Embedding(c.context, c.dim)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.dim, bias=False)
        self.head = nn.Linear(c.dim, c.vocab, bias=False)
        self.head.weight = self.embed.weight  # weight tying, as GPT-2
        self.apply(self._init)
        for name_, p in self.named_parameters():  # GPT-2's scaled init of residual outputs
            if name_.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def num_params(self) -> int:
        """Weights that cost FLOPs per token: all but the position table (the token
        table is the output layer too, so it counts)."""
        return sum(p.numel() for p in self.parameters()) - self.position.weight.numel()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.embed(idx) + self.position(positions)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.norm(x))
        return logits


class RandomTokens(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """`count` windows of `context` tokens, drawn once; the target is shifted by one."""

    def __init__(self, count: int, context: int, vocab: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(vocab, (count * context + 1,), generator=generator)
        self.count, self.context = count, context

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.tokens[i * self.context : (i + 1) * self.context + 1]
        return window[:-1], window[1:]


class TextWindows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A text's UTF-8 bytes as tokens 0-255 (the rest of the vocabulary goes unused), in
    windows of `context` tokens that overlap by half; the target is shifted by one. Bytes
    need no vocabulary to ship: ``kaon.train.save_byte_tokenizer`` records just the kind."""

    def __init__(self, data: bytes, context: int) -> None:
        self.tokens = torch.tensor(list(data), dtype=torch.long)
        self.context, self.stride = context, max(1, context // 2)
        self.count = max(0, (len(data) - context - 1) // self.stride + 1)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.tokens[i * self.stride : i * self.stride + self.context + 1]
        return window[:-1], window[1:]
