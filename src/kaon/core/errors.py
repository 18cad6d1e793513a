"""Kaon's errors. The server maps each to one HTTP status in `server/app.py`; the SDK maps
HTTP statuses back to the same classes, so a caller catches the same error either side.

KaonError
 ├── InvalidSpecError        422  a spec or request field is wrong (names the field)
 ├── AuthError               401  missing, unknown or revoked token
 ├── PermissionDeniedError   403  the token may not do this (never for another workspace's
 │                                resources: those are NotFoundError)
 ├── NotFoundError           404  no such resource in a workspace this token can see
 ├── ConflictError           409  the resource exists, or is in a state that forbids this
 ├── PayloadTooLargeError    413  an upload over the limit (packed or unpacked)
 ├── LimitExceededError      429  a workspace is at one of the server's limits (names it);
 │                                retry once some of its work has finished
 ├── UnavailableError        503  the database is locked or unreachable; retry after
 │                                `retry_after_s`
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


class LimitExceededError(KaonError):
    """A workspace is at one of the server's limits (queued jobs); `limit` names the
    setting, so the message can say what an operator would raise."""

    status_code = 429

    def __init__(self, message: str, limit: str, retry_after_s: int = 30) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = retry_after_s


class UnavailableError(KaonError):
    """The control plane cannot do this now (its database is locked or unreachable), and
    says when to try again: nothing is wrong with the request."""

    status_code = 503

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class IllegalTransitionError(KaonError):
    status_code = 500


class BackendError(KaonError):
    """An executor failed to start, watch or stop something."""


class TemporaryBackendError(BackendError):
    """Worth retrying later."""

    status_code = 503


class PermanentBackendError(BackendError):
    """Retrying will not help."""
