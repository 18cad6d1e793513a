"""Hugging Face ``transformers`` causal LMs from a local folder, behind the same engine.

``HFDecoder`` keeps each sequence's keys and values (per layer, ``(1, kv_heads, length,
head_dim)``) between steps. A decode step left-pads the running sequences' caches to the
longest, stacks them into one ``DynamicCache`` and calls the model once for the whole batch
with an attention mask over the padding and each row's own position, the way
``generate`` decodes a left-padded batch; each row's new cache is then cut back out. So
sequences of any length share a forward pass; the price is a copy of the caches per step
(fine for small models, what a paged cache would avoid for large ones).

`HFChat` is a ready `LLMService` for a folder written by ``save_pretrained`` (model and
tokenizer): set ``KAON_LLM_HF_PATH`` (or subclass and set ``hf_path``). Chats use the
tokenizer's chat template when it has one. Nothing is ever downloaded
(``local_files_only``).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from kaon.llm.models import DecoderLM
from kaon.llm.protocol import ChatMessage
from kaon.llm.service import LLMService
from kaon.llm.tokenizers import Detokenizer, Tokenizer

__all__ = ["HFChat", "HFDecoder", "HFTokenizer", "from_hf_folder"]

_Layers = list[tuple[torch.Tensor, torch.Tensor]]


class HFDecoder:
    """A ``transformers`` causal LM (any with a ``DynamicCache``) as a `DecoderLM`."""

    def __init__(self, model: Any, slots: int, context: int | None = None) -> None:
        self.model = model.eval()
        config = model.config
        self.vocab = int(config.vocab_size)
        limit = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        self.context = int(context or limit or 2048)
        self.slots = slots
        self._caches: list[_Layers | None] = [None] * slots
        self.device = next(model.parameters()).device
        # newer releases call it `cache`, older ones `past_key_values`
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @torch.inference_mode()
    def prefill(self, slot: int, tokens: list[int]) -> torch.Tensor:
        from transformers import DynamicCache

        cache = DynamicCache()
        out = self.model(
            input_ids=torch.tensor([tokens], device=self.device),
            use_cache=True,
            **{self._cache_arg: cache},
        )
        self._caches[slot] = _kv(cache)
        logits: torch.Tensor = out.logits[0, -1]
        return logits

    @torch.inference_mode()
    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        from transformers import DynamicCache

        caches: list[_Layers] = []
        for slot in slots:
            held = self._caches[slot]
            if held is None:
                raise RuntimeError(f"decode of slot {slot}, which was never prefilled")
            caches.append(held)
        longest = max(positions)
        pads = [longest - p for p in positions]
        stacked = []
        for n in range(len(caches[0])):
            keys = [_left_pad(c[n][0], pad) for c, pad in zip(caches, pads, strict=True)]
            values = [_left_pad(c[n][1], pad) for c, pad in zip(caches, pads, strict=True)]
            stacked.append((torch.cat(keys), torch.cat(values)))
        cache = DynamicCache(stacked)
        mask = torch.tensor(
            [[0] * (longest - p) + [1] * (p + 1) for p in positions], device=self.device
        )
        out = self.model(
            input_ids=torch.tensor([[t] for t in tokens], device=self.device),
            attention_mask=mask,
            position_ids=torch.tensor([[p] for p in positions], device=self.device),
            use_cache=True,
            **{self._cache_arg: cache},
        )
        layers = _kv(cache)
        for row, (slot, pad) in enumerate(zip(slots, pads, strict=True)):
            self._caches[slot] = [
                (k[row : row + 1, :, pad:], v[row : row + 1, :, pad:]) for k, v in layers
            ]
        logits: torch.Tensor = out.logits[:, -1]
        return logits

    def release(self, slot: int) -> None:
        self._caches[slot] = None


def _kv(cache: Any) -> _Layers:
    """Each layer's (keys, values) of a ``DynamicCache``."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def _left_pad(x: torch.Tensor, by: int) -> torch.Tensor:
    return F.pad(x, (0, 0, by, 0)) if by else x


class _HFDetokenizer:
    """Decodes a short window of recent tokens and emits what is new, holding text back
    while it ends in a partial character (the method of TGI and vLLM)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def step(self, token: int) -> str:
        self._ids.append(token)
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        after = decode(self._ids[self._prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return str(after[len(before) :])
        return ""


class HFTokenizer:
    """A ``transformers`` tokenizer as a `Tokenizer`."""

    def __init__(self, tokenizer: Any) -> None:
        self.hf = tokenizer
        self.vocab_size = len(tokenizer)
        eos = tokenizer.eos_token_id
        self.eos_id = int(eos) if isinstance(eos, int) else None

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self.hf.decode(list(tokens), skip_special_tokens=True))

    def detokenizer(self) -> Detokenizer:
        return _HFDetokenizer(self.hf)

    def chat(self, messages: list[dict[str, str]]) -> str | None:
        """The prompt from the tokenizer's chat template, or None without one."""
        if not getattr(self.hf, "chat_template", None):
            return None
        text = self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(text)


def from_hf_folder(path: str | os.PathLike[str], slots: int = 16) -> tuple[HFDecoder, HFTokenizer]:
    """Model and tokenizer from a ``save_pretrained`` folder; never downloads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return HFDecoder(model, slots), HFTokenizer(tokenizer)


class HFChat(LLMService):
    """Serves the ``transformers`` model in ``hf_path`` (default: ``$KAON_LLM_HF_PATH``);
    its ``model_name`` is the folder's name unless a subclass sets one."""

    hf_path: str | None = None

    def load(self) -> tuple[DecoderLM, Tokenizer]:
        path = self.hf_path or os.environ.get("KAON_LLM_HF_PATH")
        if not path:
            raise ValueError("set KAON_LLM_HF_PATH to a save_pretrained folder")
        if type(self).model_name == LLMService.model_name:
            self.model_name = os.path.basename(os.path.normpath(path))
        model, tokenizer = from_hf_folder(path, self.slots)
        self.hf_tokenizer = tokenizer
        return model, tokenizer

    def chat_prompt(self, messages: list[ChatMessage]) -> str:
        rendered = self.hf_tokenizer.chat(
            [{"role": m.role, "content": m.text()} for m in messages]
        )
        return rendered if rendered is not None else super().chat_prompt(messages)
