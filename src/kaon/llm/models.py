"""Decoder models with a KV cache, the shape the batching engine drives.

The engine needs two calls from a model: `prefill` (run a prompt, remember its keys and
values, return the logits of its last position) and `decode` (one new token for each of a
batch of sequences, each at its own position, attending to its own cache). Training code
has neither: ``examples/gpt`` and ``examples/char_lm`` only have ``forward(idx)`` over the
whole window. `CachedDecoder` reuses their weights as they are (no copy, no conversion) and
runs the same arithmetic step by step, so serving a model trained with `kaon.train` needs
nothing but its checkpoint.

The cache is one preallocated tensor per layer for keys and one for values, shaped
``(slots, heads, context, head_dim)``: a sequence owns a slot from admission to its end, and
its keys and values are written in place, one position per step. A decode step gathers the
slots of the running sequences up to the longest one and masks each past its own length,
so sequences of different lengths share one batched matmul per layer. Memory is fixed at
start (``2 * layers * slots * context * dim`` floats) and a full slot table is what bounds
the running batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CachedDecoder", "DecoderLM", "full_forward_logits"]

M = TypeVar("M", bound=nn.Module)


class DecoderLM(Protocol):
    """What the engine needs of a model."""

    context: int  # the longest sequence (prompt and output) it can attend over
    vocab: int
    slots: int  # how many sequences can hold a cache at once

    def prefill(self, slot: int, tokens: list[int]) -> torch.Tensor:
        """Run `tokens` into `slot`'s cache (from position 0); the last position's logits."""
        ...

    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One step for each sequence: token ``tokens[i]`` at ``positions[i]`` in
        ``slots[i]``; logits of shape (len(slots), vocab)."""
        ...


@dataclass(frozen=True)
class _Layer:
    norm1: nn.Module
    qkv: nn.Linear
    proj: nn.Linear
    norm2: nn.Module
    mlp: nn.Module
    heads: int


class CachedDecoder:
    """A KV-cached view of a nanoGPT-style model: ``embed``, ``position``, ``blocks`` (each
    with ``norm1``, ``norm2``, ``mlp`` and an attention with ``qkv``, ``proj``, ``heads``,
    either on the block or in ``block.attn``), ``norm`` and ``head``; pre-norm residual
    blocks. That is the layout of the GPT and character models in ``examples/``.
    """

    def __init__(self, model: nn.Module, slots: int, dtype: torch.dtype | None = None) -> None:
        self.model = model.eval()
        self.embed = _child(model, "embed", nn.Embedding)
        self.position = _child(model, "position", nn.Embedding)
        self.norm = _child(model, "norm", nn.Module)
        self.head = _child(model, "head", nn.Linear)
        self.layers = [_layer(block) for block in _child(model, "blocks", nn.Module).children()]
        self.context = int(self.position.num_embeddings)
        self.vocab = int(self.head.out_features)
        self.slots = slots
        dim = int(self.embed.embedding_dim)
        heads = self.layers[0].heads
        weight = self.embed.weight
        shape = (slots, heads, self.context, dim // heads)
        kind = dtype or weight.dtype
        self.keys = [torch.zeros(shape, dtype=kind, device=weight.device) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=kind, device=weight.device) for _ in self.layers]
        self.device = weight.device

    @torch.inference_mode()
    def prefill(self, slot: int, tokens: list[int]) -> torch.Tensor:
        t = len(tokens)
        if not 0 < t <= self.context:
            raise ValueError(f"a prompt must have 1 to {self.context} tokens, got {t}")
        idx = torch.tensor([tokens], device=self.device)
        x = self.embed(idx) + self.position(torch.arange(t, device=self.device))
        for n, layer in enumerate(self.layers):
            q, k, v = _split(layer, layer.norm1(x))  # each (1, heads, t, head_dim)
            self.keys[n][slot, :, :t] = k[0]
            self.values[n][slot, :, :t] = v[0]
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + layer.proj(y.transpose(1, 2).reshape(1, t, -1))
            x = x + layer.mlp(layer.norm2(x))
        logits: torch.Tensor = self.head(self.norm(x[:, -1]))
        return logits[0]

    @torch.inference_mode()
    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        b = len(slots)
        slot_ix = torch.tensor(slots, device=self.device)
        pos = torch.tensor(positions, device=self.device)
        if int(pos.max()) >= self.context:
            raise ValueError(f"position beyond the context of {self.context}")
        x = self.embed(torch.tensor(tokens, device=self.device)) + self.position(pos)
        x = x.unsqueeze(1)  # (b, 1, dim)
        span = int(pos.max()) + 1
        mask = (torch.arange(span, device=self.device) <= pos.unsqueeze(1)).view(b, 1, 1, span)
        for n, layer in enumerate(self.layers):
            q, k, v = _split(layer, layer.norm1(x))  # each (b, heads, 1, head_dim)
            self.keys[n][slot_ix, :, pos] = k[:, :, 0]
            self.values[n][slot_ix, :, pos] = v[:, :, 0]
            keys = self.keys[n][slot_ix, :, :span]  # (b, heads, span, head_dim)
            values = self.values[n][slot_ix, :, :span]
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            x = x + layer.proj(y.transpose(1, 2).reshape(b, 1, -1))
            x = x + layer.mlp(layer.norm2(x))
        logits: torch.Tensor = self.head(self.norm(x[:, 0]))
        return logits


def _split(layer: _Layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, t, d = x.shape
    qkv = layer.qkv(x).view(b, t, 3, layer.heads, d // layer.heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, heads, t, head_dim)
    return q, k, v


def _child(module: nn.Module, name: str, kind: type[M]) -> M:
    child = getattr(module, name, None)
    if not isinstance(child, kind):
        raise TypeError(
            f"{type(module).__name__} has no {kind.__name__} {name!r}: CachedDecoder serves "
            "nanoGPT-style models (embed, position, blocks, norm, head)"
        )
    return child


def _layer(block: nn.Module) -> _Layer:
    attn = getattr(block, "attn", block)
    heads = getattr(attn, "heads", None)
    if not isinstance(heads, int):
        raise TypeError(f"{type(attn).__name__} has no integer 'heads'")
    return _Layer(
        norm1=_child(block, "norm1", nn.Module),
        qkv=_child(attn, "qkv", nn.Linear),
        proj=_child(attn, "proj", nn.Linear),
        norm2=_child(block, "norm2", nn.Module),
        mlp=_child(block, "mlp", nn.Module),
        heads=heads,
    )


@torch.inference_mode()
def full_forward_logits(model: nn.Module, tokens: list[int]) -> torch.Tensor:
    """The last position's logits from the model's own ``forward`` (no cache): what the
    cached path must agree with, and what a hand-written endpoint computes per token."""
    out: torch.Tensor = model(torch.tensor([tokens]))
    return out[0, -1]
