"""LLM services the tests run as real replica processes (``--path tests/llm``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for `tests.llm.models`

from kaon.llm import CachedDecoder, CharTokenizer, DecoderLM, LLMService, Tokenizer
from tests.llm.models import ALPHABET, char_model


class TinyChat(LLMService):
    """The character model with random weights: fast, and its text is gibberish."""

    model_name = "tiny-char"
    slots = 4
    max_queue = 4

    def load(self) -> tuple[DecoderLM, Tokenizer]:
        return CachedDecoder(char_model(), self.slots), CharTokenizer(ALPHABET)


class SlowDecoder:
    """A decoder whose every step takes 20 ms, so a stream lasts long enough to hold a slot."""

    def __init__(self, inner: CachedDecoder) -> None:
        self.inner = inner
        self.context, self.vocab, self.slots = inner.context, inner.vocab, inner.slots

    def prefill(self, slot: int, tokens: list[int]) -> torch.Tensor:
        return self.inner.prefill(slot, tokens)

    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        time.sleep(0.02)
        return self.inner.decode(slots, tokens, positions)


class SlowChat(TinyChat):
    """One slot, one place in the queue: the third caller gets 429."""

    slots = 1
    max_queue = 1

    def load(self) -> tuple[DecoderLM, Tokenizer]:
        return SlowDecoder(CachedDecoder(char_model(block=256), self.slots)), CharTokenizer(
            ALPHABET
        )
