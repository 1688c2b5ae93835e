"""How a push's rows become request bodies, and how a view's rows are cut into batches.

=======  ==========================================  ==============================================
format   Content-Type                                body
=======  ==========================================  ==============================================
form     application/x-www-form-urlencoded           ``json=<the JSON array, percent-encoded>``:
                                                     one parameter, exactly as Agilebase sends it
json     application/json                            the JSON array of rows
ndjson   application/x-ndjson                        one JSON object per line, each ending in ``\\n``
=======  ==========================================  ==============================================

Each row is encoded once; a batch's size in bytes is then known exactly before the body is built,
so ``max_batch_bytes`` bounds the body as sent. A single row larger than the limit goes alone.
Rows are written by the pull API's JSON encoder (``rows.JSON``), so a pushed row is byte for byte the
row a pull of the view gives.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

from ..rows import JSON

__all__ = ["FORMATS", "content_type", "encode_row", "BatchCutter", "Batch", "encode_rows"]

FORMATS = ("form", "json", "ndjson")

_CONTENT_TYPES = {
    "form": "application/x-www-form-urlencoded",
    "json": "application/json",
    "ndjson": "application/x-ndjson",
}

# (before the first row, between rows, after the last row) for each format.
_FRAMES: dict[str, tuple[bytes, bytes, bytes]] = {
    "form": (b"json=" + quote_plus("[").encode(), quote_plus(",").encode(), quote_plus("]").encode()),
    "json": (b"[", b",", b"]"),
    "ndjson": (b"", b"", b""),
}


def content_type(fmt: str) -> str:
    return _CONTENT_TYPES[fmt]


def encode_row(fmt: str, row: dict[str, Any]) -> bytes:
    """One row's bytes as they appear in a body of ``fmt`` (percent-encoding is per character)."""
    data = JSON.encode(row)
    if fmt == "form":
        return quote_plus(data.decode("utf-8"), safe="").encode("ascii")
    if fmt == "ndjson":
        return data + b"\n"
    return data


def encode_rows(fmt: str, rows: Iterable[dict[str, Any]]) -> bytes:
    """A whole body (custom actions and tests use it; the engine goes through ``BatchCutter``)."""
    head, sep, tail = _FRAMES[fmt]
    return head + sep.join(encode_row(fmt, r) for r in rows) + tail


@dataclass
class Batch:
    body: bytes
    keys: list[list[int]]  # [[row _id, _modified marker], ...] in the order sent

    @property
    def rows(self) -> int:
        return len(self.keys)


@dataclass
class BatchCutter:
    """Feed rows in view order with ``add``, which returns a batch when one is full; then ``finish``."""

    fmt: str
    max_rows: int
    max_bytes: int
    _parts: list[bytes] = field(default_factory=list)
    _keys: list[list[int]] = field(default_factory=list)
    _size: int = 0

    def __post_init__(self) -> None:
        self._head, self._sep, self._tail = _FRAMES[self.fmt]
        self._frame = len(self._head) + len(self._tail)

    def add(self, row: dict[str, Any], marker: int) -> Batch | None:
        encoded = encode_row(self.fmt, row)
        grown = self._size + (len(self._sep) if self._parts else 0) + len(encoded)
        full = None
        if self._parts and (len(self._parts) >= self.max_rows or self._frame + grown > self.max_bytes):
            full = self._take()
            grown = len(encoded)
        self._parts.append(encoded)
        self._keys.append([int(row["_id"]), marker])
        self._size = grown
        return full

    def whole(self, rows: list[Any], keys: list[list[int]]) -> Batch | None:
        """All of ``rows`` (dicts, or the structs of ``RowEncoder.structs``; ``keys`` their
        ``[_id, marker]``) as one batch, encoded in one go, when they fit in one (else None: feed them
        to ``add``). The body is byte for byte what ``add`` would build: the encoder's array is the
        rows joined by commas, and percent-encoding is per character."""
        if self._parts or not rows or len(rows) > self.max_rows or self.fmt == "ndjson":
            return None
        data = JSON.encode(rows)
        body = b"json=" + quote_plus(data.decode("utf-8"), safe="").encode("ascii") if self.fmt == "form" else data
        if len(body) > self.max_bytes:
            return None
        return Batch(body, keys)

    def finish(self) -> Batch | None:
        return self._take() if self._parts else None

    def _take(self) -> Batch:
        batch = Batch(self._head + self._sep.join(self._parts) + self._tail, self._keys)
        self._parts, self._keys, self._size = [], [], 0
        return batch
