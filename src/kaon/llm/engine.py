"""Continuous batching: one decoding loop that every request joins and leaves step by step.

A request (`Engine.submit`) waits in a bounded FIFO queue. The loop, on a thread of its own
(a model step is blocking PyTorch work), repeats one *step*:

1. drop the sequences whose client left (`Generation.cancel`): their cache slot is free
   for this very step;
2. admit waiting requests, oldest first, while a cache slot is free and the step's token
   budget (``max_step_tokens``: one per running sequence, plus each admitted prompt) allows;
   a prompt bigger than the whole budget is admitted alone, so nothing waits forever;
3. prefill each admitted prompt into its slot and sample its first token;
4. decode one token for every sequence that was running, all in one batched call;
5. retire the sequences that finished (stop token, ``max_tokens``, or the context is full).

So a new request starts at the next step rather than after the current batch drains, and a
finished one gives its slot up at once: that is the difference from static batching, and why
time to first token stays short under load. Fairness is the FIFO: admission never skips the
oldest request for a younger one that would fit better. Beyond ``max_queue`` waiting
requests, `submit` raises `QueueFullError` (the API answers 429 with Retry-After).

Tokens go back to the event loop of the caller with ``call_soon_threadsafe``; each
`Generation` yields them as they come. Its output is bounded by ``max_tokens``, so a slow
reader costs at most that much memory.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import torch

from kaon.llm.models import DecoderLM

__all__ = [
    "Engine",
    "EngineStats",
    "Generation",
    "PromptTooLongError",
    "QueueFullError",
    "SamplingParams",
    "StepInfo",
    "Token",
]

logger = logging.getLogger("kaon.llm")


class QueueFullError(Exception):
    """The waiting queue is at its bound; try again after `retry_after_s`."""

    def __init__(self, queued: int, retry_after_s: float) -> None:
        super().__init__(f"{queued} requests are already waiting")
        self.retry_after_s = retry_after_s


class PromptTooLongError(ValueError):
    """The prompt leaves no room in the model's context for a single new token."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None  # same seed, same prompt, same tokens
    stop_ids: frozenset[int] = frozenset()  # ends the sequence (e.g. end of text)


@dataclass(frozen=True)
class Token:
    id: int
    finish: str | None = None  # "stop" (a stop token), "length" (max_tokens or context)


@dataclass(frozen=True)
class StepInfo:
    """What one step did, for tests and tuning: who was prefilled, who decoded."""

    step: int
    prefilled: tuple[int, ...]  # request numbers
    prefill_tokens: int
    decoded: tuple[int, ...]


@dataclass(frozen=True)
class EngineStats:
    running: int
    queued: int
    free_slots: int
    steps: int
    tokens: int


@dataclass(eq=False)
class _Sequence:
    number: int
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Token | BaseException]
    rng: torch.Generator
    slot: int = -1
    length: int = 0  # tokens in its cache
    last: int = 0  # the newest token, fed at the next decode step
    generated: int = 0
    cancelled: bool = False
    finished: bool = False


@dataclass(eq=False)
class Generation:
    """One request's tokens, as the engine makes them. Iterate `tokens`; `cancel` (also on
    leaving the iteration early) frees its slot at the engine's next step."""

    _seq: _Sequence
    _engine: Engine
    prompt_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.prompt_tokens = len(self._seq.prompt)

    async def tokens(self) -> AsyncIterator[Token]:
        try:
            while True:
                item = await self._seq.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish is not None:
                    return
        finally:
            self.cancel()

    def cancel(self) -> None:
        if not self._seq.cancelled and not self._seq.finished:
            self._seq.cancelled = True
            self._engine._wake()


