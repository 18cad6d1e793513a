"""The OpenAPI document of a service, built from the same adapters that validate requests,
so the docs cannot drift from what the replica accepts."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from kaon.serving.endpoint import Endpoint

__all__ = ["openapi_document", "docs_page"]

_REF = "#/components/schemas/{model}"
_ERROR = {"description": "see 'detail'", "content": {"application/json": {"schema": {}}}}


def openapi_document(title: str, version: str, endpoints: list[Endpoint]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for ep in endpoints:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _operation(ep: Endpoint, schemas: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": ep.name,
        "summary": (ep.function.__doc__ or ep.name).strip().splitlines()[0],
        "responses": {
            "200": {"description": "OK", "content": _content(ep, schemas)},
            "413": _ERROR,
            "422": _ERROR,
            "503": _ERROR,
            "504": _ERROR,
        },
    }
    if ep.body is not None and ep.source == "body":
        op["requestBody"] = {"required": True, "content": _json(_schema(ep.body, schemas))}
    return op


def _schema(adapter: TypeAdapter[Any], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = adapter.json_schema(ref_template=_REF)
    schemas.update(schema.pop("$defs", {}))
    if "title" in schema and schema.get("type") == "object" and "properties" in schema:
        name = schema["title"]
        schemas[name] = schema
        return {"$ref": _REF.format(model=name)}
    return schema


def _content(ep: Endpoint, schemas: dict[str, Any]) -> dict[str, Any]:
    """A streamed handler's schema is that of one item, sent as an event or a line."""
    item = _schema(ep.reply, schemas)
    if not ep.streaming:
        return _json(item)
    return {"text/event-stream": {"schema": item}, "application/x-ndjson": {"schema": item}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def docs_page(title: str) -> bytes:
    """Swagger UI for ``/openapi.json`` (the page loads its scripts from a CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    return bytes(get_swagger_ui_html(openapi_url="/openapi.json", title=title).body)
