"""vLLM as the engine behind Kaon's OpenAI API (``pip install 'kaon[vllm]'``, a CUDA GPU).

`LLMService`'s routes stay as they are: they tokenize, validate, check the context, split a
request into ``n`` sequences, detokenize, match stop strings and answer in OpenAI's format,
streamed or not. Only the engine under them changes: `VLLMEngine` hands each sequence to
vLLM's ``AsyncLLMEngine`` (the V1 ``AsyncLLM``) as token ids and streams its token ids
back. So the API behaves the same over either engine, byte for byte where the tokens are
the same, and vLLM does what it is for: paged KV cache, prefix caching (the ``n``
sequences of one request share the prompt's blocks), chunked prefill, CUDA graphs.

Decisions, and why:

- **Token ids in, token ids out** (``TokensPrompt``, ``detokenize=False``,
  ``RequestOutputKind.DELTA``): the prompt vLLM decodes is exactly the one Kaon counted in
  ``usage`` and checked against the context, and text is made once, by the routes'
  detokenizer, not once in vLLM and again here.
- **Stop strings stay with the routes** (`StopScanner`): the same rule on both engines,
  and a stop string found there closes the stream, which aborts the vLLM request at once.
  The tokenizer's end-of-text id goes to vLLM as ``stop_token_ids``, besides the ones vLLM
  takes from the model's ``generation_config``.
- **One vLLM request per choice** (``n=1`` each, seed ``seed + i``), as the built-in engine
  does: each choice streams, finishes and is cancelled on its own.
- **Cancel = abort**: a client that leaves closes the stream; closing the generator that
  vLLM's ``generate`` returned makes vLLM abort the request, and `cancel` also calls
  ``engine.abort(request_id)`` so nothing depends on when the generator is collected.
- **The 429 bound** counts requests that vLLM has not started yet (no output so far):
  beyond ``max_queue`` of them, `submit` raises `QueueFullError`, as the built-in engine's
  queue does. ``/v1/engine`` reports running (has output), queued, free slots (vLLM's
  ``max_num_seqs`` less running), outputs received (as ``steps``) and tokens.

vLLM is imported only when an engine is built, so Kaon imports, type-checks and tests
without it; ``KAON_LLM_ENGINE=vllm`` without vLLM fails the replica's setup with the
``pip install`` line. ``KAON_VLLM_ARGS`` (a JSON object) adds ``AsyncEngineArgs`` fields,
e.g. ``{"gpu_memory_utilization": 0.5, "max_model_len": 4096}``.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from kaon.llm.engine import (
    EngineStats,
    PromptTooLongError,
    QueueFullError,
    SamplingParams,
    Token,
)
from kaon.llm.hf import HFChat, HFTokenizer
from kaon.llm.service import LLMService

__all__ = [
    "ENV_ENGINE",
    "ENV_VLLM_ARGS",
    "INSTALL_HINT",
    "VLLMChat",
    "VLLMEngine",
    "VLLMGeneration",
    "engine_choice",
    "finish_reason",
    "import_vllm",
    "sampling_kwargs",
    "serve_with_vllm",
    "vllm_args",
]

ENV_ENGINE = "KAON_LLM_ENGINE"  # "kaon" (the built-in engine, default) or "vllm"
ENV_VLLM_ARGS = "KAON_VLLM_ARGS"  # a JSON object of extra AsyncEngineArgs fields
ENGINES = ("kaon", "vllm")
INSTALL_HINT = "pip install 'kaon[vllm]'"


def engine_choice(env: Mapping[str, str] = os.environ) -> str:
    """The engine ``KAON_LLM_ENGINE`` names: ``"kaon"`` unless set; a typo is an error, not
    a silent fallback to the other engine."""
    name = env.get(ENV_ENGINE, "").strip().lower() or "kaon"
    if name not in ENGINES:
        raise ValueError(f"{ENV_ENGINE}={env[ENV_ENGINE]!r}: must be one of {', '.join(ENGINES)}")
    return name


def import_vllm() -> Any:
    """The ``vllm`` module, or an error that says how to get it."""
    try:
        return importlib.import_module("vllm")  # typed as Any: Kaon type-checks without it
    except ImportError as exc:
        raise RuntimeError(
            f"{ENV_ENGINE}=vllm needs vLLM, which is not installed here: {INSTALL_HINT} "
            "(vLLM needs a CUDA GPU)"
        ) from exc


def vllm_args(model_dir: str, extra: str | None) -> dict[str, Any]:
    """``AsyncEngineArgs`` fields: the folder for model and tokenizer, plus the JSON object
    `extra` (``KAON_VLLM_ARGS``), which may override anything but the folder."""
    fields: dict[str, Any] = {}
    if extra:
        try:
            fields = json.loads(extra)
        except ValueError as exc:
            raise ValueError(f"{ENV_VLLM_ARGS} is not valid JSON: {exc}") from exc
        if not isinstance(fields, dict):
            raise ValueError(f"{ENV_VLLM_ARGS} must be a JSON object of AsyncEngineArgs fields")
    return {**fields, "model": model_dir, "tokenizer": model_dir}


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """vLLM ``SamplingParams`` fields for one of Kaon's sequences (``output_kind`` aside,
    an enum of vLLM's). Temperature 0 is greedy in both."""
    return {
        "n": 1,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "seed": params.seed,
        "stop_token_ids": sorted(params.stop_ids),
        "detokenize": False,
    }