class Engine:
    """The decoding loop for one model. `start` it once (a daemon thread); `stop` ends it."""

    def __init__(
        self,
        model: DecoderLM,
        *,
        max_queue: int = 64,
        max_step_tokens: int = 1024,
        vocab_limit: int | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
    ) -> None:
        if max_queue < 0 or max_step_tokens < 1:
            raise ValueError("max_queue must be >= 0 and max_step_tokens >= 1")
        self.model = model
        self.max_queue = max_queue
        self.max_step_tokens = max_step_tokens
        self.vocab_limit = min(vocab_limit or model.vocab, model.vocab)
        self._on_step = on_step
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._free = list(range(model.slots - 1, -1, -1))
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._numbers = 0
        self.steps = 0
        self.tokens_out = 0
        self._seconds_per_token = 0.01  # a running estimate, for Retry-After

    # --- the caller's side (event loop) -------------------------------------------------

    def submit(self, prompt: list[int], params: SamplingParams) -> Generation:
        """Queue a request; raises `QueueFullError` or `PromptTooLongError` at once."""
        if not prompt:
            raise PromptTooLongError("the prompt is empty")
        if len(prompt) >= self.model.context:
            raise PromptTooLongError(
                f"the prompt has {len(prompt)} tokens; the context holds {self.model.context}"
            )
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(len(self._waiting), self._retry_after())
            self._numbers += 1
            seq = _Sequence(
                number=self._numbers,
                prompt=list(prompt),
                params=params,
                loop=asyncio.get_running_loop(),
                out=asyncio.Queue(),
                rng=torch.Generator().manual_seed(seed),
            )
            self._waiting.append(seq)
            self._cond.notify()
        return Generation(seq, self)

    def _retry_after(self) -> float:
        """About how long until the queue has room: the queue's tokens over the throughput."""
        waiting = sum(s.params.max_tokens for s in self._waiting)
        return max(1.0, waiting * self._seconds_per_token / max(1, self.model.slots))

    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(
                running=len(self._running),
                queued=len(self._waiting),
                free_slots=len(self._free),
                steps=self.steps,
                tokens=self.tokens_out,
            )

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="kaon-llm", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(10)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # --- the loop (its own thread) ------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._running:
                    self._cond.wait()
                if self._stopping:
                    return
            start = time.perf_counter()
            try:
                made = self._step()
            except Exception as exc:  # a bug of ours: fail what is in flight, keep serving
                logger.exception("decoding step failed")
                with self._cond:
                    stuck = [*self._running, *self._waiting]
                    self._running, self._waiting = [], deque()
                self._fail(stuck, exc)
                continue
            if made:
                per_token = (time.perf_counter() - start) / made
                self._seconds_per_token += 0.1 * (per_token - self._seconds_per_token)

    def _step(self) -> int:
        with self._cond:
            for seq in self._running:
                if seq.cancelled:
                    self._retire(seq)
            self._running = [s for s in self._running if not s.finished]
            if any(s.cancelled for s in self._waiting):  # left while queued: not a place
                self._waiting = deque(s for s in self._waiting if not s.cancelled)
            decoding = list(self._running)
            admitted = self._admit(self.max_step_tokens - len(decoding))
        made = 0
        prefilled: list[_Sequence] = []
        for seq in admitted:
            try:
                logits = self.model.prefill(seq.slot, seq.prompt)
            except Exception as exc:
                logger.exception("prefill failed")
                self._fail([seq], exc)
                continue
            seq.length = len(seq.prompt)
            self._emit(seq, self._sample(logits, seq))
            prefilled.append(seq)
            made += 1
        if decoding:
            try:
                logits = self.model.decode(
                    [s.slot for s in decoding], [s.last for s in decoding],
                    [s.length for s in decoding],
                )  # fmt: skip
            except Exception as exc:
                logger.exception("decode step failed")
                self._fail(decoding, exc)
                decoding = []
            else:
                for row, seq in enumerate(decoding):
                    seq.length += 1
                    self._emit(seq, self._sample(logits[row], seq))
                made += len(decoding)
        with self._cond:
            self._running.extend(prefilled)
            for seq in self._running:
                if seq.finished or seq.cancelled:
                    self._retire(seq)
            self._running = [s for s in self._running if not s.finished]
            self.steps += 1
            self.tokens_out += made
        if self._on_step is not None:
            self._on_step(
                StepInfo(
                    step=self.steps,
                    prefilled=tuple(s.number for s in prefilled),
                    prefill_tokens=sum(len(s.prompt) for s in prefilled),
                    decoded=tuple(s.number for s in decoding),
                )
            )
        return made

    def _admit(self, budget: int) -> list[_Sequence]:
        """Oldest first, while a slot is free and the budget allows (holding the lock)."""
        admitted: list[_Sequence] = []
        while self._waiting and self._free:
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                seq.finished = True
                continue
            cost = len(seq.prompt)
            if cost > budget and (admitted or self._running):
                break
            self._waiting.popleft()
            seq.slot = self._free.pop()
            admitted.append(seq)
            budget -= cost
        return admitted

    def _retire(self, seq: _Sequence) -> None:
        if seq.slot >= 0:
            release = getattr(self.model, "release", None)  # a cache held outside the slot
            if release is not None:
                release(seq.slot)
            self._free.append(seq.slot)
            seq.slot = -1
        seq.finished = True

    def _emit(self, seq: _Sequence, token: int) -> None:
        seq.last = token
        seq.generated += 1
        finish = None
        if token in seq.params.stop_ids:
            finish = "stop"
        elif seq.generated >= seq.params.max_tokens or seq.length >= self.model.context:
            finish = "length"  # (the next token would have no position left)
        if finish is not None:
            seq.finished = True
        seq.loop.call_soon_threadsafe(seq.out.put_nowait, Token(token, finish))

    def _fail(self, seqs: list[_Sequence], exc: Exception) -> None:
        for seq in seqs:
            seq.finished = True
            seq.loop.call_soon_threadsafe(seq.out.put_nowait, exc)
        with self._cond:
            for seq in seqs:
                self._retire(seq)

    def _sample(self, logits: torch.Tensor, seq: _Sequence) -> int:
        logits = logits[: self.vocab_limit].float()
        p = seq.params
        if p.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / p.temperature, dim=-1)
        if p.top_p < 1.0:
            ordered, order = torch.sort(probs, descending=True)
            outside = torch.cumsum(ordered, dim=-1) - ordered >= p.top_p  # keeps at least one
            ordered[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, ordered)
        return int(torch.multinomial(probs, 1, generator=seq.rng))
