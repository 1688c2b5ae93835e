"""The one exception tree of Pushbase, mapped once to the JSON error shape of the HTTP API.

    PushbaseError                 500  (a bug if it reaches a client)
    ├── Invalid                   422  bad input: a name, a type, a formula, a template
    │   └── BadRequest            400  the request itself is unreadable (malformed JSON, not UTF-8)
    ├── Unauthorized              401  missing or wrong API key
    ├── Forbidden                 403  the key lacks the scope
    ├── NotFound                  404
    ├── Conflict                  409  the name exists, or the object is in use
    ├── TooLarge                  413  the body is over the configured limit
    ├── Unsupported               415  a content type we do not read
    ├── TargetRefused             422  a URL to a private/loopback address while those are not allowed
    └── DatabaseUnavailable       503  the database cannot be opened or reached, or is locked

Each error carries a stable ``code`` (a word clients can match on), a human message and optional
``details`` (any JSON value: per-row errors, the closest field name, a position in a formula).
"""
from __future__ import annotations

from typing import Any

__all__ = [
    "PushbaseError",
    "Invalid",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "TooLarge",
    "Unsupported",
    "DatabaseUnavailable",
    "TargetRefused",
]


class PushbaseError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class Invalid(PushbaseError):
    status_code = 422
    code = "invalid"


class BadRequest(Invalid):
    status_code = 400
    code = "bad_request"


class Unauthorized(PushbaseError):
    status_code = 401
    code = "unauthorized"


class Forbidden(PushbaseError):
    status_code = 403
    code = "forbidden"


class NotFound(PushbaseError):
    status_code = 404
    code = "not_found"


class Conflict(PushbaseError):
    status_code = 409
    code = "conflict"


class TooLarge(PushbaseError):
    status_code = 413
    code = "too_large"


class Unsupported(PushbaseError):
    status_code = 415
    code = "unsupported_media_type"


class TargetRefused(Invalid):
    code = "target_refused"


class DatabaseUnavailable(PushbaseError):
    status_code = 503
    code = "database_unavailable"
