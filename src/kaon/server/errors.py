"""The one place that knows HTTP status codes: Kaon's errors and request validation
errors become JSON answers that name the offending field."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from kaon.core.errors import InvalidSpecError, KaonError


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KaonError)
    async def _kaon_error(request: Request, exc: KaonError) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.message, "error": type(exc).__name__}
        if isinstance(exc, InvalidSpecError) and exc.field:
            body["field"] = exc.field
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        fields = [_error_field(e) for e in errors]
        message = "; ".join(
            f"{f or 'body'}: {e['msg']}" for f, e in zip(fields, errors, strict=True)
        )
        return JSONResponse(
            {
                "detail": message,
                "error": "InvalidSpecError",
                "field": fields[0] if fields else None,
                "errors": [
                    {"field": f, "message": e["msg"]} for f, e in zip(fields, errors, strict=True)
                ],
            },
            status_code=422,
        )


def _error_field(error: Any) -> str:
    """The dotted path of the offending field, or "body" for the body as a whole (malformed
    JSON, whose location ends in a character offset, or a body that is not an object)."""
    if error["type"] == "json_invalid":
        return "body"
    return ".".join(str(p) for p in error["loc"] if p != "body") or "body"
