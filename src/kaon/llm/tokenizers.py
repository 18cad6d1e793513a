"""Text to token ids and back, including back one token at a time.

Streaming needs the second direction incrementally: a token may be half of a character
(a byte-level model emits UTF-8 one byte at a time), so each sequence has a `Detokenizer`
that returns only the text that is complete so far.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Protocol

__all__ = ["ByteTokenizer", "CharTokenizer", "Detokenizer", "Tokenizer"]


class Detokenizer(Protocol):
    def step(self, token: int) -> str:
        """The text this token completes ("" while a character is still partial)."""
        ...


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int | None  # generation stops at this token; None: only at the limits

    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: Sequence[int]) -> str: ...

    def detokenizer(self) -> Detokenizer: ...


class _CharDetokenizer:
    def __init__(self, alphabet: str) -> None:
        self._alphabet = alphabet

    def step(self, token: int) -> str:
        return self._alphabet[token] if 0 <= token < len(self._alphabet) else ""


class CharTokenizer:
    """One token per character of `alphabet` (``examples/char_lm``: the sorted set of the
    text's characters). Characters outside it are dropped from prompts."""

    def __init__(self, alphabet: str | Sequence[str], eos: str | None = None) -> None:
        self.alphabet = "".join(alphabet)
        self._index = {c: i for i, c in enumerate(self.alphabet)}
        self.vocab_size = len(self.alphabet)
        self.eos_id = self._index.get(eos) if eos is not None else None

    def encode(self, text: str) -> list[int]:
        return [self._index[c] for c in text if c in self._index]

    def decode(self, tokens: Sequence[int]) -> str:
        return "".join(self.alphabet[t] for t in tokens if 0 <= t < self.vocab_size)

    def detokenizer(self) -> Detokenizer:
        return _CharDetokenizer(self.alphabet)


class _ByteDetokenizer:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token: int) -> str:
        return self._decoder.decode(bytes([token])) if 0 <= token < 256 else ""


class ByteTokenizer:
    """UTF-8 bytes as tokens 0-255: any model with a vocabulary of at least 256 can be served
    with it (the GPT example trains on random tokens, so its text is noise either way)."""

    vocab_size = 256

    def __init__(self, eos_id: int | None = None) -> None:
        self.eos_id = eos_id

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, tokens: Sequence[int]) -> str:
        return bytes(t for t in tokens if 0 <= t < 256).decode(errors="replace")

    def detokenizer(self) -> Detokenizer:
        return _ByteDetokenizer()
