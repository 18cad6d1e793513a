"""The replica: one `Service` instance behind a raw ASGI app.

Lifecycle, as the control plane sees it through ``/ready`` (the part of
`kaon.core.replicas.ReplicaStatus` that a replica knows of itself):

    STARTING (setup() running, 503) -> READY (200)
    STARTING -> FAILED (setup() raised: 503 with the reason; traceback on stderr)

``/healthz`` answers 200 as long as the event loop runs. Handler routes answer 503 until
the replica is ready, so a request that slips in early is refused cleanly rather than run
against a half-loaded model.

Status codes a handler route can return: 200, 404/405 (no such route), 413 (body over the
handler's limit), 422 (malformed JSON, or a field missing, unknown or of the wrong type;
``detail[*].loc`` names it under ``"body"``, or ``"query"`` for a GET handler, as FastAPI
does), 500 (the handler raised, or returned a value that does not fit its return type),
503 (not ready), 504 (over ``timeout_s``). A handler may raise a
`kaon.core.errors.KaonError` on purpose to answer with its status, e.g. `InvalidSpecError`
for 422, or return a `kaon.serving.streaming.Response` to choose status and body itself.

Streamed replies (a generator handler, or a `Response` with a stream; see
`kaon.serving.streaming`): the status and headers go out with the first item, so a
generator that raises before yielding still gets its 4xx/5xx; after that an error can only
end the stream early (as an ``event: error`` for server-sent events). Each chunk is written
when it is yielded and the next item is pulled only once the client's socket has taken the
last one, so a slow reader holds the generator back instead of growing a buffer. A client
that disconnects stops the stream at once: the generator is closed (its ``finally`` runs;
an async one is cancelled where it waits). ``timeout_s`` bounds the wait for each item.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from kaon.core.errors import KaonError
from kaon.core.replicas import (
    CHALLENGE_HEADER,
    HELLO_PATH,
    MAX_CHALLENGE,
    PROOF_HEADER,
    REPLICA_KEY_HEADER,
    ReplicaStatus,
    proof,
)
from kaon.serving import asgi
from kaon.serving.batching import Batcher
from kaon.serving.endpoint import Endpoint, build_endpoint, error_details
from kaon.serving.inline import InlineRule, voluntary_waits
from kaon.serving.metrics import HandlerMetrics, ReplicaMetrics
from kaon.serving.openapi import docs_page, openapi_document
from kaon.serving.service import Service, handlers_of
from kaon.serving.streaming import Request, Response, sse_event, wants_events

__all__ = ["ReplicaApp"]

logger = logging.getLogger("kaon.serving")

_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
_HTML = b"text/html; charset=utf-8"


_KEY_HEADER = REPLICA_KEY_HEADER.encode()
_CHALLENGE_HEADER = CHALLENGE_HEADER.encode()
_PROOF_HEADER = PROOF_HEADER.encode()
_STREAM_HEADERS = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))
_END = object()  # what a stream's next item is once it has none


@dataclass
class _Stream:
    """A reply still to be produced: items from `source`, each framed by `frame`."""

    source: Iterator[Any] | AsyncIterator[Any]
    frame: Callable[[Any], bytes]
    media_type: bytes
    status: int = 200
    extra: tuple[tuple[bytes, bytes], ...] = ()


@dataclass
class _Reply:
    status: int
    body: bytes
    extra: tuple[tuple[bytes, bytes], ...] = ()
    stream: _Stream | None = None
    content_type: bytes = asgi.JSON


def _error(status: int, detail: Any, *extra: tuple[bytes, bytes]) -> _Reply:
    return _Reply(status, json.dumps({"detail": detail}).encode(), extra)


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """Run `call` (in a worker thread) and measure its wall time there, hop excluded."""
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


class _Runner:
    """Calls one handler: in the thread pool or on the loop, batched or not, bounded.

    An ``async def`` handler runs on the loop. A ``def`` handler runs where its
    `InlineRule` says: in the pool, or on the loop while it is measured to be cheap.
    """

    def __init__(
        self, app: ReplicaApp, ep: Endpoint, metrics: HandlerMetrics, pool: ThreadPoolExecutor
    ) -> None:
        self.ep = ep
        self.metrics = metrics
        self._service = app.service
        self._pool = pool
        limit = ep.options.max_concurrency
        self._limit = asyncio.Semaphore(limit) if limit and not ep.batched else None
        # a stream holds its slot for as long as it streams, not just for the call
        self.stream_limit = self._limit if ep.streaming else None
        if ep.streaming:
            self._limit = None
        self.inline = InlineRule(ep.options.run_inline)
        metrics.on_loop.set(1 if ep.is_async or (self.inline.on_loop and not ep.batched) else 0)
        self._batcher: Batcher | None = None
        if ep.batched:
            self._batcher = Batcher(
                self._call_batch,
                ep.options.max_batch_size,
                ep.options.max_wait_ms / 1000,
                on_batch=metrics.batch_size.observe,
            )

    async def call(self, kwargs: dict[str, Any]) -> Any:
        if self._batcher is not None:
            return await self._batcher.submit(next(iter(kwargs.values())))
        if self._limit is None:
            return await self._call(kwargs)
        async with self._limit:
            return await self._call(kwargs)

    async def _call(self, kwargs: dict[str, Any]) -> Any:
        fn = self.ep.function
        if self.ep.streaming:  # creating the generator runs none of its code
            return fn(self._service, **kwargs)
        if self.ep.is_async:
            return await fn(self._service, **kwargs)
        if self.inline.on_loop:
            return self._call_on_loop(fn, kwargs)
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, self._service, **kwargs)
        result, seconds = await loop.run_in_executor(self._pool, _timed, call)
        self._observe(lambda: self.inline.observe_pool(seconds))
        return result

    def _call_on_loop(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """A sync handler measured to be cheap: no thread hop (see `kaon.serving.inline`).
        Timed in wall time (blocking) and in this thread's CPU time (cost, not preemption);
        a call over the wall-time limit also tells whether the thread waited in it."""
        start, cpu, waits = time.perf_counter(), time.thread_time(), voluntary_waits()
        try:
            return fn(self._service, **kwargs)
        finally:
            wall_s, cpu_s = time.perf_counter() - start, time.thread_time() - cpu
            waited = wall_s <= self.inline.limit_s or waits < 0 or voluntary_waits() > waits
            self._observe(lambda: self.inline.observe_loop(wall_s, cpu_s, waited))

    def _observe(self, observe: Callable[[], None]) -> None:
        moves = self.inline.moves
        observe()
        if self.inline.moves != moves:
            self.metrics.on_loop.set(1 if self.inline.on_loop else 0)
            self.metrics.moves.inc()

    async def _call_batch(self, items: list[Any]) -> list[Any]:
        fn = self.ep.function
        if self.ep.is_async:
            result = await fn(self._service, items)
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._pool, fn, self._service, items)
        return list(result)

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()


class ReplicaApp:
    """ASGI app serving one `Service`. Runs ``setup()`` in the background at startup.

    ``on_setup_failed`` is called (on the loop) after setup() raised; the runtime uses it to
    stop the process a little later, so the control plane sees a crash and restarts it.

    With ``key`` (the replica's credential, `kaon.core.replicas.ENV_REPLICA_KEY`), every
    request without it in `REPLICA_KEY_HEADER` is refused with 403, health and metrics
    included (the control plane's probes carry it too): only the gateway, which adds it,
    reaches the handlers. Without one (``kaon serve``) the replica is open.
    """

    def __init__(
        self,
        service: Service,
        *,
        title: str | None = None,
        threads: int = 32,
        on_setup_failed: Callable[[str], None] | None = None,
        key: str | None = None,
    ) -> None:
        self.service = service
        self._key = key.encode() if key else None
        self.title = title or type(service).__name__
        self.state = ReplicaStatus.STARTING
        self.reason = "setup() is running"
        self.setup_seconds: float | None = None
        self.metrics = ReplicaMetrics()
        self._on_setup_failed = on_setup_failed
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kaon-handler")
        self._endpoints = self._build_endpoints()
        self._runners: dict[tuple[str, str], _Runner] = {}
        self._setup_task: asyncio.Task[None] | None = None
        self._openapi: bytes | None = None
        self._builtins: dict[str, Callable[[], _Reply]] = {
            "/healthz": lambda: _Reply(200, b'{"status":"alive"}'),
            "/ready": self._ready,
            "/metrics": lambda: _Reply(200, self.metrics.render(), ((b"content-type", _TEXT),)),
            "/openapi.json": self._openapi_reply,
            "/docs": lambda: _Reply(200, docs_page(self.title), ((b"content-type", _HTML),)),
        }

    def _build_endpoints(self) -> dict[tuple[str, str], Endpoint]:
        endpoints: dict[tuple[str, str], Endpoint] = {}
        for name, (function, options) in handlers_of(self.service).items():
            ep = build_endpoint(name, function, options)
            if (ep.method, ep.path) in endpoints or ep.path in ("/healthz", "/ready", "/metrics"):
                raise ValueError(f"handler {name}: route {ep.method} {ep.path} is taken")
            endpoints[(ep.method, ep.path)] = ep
        if not endpoints:
            raise ValueError(f"{type(self.service).__name__} has no @kaon.handler methods")
        return endpoints

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    # --- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await asgi.lifespan(receive, send, self.startup, self.shutdown)

    async def _http(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["path"] == HELLO_PATH and self._key is not None:
            reply = self._hello(scope["headers"])
            await asgi.respond(send, reply.status, reply.body, extra=reply.extra)
            return
        if self._key is not None and not self._from_gateway(scope["headers"]):
            reply = _error(403, "this replica takes requests only from the gateway")
            await asgi.respond(send, reply.status, reply.body)
            return
        key = (scope["method"], scope["path"])
        runner = self._runners.get(key)
        if runner is None:
            runner = self._runner_for(key)
        if runner is not None:
            await self._serve(runner, scope, receive, send)
            return
        elif scope["method"] == "GET" and scope["path"] in self._builtins:
            reply = self._builtins[scope["path"]]()
        elif any(path == scope["path"] for _, path in self._endpoints):
            reply = _error(405, "method not allowed")
        else:
            reply = _error(404, f"no handler at {scope['path']}")
        await asgi.respond(send, reply.status, reply.body, extra=reply.extra)

    def _from_gateway(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the request carries this replica's credential, compared in constant
        time so that its timing tells a guesser nothing."""
        assert self._key is not None
        given = next((v for k, v in headers if k == _KEY_HEADER), b"")
        return hmac.compare_digest(given, self._key)

    def _hello(self, headers: list[tuple[bytes, bytes]]) -> _Reply:
        """The proof that this process holds the replica's credential, for the challenge
        the gateway or a probe sent (`kaon.core.replicas.HELLO_PATH`), before they send it
        the credential itself."""
        assert self._key is not None
        given = next((v for k, v in headers if k == _CHALLENGE_HEADER), b"")
        if not given or len(given) > MAX_CHALLENGE:
            return _error(
                400, f"{CHALLENGE_HEADER}: a challenge of 1 to {MAX_CHALLENGE} characters"
            )
        answer = proof(self._key.decode(), given.decode("latin-1"))
        return _Reply(200, b"{}", ((_PROOF_HEADER, answer.encode()),))

    def _runner_for(self, key: tuple[str, str]) -> _Runner | None:
        ep = self._endpoints.get(key)
        if ep is None:
            return None
        runner = _Runner(self, ep, self.metrics.handler(ep.name), self._pool)
        self._runners[key] = runner
        return runner

    async def _serve(
        self, runner: _Runner, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send
    ) -> None:
        if self.state is not ReplicaStatus.READY:
            reply = _error(503, f"replica not ready: {self.reason}", asgi.retry_after(1))
            await asgi.respond(send, reply.status, reply.body, extra=reply.extra)
            return
        metrics = runner.metrics
        start = time.perf_counter()
        metrics.in_flight.inc()
        try:
            reply = await self._handle(runner, scope, receive)
            if reply.stream is not None:
                status = await self._stream(runner, reply.stream, receive, send, start)
            else:
                status = reply.status
                await asgi.respond(send, status, reply.body, reply.content_type, reply.extra)
        finally:
            metrics.in_flight.dec()
        metrics.observe(status, time.perf_counter() - start)

    async def _handle(self, runner: _Runner, scope: asgi.Scope, receive: asgi.Receive) -> _Reply:
        ep = runner.ep
        try:
            if ep.raw is not None:
                body = await asgi.read_body(scope, receive, ep.options.max_body_bytes)
                request = _request(scope, body, receive)
                return await self._run(runner, {ep.raw: request}, scope)
            if ep.source == "query":
                parsed = ep.parse_query(dict(parse_qsl(scope["query_string"].decode())))
            else:
                parsed = ep.parse(await asgi.read_body(scope, receive, ep.options.max_body_bytes))
        except asgi.BodyTooLargeError:
            return _error(413, f"body over {ep.options.max_body_bytes} bytes")
        except ValidationError as exc:
            return _error(422, error_details(exc, ep.source))
        except asgi.ClientGoneError:
            return _error(499, "client disconnected")
        return await self._run(runner, ep.to_call(parsed), scope)

    async def _run(self, runner: _Runner, kwargs: dict[str, Any], scope: asgi.Scope) -> _Reply:
        timeout = runner.ep.options.timeout_s
        try:
            async with asyncio.timeout(timeout) as deadline:
                result = await runner.call(kwargs)
        except TimeoutError:
            if deadline.expired():
                return _error(504, f"handler {runner.ep.name} took over {timeout} s")
            return self._crash(runner.ep)
        except KaonError as exc:  # raised on purpose: its status (e.g. 422) and message
            return _error(exc.status_code, exc.message)
        except Exception:
            return self._crash(runner.ep)
        if isinstance(result, Response):
            return _response(result)
        if runner.ep.streaming:
            return _Reply(200, b"", stream=self._framing(runner.ep, result, scope))
        return self._dump(runner.ep, result)

    def _framing(self, ep: Endpoint, source: Any, scope: asgi.Scope) -> _Stream:
        """Server-sent events if the client asked for them, else an item per chunk."""
        encode = functools.partial(_encode_item, ep)
        if wants_events(asgi.header(scope, b"accept")):
            return _Stream(source, lambda item: sse_event(encode(item)), b"text/event-stream")
        if ep.reply_type is str:
            return _Stream(source, encode, b"text/plain; charset=utf-8")
        if ep.reply_type is bytes:
            return _Stream(source, encode, b"application/octet-stream")
        return _Stream(source, lambda item: _encode_line(ep, item), b"application/x-ndjson")

    async def _stream(
        self,
        runner: _Runner,
        stream: _Stream,
        receive: asgi.Receive,
        send: asgi.Send,
        start: float,
    ) -> int:
        """Stream `stream` until it ends or the client leaves, whichever comes first; the
        status sent (499 if the client left before the status line)."""
        writer = asyncio.create_task(self._write_stream(runner, stream, send, start))
        watcher = asyncio.create_task(_disconnect(receive))
        try:
            await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not writer.done():
                writer.cancel()  # the client left: stop pulling, close the generator
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return 499 if writer.cancelled() else writer.result()

    async def _write_stream(
        self, runner: _Runner, stream: _Stream, send: asgi.Send, start: float
    ) -> int:
        ep, metrics = runner.ep, runner.metrics
        pump = _Pump(stream.source, self._pool, ep.options.timeout_s)
        async with runner.stream_limit or contextlib.nullcontext():
            try:
                reply: _Reply | None = None
                try:
                    item = await pump.next()
                except TimeoutError:
                    reply = _error(504, f"handler {ep.name} took over {ep.options.timeout_s} s")
                except KaonError as exc:
                    reply = _error(exc.status_code, exc.message)
                except Exception:
                    reply = self._crash(ep)
                if reply is not None:
                    await asgi.respond(send, reply.status, reply.body, extra=reply.extra)
                    return reply.status
                headers = [(b"content-type", stream.media_type), *_STREAM_HEADERS, *stream.extra]
                await send({"type": "http.response.start", "status": stream.status,
                            "headers": headers})  # fmt: skip
                last = start
                while item is not _END:
                    now = time.perf_counter()
                    if last is start:
                        metrics.first_chunk.observe(now - start)
                    else:
                        metrics.chunk_gap.observe(now - last)
                    last = now
                    metrics.chunks.inc()
                    # waits while the client's socket is full: back-pressure on the generator
                    await send({"type": "http.response.body", "body": stream.frame(item),
                                "more_body": True})  # fmt: skip
                    try:
                        item = await pump.next()
                    except Exception as exc:
                        logger.error("stream of %s failed\n%s", ep.name, traceback.format_exc())
                        if stream.media_type == b"text/event-stream":
                            error = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
                            tail = b"event: error\n" + sse_event(error.encode())
                            await send({"type": "http.response.body", "body": tail,
                                        "more_body": True})  # fmt: skip
                        break
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return stream.status
            finally:
                await pump.close()

    def _crash(self, ep: Endpoint) -> _Reply:
        logger.error("handler %s raised\n%s", ep.name, traceback.format_exc())
        exc = sys.exception()
        return _error(500, f"handler {ep.name} raised {type(exc).__name__}: {exc}")

    def _dump(self, ep: Endpoint, result: Any) -> _Reply:
        try:
            return _Reply(200, ep.reply.dump_json(result, warnings="error"))
        except PydanticSerializationError:
            pass
        try:  # lax path: tuples, numpy scalars and the like, converted by validation
            return _Reply(200, ep.reply.dump_json(ep.reply.validate_python(result)))
        except (ValidationError, PydanticSerializationError) as exc:
            logger.error("handler %s returned a value that does not fit: %s", ep.name, exc)
            return _error(500, f"handler {ep.name} returned a value that does not fit its type")

    # --- built-in routes ----------------------------------------------------------------

    def _ready(self) -> _Reply:
        status = 200 if self.state is ReplicaStatus.READY else 503
        body = {"status": self.state.value, "reason": None if status == 200 else self.reason}
        return _Reply(status, json.dumps(body).encode())

    def _openapi_reply(self) -> _Reply:
        if self._openapi is None:
            doc = openapi_document(self.title, "1", self.endpoints)
            self._openapi = json.dumps(doc).encode()
        return _Reply(200, self._openapi)

    # --- lifecycle ----------------------------------------------------------------------

    async def startup(self) -> None:
        """Start setup() in the background: the port must open at once for /healthz."""
        self._setup_task = asyncio.create_task(self._run_setup(), name="kaon-setup")

    async def shutdown(self) -> None:
        for runner in self._runners.values():
            runner.close()
        if self._setup_task is not None and not self._setup_task.done():
            self._setup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._setup_task
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run_setup(self) -> None:
        start = time.perf_counter()
        try:
            setup = self.service.setup
            if asyncio.iscoroutinefunction(setup):
                await setup()
            else:
                await asyncio.get_running_loop().run_in_executor(self._pool, setup)
        except Exception as exc:
            self._fail(exc)
            return
        self.setup_seconds = time.perf_counter() - start
        self._become(ReplicaStatus.READY, "")
        logger.info("replica ready: setup() took %.3f s", self.setup_seconds)

    def _become(self, state: ReplicaStatus, reason: str) -> None:
        self.state.check_transition(state)
        self.state, self.reason = state, reason

    def _fail(self, exc: Exception) -> None:
        self._become(ReplicaStatus.FAILED, f"setup() raised {type(exc).__name__}: {exc}")
        print(f"kaon: {self.reason}\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        if self._on_setup_failed is not None:
            self._on_setup_failed(self.reason)


class _Pump:
    """Pulls items from a sync or async iterator: a sync one in the thread pool (its next
    item may take a model step), an async one on the loop. `close` closes the generator
    once no step of it is running."""

    def __init__(
        self,
        source: Iterator[Any] | AsyncIterator[Any],
        pool: ThreadPoolExecutor,
        timeout: float | None,
    ) -> None:
        self._source = source
        self._pool = pool
        self._timeout = timeout
        self._pending: asyncio.Future[Any] | None = None

    async def next(self) -> Any:
        source = self._source
        if isinstance(source, AsyncIterator):
            async with asyncio.timeout(self._timeout):
                return await anext(source, _END)
        loop = asyncio.get_running_loop()
        self._pending = loop.run_in_executor(self._pool, next, source, _END)
        async with asyncio.timeout(self._timeout):
            return await asyncio.shield(self._pending)

    async def close(self) -> None:
        source = self._source
        if isinstance(source, AsyncIterator):
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            return
        close = getattr(source, "close", None)
        if close is None:
            return
        pending = self._pending
        if pending is not None and not pending.done():  # a step is running in a thread
            await asyncio.wait([pending])
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            await loop.run_in_executor(self._pool, close)


async def _disconnect(receive: asgi.Receive) -> None:
    """Returns when the client has gone (the request body is already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _request(scope: asgi.Scope, body: bytes, receive: asgi.Receive) -> Request:
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    return Request(
        method=scope["method"],
        path=scope["path"],
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        body=body,
        disconnected=functools.partial(_disconnect, receive),
    )


def _response(result: Response) -> _Reply:
    extra = tuple((k.lower().encode(), v.encode()) for k, v in result.headers.items())
    media = result.media_type.encode()
    if result.stream is not None:
        return _Reply(result.status, b"", stream=_Stream(
            result.stream, _as_bytes, media, result.status, extra
        ))  # fmt: skip
    return _Reply(result.status, result.encoded_body(), extra, content_type=media)


def _as_bytes(item: Any) -> bytes:
    return item if isinstance(item, bytes) else str(item).encode()


def _encode_item(ep: Endpoint, item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return ep.reply.dump_json(item)


def _encode_line(ep: Endpoint, item: Any) -> bytes:
    if isinstance(item, bytes | str):
        return _encode_item(ep, item)
    return ep.reply.dump_json(item) + b"\n"
