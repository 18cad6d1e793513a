"""`LLMService`: a `kaon.Service` that serves a language model through OpenAI's API.

```python
from kaon.llm import CachedDecoder, CharTokenizer, LLMService, from_checkpoint


class Chat(LLMService):
    model_name = "char-lm"

    def load(self):
        model = build_model()  # the nn.Module the job trained
        decoder = from_checkpoint("out/char_lm/checkpoints", model, slots=self.slots)
        return decoder, CharTokenizer(alphabet)
```

It answers ``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions``
(streamed as server-sent events with ``"stream": true``) and, for operators,
``GET /v1/engine`` (the batch: running, queued, free slots). Behind the gateway, the
official ``openai`` client works with ``base_url="https://GATEWAY/DEPLOYMENT/v1"`` and the
deployment's token as its API key.

Every request becomes ``n`` sequences in the `Engine`; a client that disconnects mid-stream
closes the stream, which cancels its sequences, and their cache slots are free at the next
decoding step. A full queue answers 429 with Retry-After. Stop strings are matched on the
text, across token boundaries: text that could be the start of a stop string is held back
until the next token tells.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from kaon.llm.engine import (
    Engine,
    EngineStats,
    PromptTooLongError,
    QueueFullError,
    SamplingParams,
    Token,
)
from kaon.llm.models import DecoderLM
from kaon.llm.protocol import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    api_error,
    validation_error,
)
from kaon.llm.tokenizers import Tokenizer
from kaon.serving.service import Service, handler
from kaon.serving.streaming import Request, Response

__all__ = ["LLMService", "StopScanner", "TokenEngine", "TokenStream"]

_SSE = "text/event-stream"
_DONE = b"data: [DONE]\n\n"


class TokenStream(Protocol):
    """One sequence's tokens as an engine makes them (`kaon.llm.engine.Generation`)."""

    def tokens(self) -> AsyncIterator[Token]: ...

    def cancel(self) -> None: ...


class TokenEngine(Protocol):
    """What the routes need of an engine: the built-in `Engine`, or another one behind
    the same API (`kaon.llm.vllm_engine.VLLMEngine`). `submit` raises `QueueFullError`
    or `PromptTooLongError` at once."""

    def submit(self, prompt: list[int], params: SamplingParams) -> TokenStream: ...

    def stats(self) -> EngineStats: ...


