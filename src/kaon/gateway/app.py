"""The gateway: ``/{workspace}/{deployment}/{path}`` -> one ready replica of that deployment.

Deployment names are unique within a workspace, so a deployment's canonical path names
both. The short form ``/{deployment}/{path}`` works too: it means the deployment of that
name among those the caller may call (its token's, and public ones), when there is exactly
one; when there are several it is a 409 that says to use the canonical path. When
``/{a}/{b}`` is a deployment the caller may call, the canonical reading wins; otherwise the
short form. Either way the replica receives ``/{path}``. A deployment the caller may not
call is answered exactly like a missing one, so no path tells one workspace another's names.

Per request: find the route, check the bearer token (or none, for a public deployment),
read the body within the route's limit, take a replica slot (`DeploymentState.acquire`),
forward the request, give the slot back. Answers of its own:

=====  ==============================================================================
400    a path with a ``.`` or ``..`` segment (refused, never resolved)
401    no bearer token, or one that no deployment accepts (an unknown one only after a
       fresh route table was fetched for it, within `TOKEN_WAIT_S`)
       -- and ``/metrics`` without a token the gateway knows (it shows the series of the
       deployments that token may call; an instance admin's sees them all)
404    no such deployment, or the token may not call it (the two look the same)
409    the short form names deployments in several workspaces the caller may call
413    body over the route's ``max_body_bytes``
429    the deployment's queue is full, or the caller's address sent too many bad tokens
       (Retry-After; `kaon.core.ratelimit`)
502    the replica broke the connection after it had started to answer, or a retry failed
503    no replica slot within the wait limit, incl. the cold-start hold (Retry-After)
504    the replica did not answer within ``request_timeout_s``
=====  ==============================================================================

A request whose replica refused the connection, or dropped it before a byte of the answer
came back, is sent once more to another replica (the replica is skipped for a few seconds).
Deployment handlers are expected to be safe to run twice in that case, as model inference
is; one that is not should be idempotent by a request id of its own.

The bearer token is stripped before forwarding: replicas run user code and never see a
caller's credentials. Each replica's own credential (from the route table) is added
instead, and a client's header of that name is dropped, so only the gateway can speak to a
replica (`kaon.core.replicas.REPLICA_KEY_HEADER`).

Streamed replies (the replica answers with chunked transfer: a generator handler, server-
sent events) are forwarded chunk by chunk as they arrive, never gathered: the head as soon as
it is in, each chunk at once, with at most a bounded amount buffered (`kaon.gateway.upstream`)
and the replica held back by TCP while the client reads slowly. The replica slot is held until
the stream ends. Once the head has gone to the client nothing is retried: an error after that
ends the response early (no final chunk, so the client can tell it is cut short). A client
that leaves mid-stream closes the connection to the replica, which closes the generator.
``request_timeout_s`` bounds the wait for the head and then for each chunk.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kaon.core.gateway import GatewayReport, Route, RouteTable
from kaon.core.ratelimit import FailureLimiter
from kaon.core.replicas import REPLICA_KEY_HEADER
from kaon.core.tokens import hash_token
from kaon.gateway.routing import DeploymentState, NoReplicaError, QueueFullError, Replica
from kaon.gateway.sources import ReportSink, RouteSource, SupportsHurry, SupportsRefresh
from kaon.gateway.stats import GatewayMetrics, StreamTimer
from kaon.gateway.upstream import UpstreamError, UpstreamPool, UpstreamReply, UpstreamStream
from kaon.serving import asgi

__all__ = ["Gateway", "Incoming"]

logger = logging.getLogger("kaon.gateway")

_DROP_HEADERS = frozenset(
    {b"host", b"content-length", b"authorization", b"connection", b"keep-alive",
     b"transfer-encoding", b"te", b"upgrade", b"proxy-authorization", b"expect",
     b"x-forwarded-for", b"x-real-ip", b"forwarded",
     REPLICA_KEY_HEADER.encode()}
)  # fmt: skip
# A client's own forwarding headers are dropped, never trusted: the replica hears the
# peer address the gateway saw, in an X-Forwarded-For of the gateway's making.
_PREFIXES = {  # the segments that name the deployment, as sent: short form, canonical
    1: re.compile(rb"^/[^/?]*"),
    2: re.compile(rb"^/[^/?]*/[^/?]*"),
}
_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
_BEARER = (b"www-authenticate", b"Bearer")
TOKEN_WAIT_S = 1.0
"""How long a request with an unknown token waits for a fresh route table before its 401."""


class _Answer(Exception):
    """Stop handling and answer with this status and detail."""

    def __init__(self, status: int, detail: str, *extra: tuple[bytes, bytes]) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra

    def reply(self) -> UpstreamReply:
        body = json.dumps({"detail": self.detail}).encode()
        return UpstreamReply(self.status, [(b"content-type", asgi.JSON), *self.extra], body)


@dataclass
class Incoming:
    """One request, as far as the gateway cares; built by whichever server runs it."""

    method: str
    path: str  # percent-decoded, for the deployment name
    target: bytes  # path and query exactly as the client sent them
    headers: list[tuple[bytes, bytes]]  # names lowercase
    client: str | None = None
    started: float = field(default_factory=time.perf_counter)
    unverified: bytes | None = None  # a bearer the last table did not know: checked again
    skip: int = 1  # path segments that name the deployment: 1 short form, 2 canonical


class Gateway:
    """The gateway as an ASGI app. Starts its route source and report loop on startup."""

    def __init__(
        self,
        source: RouteSource,
        reports: ReportSink | None = None,
        *,
        gateway_id: str | None = None,
        report_interval_s: float = 1.0,
        failures: FailureLimiter | None = None,
    ) -> None:
        self.gateway_id = gateway_id or f"gw-{uuid.uuid4().hex[:8]}"
        self.deployments: dict[str, DeploymentState] = {}  # by `deployment_key`
        self._by_name: dict[str, tuple[DeploymentState, ...]] = {}  # for the short form
        self._workspaces: frozenset[str] = frozenset()  # their names: canonical paths
        self.metrics = GatewayMetrics()
        self.table = RouteTable()
        self._source = source
        self._reports = reports
        self._report_interval_s = report_interval_s
        self._tokens_by_prefix: dict[str, list[tuple[str, frozenset[str]]]] = {}
        self._metrics_tokens: frozenset[str] = frozenset()  # digests that see every series
        self._nowhere = DeploymentState(Route(name=""))  # see `_pending`
        # bad tokens per source address (`python -m kaon.gateway` sets it from the
        # environment; None: no limit, for a gateway embedded behind its own limiter)
        self.failures = failures
        self._pool = UpstreamPool()
        self._demand = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # --- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await asgi.lifespan(receive, send, self.startup, self.shutdown)

    async def _http(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        """The ASGI adapter (tests, other servers); `kaon.gateway.server` is the fast one."""
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        client = scope.get("client")
        req = Incoming(
            method=scope["method"],
            path=scope["path"],
            target=raw + b"?" + query if query else raw,
            headers=scope["headers"],
            client=client[0] if client else None,
        )
        admitted = self.admit(req)
        if isinstance(admitted, UpstreamReply):
            await _send_reply(send, admitted)
            return
        try:
            body = await asgi.read_body(scope, receive, admitted.route.max_body_bytes)
        except asgi.BodyTooLargeError:
            reply = self.too_large(admitted, req)
        except asgi.ClientGoneError:
            return
        else:
            reply = await self.forward(admitted, req, body)
            if reply.stream is not None:
                await self._send_stream(send, receive, admitted, req, reply, reply.stream)
                return
        await _send_reply(send, reply)

    async def _send_stream(
        self,
        send: asgi.Send,
        receive: asgi.Receive,
        state: DeploymentState,
        req: Incoming,
        reply: UpstreamReply,
        stream: UpstreamStream,
    ) -> None:
        """The ASGI way to stream (the server turns it into chunked transfer and waits
        while the client's socket is full). ASGI servers drop writes to a client that left
        without a word, so the connection is watched: a disconnect cancels the relay, which
        closes the replica's connection."""
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": reply.headers})  # fmt: skip

        async def write(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        relay = asyncio.create_task(self.relay(state, req, stream, write))
        watcher = asyncio.create_task(_disconnect(receive))
        try:
            await asyncio.wait({relay, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            relay.cancel()  # a no-op once it is done
            await asyncio.gather(relay, watcher, return_exceptions=True)
        if not relay.cancelled() and relay.exception() is None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def admit(self, req: Incoming) -> DeploymentState | UpstreamReply:
        """Before the body is read: the deployment this request may call, or the answer
        (built-in route, 401, 404). Refusing here means an unauthenticated caller never
        gets to send a body."""
        if req.path == "/healthz":
            return UpstreamReply(200, [(b"content-type", asgi.JSON)], b'{"status":"alive"}')
        if _dot_segment(req.path):
            return _Answer(400, "path: '.' and '..' segments are not allowed").reply()
        limiter = self.failures
        wait = limiter.retry_after(req.client, time.monotonic()) if limiter else None
        if wait is not None:
            detail = "too many failed authentications from this address"
            return _Answer(429, detail, asgi.retry_after(wait)).reply()
        try:
            if req.path == "/metrics":
                return self._metrics(req)
            state = self._authorize(req)
        except _Answer as answer:
            self._count_failure(req, answer.status)
            return answer.reply()
        if req.unverified is None:  # an unverified one counts once it is known
            self.metrics.arrived(state.key)
        return state

    def _metrics(self, req: Incoming) -> UpstreamReply:
        """Every deployment's load is not public, nor are the names in it: a token sees
        the series of the deployments it may call, an instance admin's sees all."""
        token = _bearer(req.headers)
        if token is None:
            raise _Answer(401, "missing bearer token", _BEARER)
        digest = hash_token(token)
        if digest in self._metrics_tokens:
            return UpstreamReply(200, [(b"content-type", _TEXT)], self.metrics.render())
        keys = self._allowed_digest(digest)
        if keys is None:
            raise _Answer(401, "invalid token", _BEARER)
        return UpstreamReply(200, [(b"content-type", _TEXT)], self.metrics.render(keys))

    def too_large(self, state: DeploymentState, req: Incoming) -> UpstreamReply:
        if req.unverified is not None:  # not worth a refresh of the route table
            self._count_failure(req, 401)
            return _Answer(401, "invalid token", _BEARER).reply()
        limit = state.route.max_body_bytes
        reply = _Answer(413, f"body over {limit} bytes").reply()
        self.metrics.answered(state.key, 413, time.perf_counter() - req.started)
        return reply

    async def forward(self, state: DeploymentState, req: Incoming, body: bytes) -> UpstreamReply:
        """Send the request to a replica of `state` and return its answer (or ours)."""
        if req.unverified is not None:
            try:
                state = await self._verify(req, req.unverified)
            except _Answer as answer:  # not the deployment's traffic: kept out of its load
                self._count_failure(req, answer.status)
                return answer.reply()
            self.metrics.arrived(state.key)
        try:
            reply = await self._forward(state, req, body)
        except _Answer as answer:
            reply = answer.reply()
        except Exception:  # a bug of ours: answer it like one, keep serving
            logger.exception("gateway failed on %s", req.path)
            reply = _Answer(500, "gateway error").reply()
        self.metrics.answered(state.key, reply.status, time.perf_counter() - req.started)
        return reply

    def _count_failure(self, req: Incoming, status: int) -> None:
        """A 401 counts against the caller's address (`kaon.core.ratelimit`)."""
        limiter = self.failures
        if status == 401 and limiter is not None and limiter.failed(req.client, time.monotonic()):
            logger.warning(
                "%d failed authentications from %s within %g s: refusing it for now",
                limiter.limit,
                req.client,
                limiter.window_s,
            )

    def _authorize(self, req: Incoming) -> DeploymentState:
        first, _, rest = req.path[1:].partition("/")
        token = _bearer(req.headers)
        allowed = None if token is None else self._allowed(token)
        state = self._resolve(req, first, rest, allowed)
        if state is not None:
            return state
        if token is None:
            raise _Answer(401, "missing bearer token", _BEARER)
        if allowed is None:
            if not isinstance(self._source, SupportsRefresh):
                raise _Answer(401, "invalid token", _BEARER)
            req.unverified = token  # perhaps made a moment ago: `forward` checks it again
            return self._pending(first, rest.partition("/")[0])
        raise _missing(first, rest)

    def _pending(self, first: str, second: str) -> DeploymentState:
        """Where a request with a token not known yet waits for its check (its body limit):
        a deployment the path names, or else one of no deployment. Either way the token is
        checked against a fresh table before anything is forwarded, so an unknown token
        waits as long for its 401 whether the path names a deployment or not, and the
        wait tells no one which names exist."""
        named = self._by_name.get(first)
        return self.deployments.get(f"{first}/{second}") or (named[0] if named else self._nowhere)

    def _resolve(
        self, req: Incoming, first: str, rest: str, allowed: frozenset[str] | None
    ) -> DeploymentState | None:
        """The deployment the path ``/{first}/{rest}`` names among those the caller may
        call (public ones, and those of `allowed`, the token's): canonically, when `first`
        is a workspace and the next segment one of its deployments, else ``/{first}`` in
        the short form; None when it names none of them. Sets `Incoming.skip` to 2 for a
        canonical path. Only a path that starts with a workspace's name costs the
        canonical lookup (a set's, per request; the rest is built per route table)."""
        if first in self._workspaces:
            state = self.deployments.get(f"{first}/{rest.partition('/')[0]}")
            if state is not None and (
                state.route.public or (allowed is not None and state.key in allowed)
            ):
                req.skip = 2
                return state
        named = self._by_name.get(first, ())
        if len(named) == 1:  # the usual case: the name is in one workspace
            state = named[0]
            if state.route.public or (allowed is not None and state.key in allowed):
                return state
            return None
        mine = [s for s in named if s.route.public or (allowed is not None and s.key in allowed)]
        if len(mine) > 1:
            raise _ambiguous(first, mine)
        return mine[0] if mine else None

    async def _verify(self, req: Incoming, token: bytes) -> DeploymentState:
        """A token the last route table did not know may have been created since (a
        deployment token a moment old): ask the source for a fresh table and resolve the
        path again, waiting at most `TOKEN_WAIT_S`. The source shares one fetch between all
        who wait and spaces them out, so a flood of bad tokens costs the control plane
        little; each bad token waits for that fetch before its 401."""
        assert isinstance(self._source, SupportsRefresh)
        await self._source.refresh(TOKEN_WAIT_S)
        allowed = self._allowed(token)
        if allowed is None:
            raise _Answer(401, "invalid token", _BEARER)
        first, _, rest = req.path[1:].partition("/")
        state = self._resolve(req, first, rest, allowed)
        if state is None:
            raise _missing(first, rest)
        return state

    def _allowed(self, token: bytes) -> frozenset[str] | None:
        """The deployments (keys) a token may call, or None for an unknown token."""
        return self._allowed_digest(hash_token(token))

    def _allowed_digest(self, digest: str) -> frozenset[str] | None:
        """Only digests are compared, never the secret: the caller cannot choose the
        digest of a guess, so timing tells nothing useful. Digests are bucketed by their
        first byte (a handful per bucket) and each candidate is checked with
        `hmac.compare_digest`."""
        for known, keys in self._tokens_by_prefix.get(digest[:2], ()):
            if hmac.compare_digest(known, digest):
                return keys
        return None

    async def _forward(self, state: DeploymentState, req: Incoming, body: bytes) -> UpstreamReply:
        target = _PREFIXES[req.skip].sub(b"", req.target, count=1) or b"/"
        if target[:1] == b"?":
            target = b"/" + target
        headers = _forward_headers(req)
        replica = await _acquire(state)
        held = True
        try:
            reply = await self._exchange(state, replica, req.method, target, headers, body)
            if reply.stream is not None:  # the slot is given back when the stream closes
                reply.stream.on_close(lambda _complete: state.release(replica))
                held = False
            return reply
        except UpstreamError as exc:
            if not exc.retry_safe:
                raise _Answer(502, str(exc)) from None
        finally:
            if held:
                state.release(replica)
        return await self._retry(state, replica, req.method, target, headers, body)

    async def _retry(
        self,
        state: DeploymentState,
        failed: Replica,
        method: str,
        target: bytes,
        headers: bytes,
        body: bytes,
    ) -> UpstreamReply:
        """Once more, on another replica with a free slot now; none -> 502."""
        other = state.pick(exclude=(failed,))
        if other is None:
            raise _Answer(502, "replica failed and no other replica is free")
        state.take(other)
        held = True
        try:
            reply = await self._exchange(state, other, method, target, headers, body)
            if reply.stream is not None:
                reply.stream.on_close(lambda _complete: state.release(other))
                held = False
            return reply
        except UpstreamError as exc:
            raise _Answer(502, str(exc)) from None
        finally:
            if held:
                state.release(other)

    async def _exchange(
        self,
        state: DeploymentState,
        replica: Replica,
        method: str,
        target: bytes,
        headers: bytes,
        body: bytes,
    ) -> UpstreamReply:
        timeout = state.route.request_timeout_s
        headers += replica.key_line
        try:
            return await self._pool.request(
                replica.host, replica.port, method, target, headers, body, timeout, replica.key
            )
        except TimeoutError:
            raise _Answer(504, f"replica did not answer within {timeout} s") from None
        except UpstreamError:
            state.eject(replica)
            self._pool.forget(replica.host, replica.port)
            raise

    async def relay(
        self,
        state: DeploymentState,
        req: Incoming,
        stream: UpstreamStream,
        write: Callable[[bytes], Awaitable[None]],
    ) -> bool:
        """Copy a streamed reply's body to the client, a chunk at a time, through `write`
        (which waits while the client is slow). True when the whole body went through;
        False when the replica broke off or went silent for ``request_timeout_s``. Always
        closes `stream`; cancelling this (the client left) closes the replica's connection."""
        timer = StreamTimer(self.metrics.streams(state.key), req.started)
        timeout = state.route.request_timeout_s
        try:
            while True:
                try:
                    chunk = await stream.next(timeout)
                except (UpstreamError, TimeoutError) as exc:
                    why = exc or f"no chunk within {timeout} s"
                    logger.warning("stream from %s broke off: %s", state.key, why)
                    return False
                if not chunk:
                    return True
                timer.chunk()
                if stream.buffered:  # more came meanwhile: one write, one wake-up, for all
                    parts = [chunk]
                    while more := stream.next_ready():
                        timer.chunk()
                        parts.append(more)
                    chunk = b"".join(parts)
                await write(chunk)
        finally:
            stream.close()

    # --- routes and reports -------------------------------------------------------------

    def apply(self, table: RouteTable) -> None:
        """Install a new route table (on the gateway's loop). Everything a request looks
        up is built here, once per table: deployments by key and by name, and the keys each
        token may call."""
        tokens: dict[str, set[str]] = {}
        fresh: dict[str, DeploymentState] = {}
        by_name: dict[str, list[DeploymentState]] = {}
        for route in table.routes:
            key = route.key
            state = self.deployments.get(key)
            if state is None:
                state = DeploymentState(route, on_demand=self._on_demand)
                self.metrics.attach(state)
            else:
                for gone in state.update(route):
                    self._pool.forget(gone.host, gone.port)
            fresh[key] = state
            by_name.setdefault(route.name, []).append(state)
            for digest in route.token_hashes:
                tokens.setdefault(digest, set()).add(key)
        for key, state in self.deployments.items():
            if key not in fresh:
                state.fail_waiters()
        self.deployments = fresh
        self._by_name = {name: tuple(states) for name, states in by_name.items()}
        self._workspaces = frozenset(r.workspace for r in table.routes if r.workspace)
        index: dict[str, list[tuple[str, frozenset[str]]]] = {}
        for digest, keys in tokens.items():
            index.setdefault(digest[:2], []).append((digest, frozenset(keys)))
        self._tokens_by_prefix = index
        self._metrics_tokens = frozenset(table.metrics_token_hashes)
        self.table = table

    def _on_demand(self, key: str) -> None:
        """A request is held for `key`, which has no ready replica: tell the control plane
        at once, and watch its route table closely until the replica shows up."""
        if not self._demand.is_set():  # once per report, not once per held request
            logger.info("request for %s, which has no ready replica: reporting demand", key)
        self._demand.set()
        if isinstance(self._source, SupportsHurry):
            self._source.hurry(self._holding)

    def _holding(self) -> bool:
        return any(state.waiting_for_replica for state in self.deployments.values())

    def report(self, reason: str = "periodic") -> GatewayReport:
        states = list(self.deployments.values())
        if reason == "demand":
            states = [s for s in states if s.waiting_for_replica]
        return GatewayReport(
            gateway_id=self.gateway_id,
            time=time.time(),
            window_s=self._report_interval_s,
            reason="demand" if reason == "demand" else "periodic",
            deployments=self.metrics.loads(states, reset=reason == "periodic"),
        )

    async def _report_loop(self) -> None:
        next_at = time.monotonic() + self._report_interval_s
        while True:
            try:
                async with asyncio.timeout(max(0.0, next_at - time.monotonic())):
                    await self._demand.wait()
                reason = "demand"
            except TimeoutError:
                reason = "periodic"
                next_at = time.monotonic() + self._report_interval_s
            self._demand.clear()
            await self._send_report(self.report(reason))

    async def _send_report(self, report: GatewayReport) -> None:
        if self._reports is None:
            return
        try:
            async with asyncio.timeout(2.0):
                await self._reports.send(report)
        except Exception as exc:  # the next report replaces this one
            logger.warning("cannot send gateway report: %s", exc)

    # --- lifecycle ----------------------------------------------------------------------

    async def startup(self) -> None:
        self._demand = asyncio.Event()  # bound to the serving loop
        self._tasks = [
            asyncio.create_task(self._run_source(), name="kaon-routes"),
            asyncio.create_task(self._report_loop(), name="kaon-report"),
        ]

    async def _run_source(self) -> None:
        while True:  # the source never ends on its own; if it crashes, start it again
            try:
                await self._source.run(self.apply)
            except Exception:
                logger.exception("route source failed; restarting it")
                await asyncio.sleep(1.0)

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.close()


async def _acquire(state: DeploymentState) -> Replica:
    try:
        return await state.acquire()
    except QueueFullError:
        raise _Answer(429, "too many requests queued", asgi.retry_after(1)) from None
    except NoReplicaError:
        raise _Answer(503, "no replica available in time", asgi.retry_after(5)) from None


async def _disconnect(receive: asgi.Receive) -> None:
    """Returns when the client has gone (the request body is already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _bearer(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    value = next((v for k, v in headers if k == b"authorization"), None)
    if value is None or value[:7].lower() != b"bearer ":
        return None
    token = value[7:].strip()
    return token or None


def _missing(first: str, rest: str) -> _Answer:
    """The 404 of a path ``/{first}/{rest}`` that names no deployment the caller may
    call: the same whether such a deployment is missing or another workspace's."""
    second = rest.partition("/")[0]
    named = f"{first!r} or {first}/{second}" if second else repr(first)
    return _Answer(404, f"no deployment named {named}")


def _ambiguous(name: str, states: list[DeploymentState]) -> _Answer:
    """The short form names a deployment in several workspaces the caller may call (only
    those are listed)."""
    where = ", ".join(sorted(s.route.workspace for s in states))
    return _Answer(
        409,
        f"deployment {name!r} is in several workspaces you may call ({where}): "
        f"use /{{workspace}}/{name}/... instead of /{name}/...",
    )


def _dot_segment(path: str) -> bool:
    """Whether a (percent-decoded) path holds a ``.`` or ``..`` segment. Such a path is
    refused rather than resolved: ``/a/../b`` names deployment ``a`` to the gateway and
    ``b`` to anything that resolves it later, and no deployment route needs one."""
    return any(seg in (".", "..") for seg in path.replace("\\", "/").split("/"))


def _forward_headers(req: Incoming) -> bytes:
    parts = [b"%s: %s\r\n" % (k, v) for k, v in req.headers if k not in _DROP_HEADERS]
    if req.client:
        parts.append(b"x-forwarded-for: %s\r\n" % req.client.encode())
    return b"".join(parts)


async def _send_reply(send: asgi.Send, reply: UpstreamReply) -> None:
    headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode())]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
