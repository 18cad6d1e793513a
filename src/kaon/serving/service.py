"""The Service SDK: a class whose typed methods become HTTP endpoints of a replica.

```python
import kaon


class Classifier(kaon.Service):
    def setup(self) -> None:  # once per replica, before it reports ready
        self.model = load_weights()

    @kaon.handler
    def predict(self, x: list[list[float]]) -> list[float]:
        return self.model(x)
```

``POST /predict`` with body ``{"x": [[0.5, -1.0]]}`` calls ``predict``. The parameters'
type hints define the JSON body (one field per parameter; a single parameter typed as a
Pydantic model *is* the body), the return hint defines the response. Validation and
serialization use Pydantic adapters built once, when the replica starts.

``def`` handlers run in a thread pool, so a slow model does not stall the event loop, unless
they are measured to be cheaper than the hop to a thread (then on the loop, see
`kaon.serving.inline`); ``async def`` handlers run on the loop. With ``max_batch_size > 1``
the handler is called with a list of requests and returns a list of responses, one per
request, in order: its one parameter is typed ``list[T]``, and each request body carries
one ``T``.

Nothing here imports the web stack, so ``import kaon`` stays cheap inside user code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

__all__ = ["HandlerOptions", "Service", "handler", "handlers_of"]

F = TypeVar("F", bound=Callable[..., Any])

_ATTR = "__kaon_handler__"
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class HandlerOptions:
    """How one handler is exposed. See `handler` for the meaning of each field."""

    method: str = "POST"
    path: str | None = None
    max_batch_size: int = 1
    max_wait_ms: float = 5.0
    max_concurrency: int | None = None
    timeout_s: float | None = None
    max_body_bytes: int = 10 * 2**20
    run_inline: bool | None = None

    def __post_init__(self) -> None:
        if self.method.upper() not in _METHODS:
            raise ValueError(f"method must be one of {sorted(_METHODS)}, got {self.method!r}")
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")


@overload
def handler(func: F, /) -> F: ...


@overload
def handler(
    *,
    method: str = "POST",
    path: str | None = None,
    max_batch_size: int = 1,
    max_wait_ms: float = 5.0,
    max_concurrency: int | None = None,
    timeout_s: float | None = None,
    max_body_bytes: int = 10 * 2**20,
    run_inline: bool | None = None,
) -> Callable[[F], F]: ...


def handler(
    func: F | None = None,
    /,
    *,
    method: str = "POST",
    path: str | None = None,
    max_batch_size: int = 1,
    max_wait_ms: float = 5.0,
    max_concurrency: int | None = None,
    timeout_s: float | None = None,
    max_body_bytes: int = 10 * 2**20,
    run_inline: bool | None = None,
) -> F | Callable[[F], F]:
    """Mark a method of a `Service` as an HTTP endpoint.

    - ``method``/``path``: the route; the path defaults to ``/<method name>``.
    - ``max_batch_size``/``max_wait_ms``: dynamic batching. Requests that arrive within
      ``max_wait_ms`` of the first are handed over together, up to ``max_batch_size``.
    - ``max_concurrency``: at most this many calls run at once; the rest wait their turn.
    - ``timeout_s``: the caller gets 504 after this long (a thread already running a sync
      handler cannot be stopped and finishes in the background).
    - ``max_body_bytes``: larger bodies get 413 before anything is parsed.
    - ``run_inline`` (``def`` handlers): None (the default) measures each call and runs the
      handler on the event loop while it is cheap (a median under 200 µs, a p99 of CPU
      time under 1 ms), in the thread pool otherwise (`kaon.serving.inline`); False:
      always in the pool (a handler that must never run on the loop's thread); True:
      always on the loop.
    """
    options = HandlerOptions(
        method=method.upper(),
        path=path,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_concurrency=max_concurrency,
        timeout_s=timeout_s,
        max_body_bytes=max_body_bytes,
        run_inline=run_inline,
    )

    def mark(fn: F) -> F:
        setattr(fn, _ATTR, options)
        return fn

    return mark(func) if func is not None else mark


class Service:
    """Base class of everything a deployment serves.

    Subclasses load their model in `setup` (not ``__init__``): the replica opens its port
    first, answers ``/healthz`` at once and ``/ready`` with 503 until `setup` returns, so
    the control plane can tell a slow start from a dead one.
    """

    def setup(self) -> None:
        """Load weights and warm up. Runs once per replica, in a worker thread."""


def handlers_of(service: Service) -> dict[str, tuple[Callable[..., Any], HandlerOptions]]:
    """The handlers of an instance: method name -> (function of the class, options)."""
    found: dict[str, tuple[Callable[..., Any], HandlerOptions]] = {}
    for klass in reversed(type(service).__mro__):
        for name, value in vars(klass).items():
            options = getattr(value, _ATTR, None)
            if isinstance(options, HandlerOptions):
                found[name] = (value, options)
            elif name in found:  # overridden without the decorator: no longer a handler
                del found[name]
    return found
