"""Kaon's errors. The server maps each to one HTTP status in `server/app.py`; the SDK maps
HTTP statuses back to the same classes, so a caller catches the same error either side.

KaonError
 ├── InvalidSpecError        422  a spec or request field is wrong (names the field)
 ├── AuthError               401  missing, unknown or revoked token
 ├── PermissionDeniedError   403  the token may not do this (never for another workspace's
 │                                resources: those are NotFoundError)
 ├── NotFoundError           404  no such resource in a workspace this token can see
 ├── ConflictError           409  the resource exists, or is in a state that forbids this
 ├── PayloadTooLargeError    413  an upload over the limit
 ├── IllegalTransitionError  500  a bug: a state machine was asked for a move it forbids
 └── BackendError                 an executor could not do what was asked
      ├── TemporaryBackendError   worth retrying later
      └── PermanentBackendError   retrying will not help
"""

from __future__ import annotations


class KaonError(Exception):
    """Base of every error Kaon raises on purpose."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidSpecError(KaonError):
    """A spec or request is wrong. `field` is the dotted path of the offending field."""

    status_code = 422

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AuthError(KaonError):
    status_code = 401


class PermissionDeniedError(KaonError):
    status_code = 403


class NotFoundError(KaonError):
    status_code = 404


class ConflictError(KaonError):
    status_code = 409


class PayloadTooLargeError(KaonError):
    status_code = 413


class IllegalTransitionError(KaonError):
    status_code = 500


class BackendError(KaonError):
    """An executor failed to start, watch or stop something."""


class TemporaryBackendError(BackendError):
    """Worth retrying later."""

    status_code = 503


class PermanentBackendError(BackendError):
    """Retrying will not help."""
