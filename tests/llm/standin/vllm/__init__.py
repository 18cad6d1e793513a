"""A stand-in for the ``vllm`` package, for Kaon's tests only.

It exists because vLLM needs a CUDA GPU (its wheels are built for CUDA, its engine runs
the model there) and the machines that run Kaon's test suite have none. It implements
exactly the part of vLLM's public API that ``kaon.llm.vllm_engine`` uses, with the names,
signatures and behaviour of vLLM's V1 API as read in vLLM's sources: ``vllm/__init__.py``,
``vllm/engine/async_llm_engine.py`` (``AsyncLLMEngine`` is an alias of the V1
``AsyncLLM``), ``vllm/v1/engine/async_llm.py``, ``vllm/v1/engine/output_processor.py``,
``vllm/sampling_params.py`` and ``vllm/outputs.py``. ``kaon[vllm]`` pins 0.29 to 0.33;
this part of the API is the same across the sources read, but not every release in that
range was read:

- ``AsyncEngineArgs(model=..., tokenizer=..., max_model_len=..., max_num_seqs=...)``;
- ``AsyncLLMEngine.from_engine_args(args)``, with ``.model_config.max_model_len`` and
  ``.vllm_config.scheduler_config.max_num_seqs``;
- ``generate(prompt, sampling_params, request_id)``: an async generator of `RequestOutput`,
  one per engine step that made tokens for the request. ``outputs[0].token_ids`` and
  ``.text`` are cumulative (``RequestOutputKind.CUMULATIVE``, the default) or only what is
  new (``DELTA``; outputs a slow reader has not taken yet are merged, as vLLM's
  ``RequestOutputCollector`` does); the last one has ``finished=True`` and
  ``finish_reason`` ``"length"`` (``max_tokens``, or the context is full) or ``"stop"`` (a
  ``stop_token_ids`` token, or the model's end-of-text unless ``ignore_eos``);
- closing or cancelling that generator aborts the request, as vLLM's ``generate`` does;
- ``abort(request_id)``: the request leaves the batch, and its generator ends with a last
  output whose ``finish_reason`` is ``"abort"``; an unknown or finished one is ignored;
- ``shutdown()``.

Deliberately not vLLM: the "model" is a deterministic function of the previous token and
the position (greedy at temperature 0; seeded draws otherwise, ``top_p`` unused) over the
non-special tokens of the folder's vocabulary, decoded by the folder's tokenizer; only
``TokensPrompt`` prompts and ``n=1`` are taken (what Kaon sends). Requests are batched
like vLLM's scheduler does: up to ``max_num_seqs`` at a time, the rest wait, oldest first.

For the tests: ``STANDIN_VLLM_EVENTS`` names a file that gets a JSON line per request
added, finished and aborted; ``STANDIN_VLLM_STEP_S`` is the time of one engine step.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypedDict

from vllm.sampling_params import RequestOutputKind, SamplingParams

__version__ = "0.29.0+standin"

__all__ = [
    "AsyncEngineArgs",
    "AsyncLLMEngine",
    "CompletionOutput",
    "RequestOutput",
    "SamplingParams",
    "TokensPrompt",
]


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]


@dataclass
class AsyncEngineArgs:
    """vLLM's fields that matter here; any other is a ``TypeError``, as in vLLM for an
    unknown one."""

    model: str
    tokenizer: str | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float = 0.9
    dtype: str = "auto"
    seed: int = 0
    enforce_eager: bool = False
    enable_prefix_caching: bool | None = None
    disable_log_stats: bool = False


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool


@dataclass(eq=False)
class _Request:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    rng: random.Random
    limit: int  # tokens it may make: max_tokens, capped by the context
    made: list[int] = field(default_factory=list)
    sent_tokens: int = 0  # for DELTA: tokens already in an output
    sent_text: str = ""
    pending: RequestOutput | None = None  # the collector: not yet taken by generate()
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False


class AsyncLLMEngine:
    """vLLM's ``AsyncLLMEngine`` (V1 ``AsyncLLM``), as far as Kaon calls it."""

    def __init__(self, args: AsyncEngineArgs) -> None:
        folder = Path(args.model)
        config = json.loads((folder / "config.json").read_text())
        limit = int(config.get("max_position_embeddings") or 2048)
        self.model_config = SimpleNamespace(max_model_len=args.max_model_len or limit)
        scheduler = SimpleNamespace(max_num_seqs=args.max_num_seqs or 256)
        self.vllm_config = SimpleNamespace(
            model_config=self.model_config, scheduler_config=scheduler
        )
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(
            args.tokenizer or args.model, local_files_only=True
        )
        special = set(self._tokenizer.all_special_ids)
        self._vocab = [i for i in range(int(config["vocab_size"])) if i not in special]
        self._eos = config.get("eos_token_id")
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._requests: dict[str, _Request] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._step_s = float(os.environ.get("STANDIN_VLLM_STEP_S", "0.002"))
        self._events = os.environ.get("STANDIN_VLLM_EVENTS")

    @classmethod
    def from_engine_args(
        cls, engine_args: AsyncEngineArgs, start_engine_loop: bool = True, **_: Any
    ) -> AsyncLLMEngine:
        return cls(engine_args)

    async def generate(
        self, prompt: TokensPrompt, sampling_params: SamplingParams, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        req = self._add(prompt, sampling_params, request_id)
        try:
            while True:
                await req.ready.wait()
                out, req.pending = req.pending, None
                req.ready.clear()
                assert out is not None
                yield out
                if out.finished:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            await self.abort(request_id)
            raise

    async def abort(self, request_id: str) -> None:
        req = self._requests.pop(request_id, None)
        if req is None:  # finished, or never added: nothing to do, as in vLLM
            self._record("abort", request_id, known=False)
            return
        self._record("abort", request_id, known=True, tokens=len(req.made))
        if req in self._running:
            self._running.remove(req)
        if req in self._waiting:
            self._waiting.remove(req)
        req.done = True
        self._put(req, "abort")

    def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()

    # --- inside -------------------------------------------------------------------------

    def _add(self, prompt: TokensPrompt, params: SamplingParams, request_id: str) -> _Request:
        if not isinstance(prompt, dict) or "prompt_token_ids" not in prompt:
            raise NotImplementedError("the stand-in takes TokensPrompt prompts only")
        if params.n != 1:
            raise NotImplementedError("the stand-in takes n=1 only")
        if request_id in self._requests:
            raise ValueError(f"Request id {request_id} already running.")
        ids = list(prompt["prompt_token_ids"])
        context = self.model_config.max_model_len
        if not ids or len(ids) >= context:
            raise ValueError(f"The prompt (length {len(ids)}) does not fit {context} tokens")
        room = context - len(ids)
        limit = min(params.max_tokens or room, room)
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        req = _Request(request_id, ids, params, random.Random(seed), limit)
        self._requests[request_id] = req
        self._waiting.append(req)
        self._record("add", request_id, prompt_tokens=len(ids), seed=params.seed,
                     max_tokens=params.max_tokens, temperature=params.temperature)  # fmt: skip
        if self._loop_task is None:  # started by the first request, on the caller's loop
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())
        self._wake.set()
        return req

    async def _loop(self) -> None:
        while True:
            if not self._waiting and not self._running:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self._step_s)
            self._step()

    def _step(self) -> None:
        capacity = self.vllm_config.scheduler_config.max_num_seqs
        while self._waiting and len(self._running) < capacity:
            self._running.append(self._waiting.popleft())
        for req in list(self._running):
            token = self._next(req)
            req.made.append(token)
            stops = set(req.params.stop_token_ids or [])
            if not req.params.ignore_eos and isinstance(self._eos, int):
                stops.add(self._eos)
            finish = None
            if token in stops:
                finish = "stop"
            elif len(req.made) >= req.limit:
                finish = "length"
            if finish is not None:
                self._running.remove(req)
                self._requests.pop(req.request_id, None)
                req.done = True
                self._record("finish", req.request_id, reason=finish, tokens=len(req.made))
            self._put(req, finish)

    def _next(self, req: _Request) -> int:
        last = req.made[-1] if req.made else req.prompt[-1]
        position = len(req.prompt) + len(req.made)
        if req.params.temperature == 0:
            return self._vocab[(last * 7 + position * 13 + 5) % len(self._vocab)]
        return req.rng.choice(self._vocab)

    def _put(self, req: _Request, finish: str | None) -> None:
        params = req.params
        delta = params.output_kind == RequestOutputKind.DELTA
        finished = finish is not None
        if params.output_kind == RequestOutputKind.FINAL_ONLY and not finished:
            return
        text = ""
        if params.detokenize:
            text = self._tokenizer.decode(req.made, skip_special_tokens=params.skip_special_tokens)
        ids = req.made[req.sent_tokens :] if delta else list(req.made)
        if delta:
            text, req.sent_text = text[len(req.sent_text) :], text
        req.sent_tokens = len(req.made)
        choice = CompletionOutput(0, text, ids, None, None, finish_reason=finish)
        out = RequestOutput(req.request_id, None, req.prompt, None, [choice], finished)
        if req.pending is not None and delta:  # not taken yet: merged into one
            old = req.pending.outputs[0]
            choice.token_ids = old.token_ids + choice.token_ids
            choice.text = old.text + choice.text
        req.pending = out
        req.ready.set()

    def _record(self, event: str, request_id: str, **fields: Any) -> None:
        if self._events:
            line = json.dumps({"event": event, "request_id": request_id, **fields})
            with open(self._events, "a") as f:
                f.write(line + "\n")