class StopScanner:
    """Finds stop strings in text that arrives in pieces. `feed` returns the text that is
    safe to send (no stop string can start in it) and whether a stop string was found."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = stops
        self._hold = max((len(s) for s in stops), default=1) - 1
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        self._pending += text
        cut = min((i for s in self._stops if (i := self._pending.find(s)) >= 0), default=-1)
        if cut >= 0:
            out, self._pending = self._pending[:cut], ""
            return out, True
        keep = min(self._hold, len(self._pending))
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out


@dataclass
class _Piece:
    index: int
    text: str
    finish: str | None
    tokens: int


class LLMService(Service):
    """Subclass it and implement `load`; tune the class attributes if need be."""

    model_name = "kaon-llm"
    slots = 16  # sequences decoded together (cache slots)
    max_queue = 64  # requests waiting beyond the running ones; more get 429
    max_step_tokens = 1024  # tokens per decoding step: one per sequence, plus prompts
    default_max_tokens = 16  # /v1/completions without max_tokens, as OpenAI's default
    engine: TokenEngine  # set by `setup`

    def load(self) -> tuple[DecoderLM, Tokenizer]:
        """The model (with its cache for `slots` sequences) and its tokenizer."""
        raise NotImplementedError("an LLMService implements load()")

    def chat_prompt(self, messages: list[ChatMessage]) -> str:
        """The prompt a conversation becomes; override it for a model trained on a
        template of its own."""
        lines = [f"{m.role}: {m.text()}\n" for m in messages]
        return "".join(lines) + "assistant:"

    def setup(self) -> None:
        model, self.tokenizer = self.load()
        engine = Engine(
            model,
            max_queue=self.max_queue,
            max_step_tokens=self.max_step_tokens,
            vocab_limit=self.tokenizer.vocab_size,
        )
        self.context = model.context
        engine.start()
        self.engine = engine

    # --- routes -------------------------------------------------------------------------

    @handler(method="GET", path="/v1/models")
    def list_models(self) -> dict[str, Any]:
        """The one model this deployment serves."""
        card = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "kaon"}
        return {"object": "list", "data": [card]}

    @handler(method="GET", path="/v1/engine")
    def engine_stats(self) -> dict[str, int]:
        """The decoding batch now: running and queued sequences, free slots, steps, tokens."""
        stats = self.engine.stats()
        return {
            "running": stats.running,
            "queued": stats.queued,
            "free_slots": stats.free_slots,
            "steps": stats.steps,
            "tokens": stats.tokens,
        }

    @handler(path="/v1/completions")
    async def completions(self, request: Request) -> Response:
        """OpenAI's text completion."""
        parsed = _parse(request, CompletionRequest)
        if not isinstance(parsed, CompletionRequest):
            return _refusal(parsed)
        return await self._serve(parsed, parsed.text(), chat=False, request=request)

    @handler(path="/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        """OpenAI's chat completion."""
        parsed = _parse(request, ChatRequest)
        if not isinstance(parsed, ChatRequest):
            return _refusal(parsed)
        prompt = self.chat_prompt(parsed.messages)
        return await self._serve(parsed, prompt, chat=True, request=request)

    # --- the work -----------------------------------------------------------------------

    async def _serve(
        self, req: CompletionRequest | ChatRequest, prompt: str, chat: bool, request: Request
    ) -> Response:
        if req.model != self.model_name:
            message = f"The model `{req.model}` does not exist"
            return _fail(404, message, "model", code="model_not_found")
        ids = self.tokenizer.encode(prompt)
        field = "messages" if chat else "prompt"
        if not ids:
            return _fail(400, "The prompt has no tokens this model knows", field)
        room = self.context - len(ids)
        limit = req.limit() if isinstance(req, ChatRequest) else req.max_tokens
        if room < 1:
            message = (
                f"This model's maximum context length is {self.context} tokens; "
                f"the prompt has {len(ids)}"
            )
            return _fail(400, message, field, code="context_length_exceeded")
        if limit is not None and limit > room:
            message = (
                f"max_tokens is too large: {limit}. This model's maximum context length is "
                f"{self.context} tokens and the prompt has {len(ids)}"
            )
            param = "max_completion_tokens" if chat and req.max_tokens is None else "max_tokens"
            return _fail(400, message, param, code="context_length_exceeded")
        max_tokens = limit or (room if chat else min(room, self.default_max_tokens))
        eos = self.tokenizer.eos_id
        stop_ids = frozenset() if eos is None else frozenset([eos])
        gens: list[TokenStream] = []
        try:
            for i in range(req.n):
                seed = None if req.seed is None else req.seed + i
                params = SamplingParams(max_tokens, req.temperature, req.top_p, seed, stop_ids)
                gens.append(self.engine.submit(ids, params))
        except QueueFullError as exc:
            for gen in gens:
                gen.cancel()
            retry = str(max(1, round(exc.retry_after_s)))
            message = "Too many requests are waiting for this model; retry later"
            return _fail(429, message, None, "rate_limit_error", headers={"retry-after": retry})
        except PromptTooLongError as exc:
            return _fail(400, str(exc), field, code="context_length_exceeded")
        meta = _Meta(
            id=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            created=int(time.time()),
            model=self.model_name,
            chat=chat,
            prompt_tokens=len(ids),
        )
        pieces = self._pieces(gens, req.stops())
        if req.stream:
            events = _sse(meta, pieces, req.n, req.include_usage)
            return Response(200, media_type=_SSE, stream=events)
        return await _collect_unless_gone(meta, pieces, req.n, request)

    async def _pieces(
        self, gens: list[TokenStream], stops: list[str]
    ) -> AsyncGenerator[_Piece, None]:
        """The text of all choices as it is made, merged, each piece tagged by its choice.
        Closing this cancels every sequence still running."""
        queue: asyncio.Queue[_Piece | BaseException] = asyncio.Queue()
        tasks = [
            asyncio.create_task(self._choice(i, gen, stops, queue)) for i, gen in enumerate(gens)
        ]
        left = len(tasks)
        try:
            while left:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish is not None:
                    left -= 1
                yield item
        finally:
            for task in tasks:
                task.cancel()
            for gen in gens:
                gen.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _choice(
        self,
        index: int,
        gen: TokenStream,
        stops: list[str],
        queue: asyncio.Queue[_Piece | BaseException],
    ) -> None:
        detok = self.tokenizer.detokenizer()
        scanner = StopScanner(stops)
        stop_ids = {self.tokenizer.eos_id}
        count = 0
        try:
            async for token in gen.tokens():
                count += 1
                text = "" if token.id in stop_ids else detok.step(token.id)
                out, stopped = scanner.feed(text)
                if stopped:
                    queue.put_nowait(_Piece(index, out, "stop", count))
                    return
                if token.finish is not None:
                    queue.put_nowait(_Piece(index, out + scanner.flush(), token.finish, count))
                    return
                if out:
                    queue.put_nowait(_Piece(index, out, None, count))
        except Exception as exc:
            queue.put_nowait(exc)


@dataclass(frozen=True)
class _Meta:
    id: str
    created: int
    model: str
    chat: bool
    prompt_tokens: int

    def head(self) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def usage(self, completion: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


async def _collect_unless_gone(
    meta: _Meta, pieces: AsyncGenerator[_Piece, None], n: int, request: Request
) -> Response:
    """The whole reply, unless the client leaves first: then its sequences are cancelled
    (their slots free at the next step) and nobody reads the answer."""
    work = asyncio.create_task(_collect(meta, pieces, n))
    gone = asyncio.create_task(request.disconnected())
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        work.cancel()  # a no-op once it is done; else `_collect` closes `pieces`
        await asyncio.gather(work, gone, return_exceptions=True)
    if work.cancelled():
        return _fail(499, "the client disconnected", None)
    return Response(200, work.result())


async def _collect(meta: _Meta, pieces: AsyncGenerator[_Piece, None], n: int) -> dict[str, Any]:
    texts = [""] * n
    finish: list[str | None] = [None] * n
    tokens = [0] * n
    try:
        async for piece in pieces:
            texts[piece.index] += piece.text
            tokens[piece.index] = piece.tokens
            if piece.finish is not None:
                finish[piece.index] = piece.finish
    finally:
        await pieces.aclose()
    choices: list[dict[str, Any]]
    if meta.chat:
        choices = [
            {"index": i, "message": {"role": "assistant", "content": texts[i]},
             "finish_reason": finish[i], "logprobs": None}
            for i in range(n)
        ]  # fmt: skip
    else:
        choices = [
            {"index": i, "text": texts[i], "finish_reason": finish[i], "logprobs": None}
            for i in range(n)
        ]
    return {**meta.head(), "choices": choices, "usage": meta.usage(sum(tokens))}


async def _sse(
    meta: _Meta, pieces: AsyncGenerator[_Piece, None], n: int, include_usage: bool
) -> AsyncIterator[bytes]:
    """OpenAI's stream: a chunk per piece of text, a last chunk per choice with its
    finish_reason, the usage if asked for, then ``[DONE]``."""
    head = meta.head()
    head["object"] = "chat.completion.chunk" if meta.chat else "text_completion"
    tokens = [0] * n
    try:
        if meta.chat:
            for i in range(n):
                yield _event(head, _delta(i, {"role": "assistant", "content": ""}, None))
        async for piece in pieces:
            tokens[piece.index] = piece.tokens
            if meta.chat:
                if piece.text:
                    yield _event(head, _delta(piece.index, {"content": piece.text}, None))
                if piece.finish is not None:
                    yield _event(head, _delta(piece.index, {}, piece.finish))
            else:
                choice = {"index": piece.index, "text": piece.text,
                          "finish_reason": piece.finish, "logprobs": None}  # fmt: skip
                yield _event(head, choice)
        if include_usage:
            usage = {**head, "choices": [], "usage": meta.usage(sum(tokens))}
            yield b"data: " + json.dumps(usage).encode() + b"\n\n"
        yield _DONE
    finally:
        await pieces.aclose()


def _delta(index: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}


def _event(head: dict[str, Any], choice: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\n\n"


def _parse(
    request: Request, model: type[CompletionRequest] | type[ChatRequest]
) -> CompletionRequest | ChatRequest | Response:
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        return _fail(400, "The request body is not valid JSON", None)
    if not isinstance(body, dict):
        return _fail(400, "The request body must be a JSON object", None)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        return Response(400, validation_error(exc))


def _refusal(parsed: object) -> Response:
    return parsed if isinstance(parsed, Response) else _fail(500, "unexpected request", None)


def _fail(
    status: int,
    message: str,
    param: str | None,
    kind: str = "invalid_request_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(status, api_error(message, param, kind, code), headers=headers or {})