def finish_reason(reason: str | None) -> str:
    """Kaon's finish reason for vLLM's; an aborted or failed request is an error here (a
    request this side aborted is never read again)."""
    if reason in ("stop", "length"):
        return reason
    raise RuntimeError(f"vLLM ended the request with finish_reason={reason!r}")


class VLLMGeneration:
    """One sequence in vLLM. Iterate `tokens` once; `cancel` (also on leaving the iteration
    early) aborts the request in vLLM."""

    def __init__(self, engine: VLLMEngine, prompt: list[int], params: SamplingParams) -> None:
        self._engine = engine
        self.request_id = "kaon-" + uuid.uuid4().hex
        self.prompt = prompt
        self.prompt_tokens = len(prompt)
        self.max_tokens = params.max_tokens
        self.params = params
        self.started = False  # vLLM sent its first output
        self.done = False
        self._sent = False  # the request reached vLLM

    async def tokens(self) -> AsyncIterator[Token]:
        if self.done:
            return
        stream = self._engine._generate(self)
        self._sent = True
        try:
            async for out in stream:
                self._engine._received(self, out)
                choice = out.outputs[0]
                ids = [int(t) for t in choice.token_ids]
                finish = finish_reason(choice.finish_reason) if out.finished else None
                if out.finished:
                    if not ids:
                        raise RuntimeError("vLLM finished the request without a last token")
                    # done before the caller stops reading at the last token: nothing to
                    # abort then, and vLLM's generator returns rather than being closed
                    self._engine._forget(self)
                    async for _ in stream:
                        pass
                for k, token in enumerate(ids):
                    yield Token(token, finish if k == len(ids) - 1 else None)
                if out.finished:
                    return
            raise RuntimeError("vLLM's stream ended before the request finished")
        finally:
            self._engine._forget(self)
            await stream.aclose()

    def cancel(self) -> None:
        if self.done:
            return
        if self._sent:
            self._engine._abort(self.request_id)
        self._engine._forget(self)


