"""The one place that knows HTTP status codes: Kaon's errors and request validation
errors become JSON answers that name the offending field.

Errors of the database itself are sorted here too, so none becomes a plain-text 500: a
value the database cannot store (a NUL in a string, a number past its column) is the
request's fault (422), and a locked, unreachable or overloaded database is nobody's, so
the answer is 503 with ``Retry-After``; `db_unavailable` tells the two apart.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from kaon.core.errors import (
    InvalidSpecError,
    KaonError,
    LimitExceededError,
    UnavailableError,
)
from kaon.server.db.session import db_unavailable


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KaonError)
    async def _kaon_error(request: Request, exc: KaonError) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.message, "error": type(exc).__name__}
        headers: dict[str, str] = {}
        if isinstance(exc, InvalidSpecError) and exc.field:
            body["field"] = exc.field
        if isinstance(exc, LimitExceededError):
            body["limit"] = exc.limit
        if isinstance(exc, LimitExceededError | UnavailableError):
            headers["Retry-After"] = str(exc.retry_after_s)
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(body, status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        unavailable = db_unavailable(exc)
        if unavailable is not None:
            return await _kaon_error(request, unavailable)
        if _is_bad_value(exc):
            problem = InvalidSpecError(
                "a value in the request cannot be stored (a NUL character, or a number too "
                "large for the database)"
            )
            return await _kaon_error(request, problem)
        raise exc

    @app.exception_handler(PoolTimeout)
    async def _pool_timeout(request: Request, exc: PoolTimeout) -> JSONResponse:
        """Every connection of the pool is busy (or none can be made) for too long."""
        return await _kaon_error(request, UnavailableError("the database is busy; try again"))

    @app.exception_handler(ConnectionError)
    async def _unreachable(request: Request, exc: ConnectionError) -> JSONResponse:
        """A driver that could not connect at all (PostgreSQL down: connection refused)."""
        problem = UnavailableError(f"the database cannot be reached: {exc}")
        return await _kaon_error(request, problem)

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


def _is_bad_value(exc: DBAPIError) -> bool:
    """Errors the request's values caused: SQLSTATE class 22 (data exception) on
    PostgreSQL, or a driver that refused a value before sending it."""
    if isinstance(exc, DataError):
        return True
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if isinstance(code, str) and code.startswith("22"):
        return True
    text = str(exc.orig)
    return "invalid byte sequence" in text or "too large to convert" in text


def _error_field(error: Any) -> str:
    """The dotted path of the offending field, or "body" for the body as a whole (malformed
    JSON, whose location ends in a character offset, or a body that is not an object)."""
    if error["type"] == "json_invalid":
        return "body"
    return ".".join(str(p) for p in error["loc"] if p != "body") or "body"
