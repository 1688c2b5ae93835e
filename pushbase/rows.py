"""Rows as clients see them: objects keyed by field name plus ``_id``, and cursor paging.

One decoder and one cursor format serve dataset rows and view rows alike ("same paging as views").
A cursor is opaque to clients: URL-safe base64 of a JSON list of the last row's sort values.
"""
from __future__ import annotations

import base64
from typing import Any, Callable, Sequence

import orjson

from .errors import BadRequest
from .storage import codecs

__all__ = ["encode_cursor", "decode_cursor", "RowDecoder", "MAX_PAGE", "DEFAULT_PAGE", "page_limit"]

DEFAULT_PAGE = 1000
MAX_PAGE = 10000


def encode_cursor(values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(values))).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, orjson.JSONDecodeError):
        raise BadRequest("the 'after' cursor is not one this server gave out", code="invalid_cursor") from None
    if not isinstance(values, list):
        raise BadRequest("the 'after' cursor is not one this server gave out", code="invalid_cursor")
    return values


def page_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_PAGE
    if limit < 1 or limit > MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}", code="invalid_limit")
    return limit


class RowDecoder:
    """Turns result tuples ``(_id, v1, v2 ...)`` into dicts, decoding each stored value by its type."""

    def __init__(self, dialect: str, fields: Sequence[tuple[str, str]]) -> None:
        self.names = ["_id", *[name for name, _ in fields]]
        decoders = [codecs.decoder(dialect, ftype) for _, ftype in fields]
        # Only the fields whose stored form differs from their JSON form are converted per row.
        self.converted: list[tuple[str, Callable[[Any], Any]]] = [
            (name, decode) for (name, _), decode in zip(fields, decoders) if decode is not codecs.identity
        ]

    def __call__(self, row: Sequence[Any]) -> dict[str, Any]:
        out = dict(zip(self.names, row))
        for name, decode in self.converted:
            value = out[name]
            if value is not None:
                out[name] = decode(value)
        return out