class VLLMEngine:
    """A `TokenEngine` over a vLLM ``AsyncLLMEngine`` (`client`). Built in `setup`'s
    thread; everything else runs on the replica's event loop, where vLLM starts its output
    handler at the first request."""

    def __init__(
        self, client: Any, sampling_params: Any, output_kind: Any, *, max_queue: int
    ) -> None:
        self.client = client
        self._sampling = sampling_params  # vllm.SamplingParams
        self._output_kind = output_kind  # vllm's RequestOutputKind.DELTA
        self.max_queue = max_queue
        self.context = int(client.model_config.max_model_len)
        scheduler = getattr(getattr(client, "vllm_config", None), "scheduler_config", None)
        self.capacity = int(getattr(scheduler, "max_num_seqs", 0) or 0)
        self._queued: set[VLLMGeneration] = set()
        self._running: set[VLLMGeneration] = set()
        self._aborts: set[asyncio.Task[None]] = set()
        self._last: dict[str, float] = {}
        self.outputs = 0
        self.tokens_out = 0
        self._seconds_per_token = 0.01  # one sequence's, a running estimate for Retry-After

    @classmethod
    def build(cls, model_dir: str, *, max_queue: int, extra: str | None = None) -> VLLMEngine:
        """vLLM's engine over a Hugging Face folder (loads the weights onto the GPU)."""
        vllm = import_vllm()
        kind = importlib.import_module("vllm.sampling_params").RequestOutputKind
        args = vllm.AsyncEngineArgs(**vllm_args(model_dir, extra))
        client = vllm.AsyncLLMEngine.from_engine_args(args)
        engine = cls(client, vllm.SamplingParams, kind.DELTA, max_queue=max_queue)
        atexit.register(engine.shutdown)
        return engine

    # --- TokenEngine --------------------------------------------------------------------

    def submit(self, prompt: list[int], params: SamplingParams) -> VLLMGeneration:
        if not prompt:
            raise PromptTooLongError("the prompt is empty")
        if len(prompt) >= self.context:
            raise PromptTooLongError(
                f"the prompt has {len(prompt)} tokens; the context holds {self.context}"
            )
        if len(self._queued) >= self.max_queue:
            raise QueueFullError(len(self._queued), self._retry_after())
        gen = VLLMGeneration(self, list(prompt), params)
        self._queued.add(gen)
        return gen

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self._running),
            queued=len(self._queued),
            free_slots=max(0, self.capacity - len(self._running)),
            steps=self.outputs,
            tokens=self.tokens_out,
        )

    def shutdown(self) -> None:
        shutdown = getattr(self.client, "shutdown", None)
        if shutdown is not None:
            shutdown()

    # --- for VLLMGeneration -------------------------------------------------------------

    def _generate(self, gen: VLLMGeneration) -> Any:
        params = self._sampling(**sampling_kwargs(gen.params), output_kind=self._output_kind)
        self._last[gen.request_id] = time.perf_counter()
        return self.client.generate({"prompt_token_ids": gen.prompt}, params, gen.request_id)

    def _received(self, gen: VLLMGeneration, out: Any) -> None:
        made = len(out.outputs[0].token_ids)
        now = time.perf_counter()
        if gen.started and made:
            per_token = (now - self._last.get(gen.request_id, now)) / made
            self._seconds_per_token += 0.1 * (per_token - self._seconds_per_token)
        self._last[gen.request_id] = now
        if not gen.started:
            gen.started = True
            self._queued.discard(gen)
            self._running.add(gen)
        self.outputs += 1
        self.tokens_out += made

    def _forget(self, gen: VLLMGeneration) -> None:
        gen.done = True
        self._queued.discard(gen)
        self._running.discard(gen)
        self._last.pop(gen.request_id, None)

    def _abort(self, request_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.client.abort(request_id))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    def _retry_after(self) -> float:
        """About how long until the queue has room: its tokens at the measured pace."""
        waiting = sum(g.max_tokens for g in self._queued)
        return max(1.0, waiting * self._seconds_per_token / max(1, self.capacity))


def serve_with_vllm(service: LLMService, model_dir: str) -> HFTokenizer:
    """Make `service` decode with vLLM over the Hugging Face folder `model_dir`: sets its
    tokenizer (the folder's, which vLLM loads too), engine and context; returns the
    tokenizer, for chat templates."""
    engine = VLLMEngine.build(
        model_dir, max_queue=service.max_queue, extra=os.environ.get(ENV_VLLM_ARGS)
    )
    from transformers import AutoTokenizer

    tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(model_dir, local_files_only=True))
    service.tokenizer = tokenizer
    service.engine = engine
    service.context = engine.context
    return tokenizer


class VLLMChat(HFChat):
    """`HFChat` decoded by vLLM: serves the Hugging Face folder in ``hf_path`` (default:
    ``$KAON_LLM_HF_PATH``). ``kaon deploy create --llm`` gets the same with
    ``KAON_LLM_ENGINE=vllm`` (`kaon.llm.ready.ModelDirLLM`)."""

    def setup(self) -> None:
        path = self.hf_path or os.environ.get("KAON_LLM_HF_PATH")
        if not path:
            raise ValueError("set KAON_LLM_HF_PATH to a save_pretrained folder")
        if type(self).model_name == LLMService.model_name:
            self.model_name = os.path.basename(os.path.normpath(path))
        self.hf_tokenizer = serve_with_vllm(self, path)
