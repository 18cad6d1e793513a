"""From a handler's signature to the adapters that parse its requests and write its replies.

Everything expensive (reading type hints, building Pydantic models and adapters) happens
once, when the replica starts; a request only runs the adapters' compiled validators.

Body rules, in order:

1. One parameter typed as a Pydantic model: the body *is* that model.
2. Otherwise the body is an object with one field per parameter, named like it, required
   unless the parameter has a default (``def predict(self, x: list[float])`` takes
   ``{"x": [...]}``).

Unknown fields at the top of the body are refused either way, so a typo fails loudly.
Under rule 1 the model may opt in to them by setting ``extra`` itself (``model_config =
ConfigDict(extra="allow")``). One that leaves it unset, where Pydantic's default would
drop them without a word, is validated through a subclass that forbids them; the handler
still gets an instance of its own class. Models nested deeper follow their own ``extra``.

A GET handler takes the same fields from the query string instead. A 422 names the field
as FastAPI does: ``loc`` starts with ``"body"``, or ``"query"`` for a GET handler.

A batched handler (``max_batch_size > 1``) has exactly one parameter typed ``list[T]`` and
returns ``list[R]``; the rules above apply to ``T`` for one request, and each reply is ``R``.

A generator handler (``Iterator[R]``, ``AsyncIterator[R]`` and the like) streams its items;
each item is ``R`` (see `kaon.serving.streaming`). A handler whose one parameter is typed
`kaon.serving.streaming.Request` gets the raw request and parses it itself.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, RootModel, TypeAdapter, ValidationError, create_model

from kaon.serving.service import HandlerOptions
from kaon.serving.streaming import Request, Response

__all__ = ["Endpoint", "build_endpoint", "error_details"]


@dataclass(frozen=True)
class Endpoint:
    """A handler, ready to serve: how to parse a body, call the function, write the reply.

    ``body`` is None for handlers without parameters (no body is read). ``source`` is where
    the arguments come from: the query string for GET, else the JSON body.
    ``to_call`` turns one parsed body into the argument(s) of the function: a dict of
    keyword arguments, or for a batched handler the single item it gets in its list.
    """

    name: str
    method: str
    path: str
    options: HandlerOptions
    function: Callable[..., Any]
    is_async: bool
    body: TypeAdapter[Any] | None
    reply: TypeAdapter[Any]
    to_call: Callable[[Any], Any]
    request_schema: type[BaseModel] | None
    reply_type: Any
    source: Literal["query", "body"]
    streaming: bool = False  # a generator: its items are streamed
    raw: str | None = None  # the name of its one `Request` parameter, if it takes one

    @property
    def batched(self) -> bool:
        return self.options.max_batch_size > 1

    def parse(self, raw: bytes) -> Any:
        """The parsed body; raises `ValidationError` for malformed JSON or wrong types."""
        if self.body is None:
            return {}
        return self.body.validate_json(raw or b"{}")

    def parse_query(self, query: dict[str, str]) -> Any:
        """For GET handlers: the query string, validated in lax mode ("3" -> 3)."""
        if self.body is None:
            return {}
        return self.body.validate_python(query)


def build_endpoint(name: str, function: Callable[..., Any], options: HandlerOptions) -> Endpoint:
    """Inspect `function` (a method of a Service class) and build its endpoint."""
    hints = typing.get_type_hints(function)
    params = _parameters(name, function)
    reply_type = hints.get("return", Any)
    if reply_type is Response:  # the handler writes its own reply
        reply_type = Any
    streaming = inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function)
    if streaming:
        if options.max_batch_size > 1:
            raise TypeError(f"handler {name}: a generator cannot be batched")
        reply_type = _item_type(reply_type)
    if options.max_batch_size > 1:
        params, reply_type = _unbatch(name, params, hints, reply_type)
    raw = None
    model: type[BaseModel] | None
    to_call: Callable[[Any], Any]
    if len(params) == 1 and hints.get(params[0].name) is Request:
        raw, model, to_call = params[0].name, None, lambda _body: {}
    else:
        model, to_call = _request_model(name, params, hints)
    return Endpoint(
        name=name,
        method=options.method,
        path=options.path or f"/{name}",
        options=options,
        function=function,
        is_async=inspect.iscoroutinefunction(function),
        body=TypeAdapter(model) if model is not None else None,
        reply=TypeAdapter(reply_type),
        to_call=to_call,
        request_schema=model,
        reply_type=reply_type,
        source="query" if options.method == "GET" else "body",
        streaming=streaming,
        raw=raw,
    )


_STREAMS = {
    collections.abc.Iterator, collections.abc.Iterable, collections.abc.Generator,
    collections.abc.AsyncIterator, collections.abc.AsyncIterable, collections.abc.AsyncGenerator,
}  # fmt: skip


def _item_type(reply_type: Any) -> Any:
    """``Iterator[R]``, ``AsyncGenerator[R, None]`` and the like -> R; unannotated -> Any."""
    if typing.get_origin(reply_type) in _STREAMS:
        args = typing.get_args(reply_type)
        return args[0] if args else Any
    return Any


def _parameters(name: str, function: Callable[..., Any]) -> list[inspect.Parameter]:
    params = list(inspect.signature(function).parameters.values())[1:]  # drop self
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise TypeError(f"handler {name}: parameter {p.name!r} must be a plain parameter")
    return params


def _unbatch(
    name: str, params: list[inspect.Parameter], hints: dict[str, Any], reply_type: Any
) -> tuple[list[inspect.Parameter], Any]:
    """For a batched handler ``f(self, x: list[T]) -> list[R]``: one request is T, one reply R."""
    if len(params) != 1 or typing.get_origin(hints.get(params[0].name)) is not list:
        raise TypeError(f"batched handler {name} must take one parameter typed list[T]")
    item = typing.get_args(hints[params[0].name])[0]
    hints[params[0].name] = item
    if typing.get_origin(reply_type) is list:
        return params, typing.get_args(reply_type)[0]
    if reply_type is Any:
        return params, Any
    raise TypeError(f"batched handler {name} must return list[R]")


def _request_model(
    name: str, params: list[inspect.Parameter], hints: dict[str, Any]
) -> tuple[type[BaseModel] | None, Callable[[Any], Any]]:
    if not params:
        return None, lambda _body: {}
    first = hints.get(params[0].name, Any)
    if len(params) == 1 and isinstance(first, type) and issubclass(first, BaseModel):
        pname = params[0].name
        strict = _refusing_unknown_fields(first)
        if strict is first:
            return first, lambda body: {pname: body}
        return strict, lambda body: {pname: _as_declared(body, strict, first)}
    fields: dict[str, Any] = {
        p.name: (hints.get(p.name, Any), ... if p.default is p.empty else p.default)
        for p in params
    }
    model = create_model(f"{_camel(name)}Request", __config__=ConfigDict(extra="forbid"), **fields)
    names = tuple(fields)
    return model, lambda body: {n: getattr(body, n) for n in names}


def _refusing_unknown_fields(model: type[BaseModel]) -> type[BaseModel]:
    """`model` if it sets ``extra`` itself, else a subclass of it that forbids unknown fields.

    The subclass keeps the name (it is what error messages and /openapi.json show) and adds
    no slots, so an instance of it can become an instance of `model` (`_as_declared`).
    """
    if "extra" in model.model_config or issubclass(model, RootModel):
        return model
    namespace = {
        "__slots__": (),
        "__module__": model.__module__,
        "__qualname__": model.__qualname__,
        "model_config": ConfigDict(extra="forbid"),
    }
    return types.new_class(model.__name__, (model,), exec_body=lambda ns: ns.update(namespace))


def _as_declared(value: Any, strict: type[BaseModel], model: type[BaseModel]) -> Any:
    """The handler gets the class it declared (``type(p) is Point``, ``p == Point(...)``),
    not the subclass that validated it. Same layout, so only ``__class__`` changes; a value
    that a validator of the model replaced by another object is left alone."""
    if type(value) is strict:
        object.__setattr__(value, "__class__", model)  # BaseModel.__setattr__ refuses it
    return value


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def error_details(exc: ValidationError, source: str) -> list[dict[str, Any]]:
    """Pydantic's errors in FastAPI's shape: ``loc`` starts with `source` (``"body"`` or
    ``"query"``, an `Endpoint`'s ``source``), then the field."""
    return [
        {"loc": [source, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
