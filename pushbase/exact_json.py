"""JSON that keeps what orjson cannot: integers beyond 64 bits (orjson reads them as floats and refuses
to write them) and nesting deeper than orjson's 254 levels, with orjson's speed everywhere else; and a
comparison of JSON values that tells ``true`` from ``1``.

Its own module, importing nothing of Pushbase's, so that the storage engines' JSON columns can use it
directly (the pull's ``rows`` module needs the storage package first)."""
from __future__ import annotations

from typing import Any

import msgspec
import orjson

__all__ = ["dumps_exact", "loads_exact", "may_hold_long_integers", "same_json"]

_ENCODER = msgspec.json.Encoder()
_SORTED = msgspec.json.Encoder(order="sorted")

# An integer beyond 64 bits has at least 19 digits; only then can orjson's reading (a float) differ.
# Every digit made a "0", a run of 19 digits is a plain substring search (a regex took ten times longer).
_DIGITS_AS_ZERO = bytes(48 if 48 <= i <= 57 else i for i in range(256))
_NINETEEN_DIGITS = b"0" * 19


def may_hold_long_integers(data: bytes | str) -> bool:
    """False when no integer in this JSON text can be beyond 64 bits (none has 19 digits)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")  # bytes.translate is many times faster than str's
    return _NINETEEN_DIGITS in data.translate(_DIGITS_AS_ZERO)


def dumps_exact(value: Any, option: int | None = None) -> bytes:
    """JSON like ``orjson.dumps`` (with ``option``), and where orjson cannot, msgspec: integers beyond
    64 bits, which ``loads_exact`` keeps, and nesting deeper than orjson's 254 levels. Anything else
    orjson refuses (bytes, sets, other types) stays an error, as with orjson."""
    try:
        return orjson.dumps(value, option=option)
    except TypeError as exc:
        if "64-bit" not in str(exc) and "Recursion limit" not in str(exc):
            raise
        out = _ENCODER.encode(value)
        # msgspec has no orjson options; indentation (the CLI's --json) is the one that shows.
        return msgspec.json.format(out, indent=2) if option and option & orjson.OPT_INDENT_2 else out


def loads_exact(data: bytes | str) -> Any:
    """Parse JSON from a client like ``orjson.loads`` (its errors and its depth limit), except that
    integers beyond 64 bits stay exact integers, where orjson reads them as floats: the checks can then
    name the value and refuse it, instead of something else being stored than was sent."""
    value = orjson.loads(data)
    if may_hold_long_integers(data):
        try:
            return msgspec.json.decode(data)
        except RecursionError:  # deeper than Python's recursion limit, within orjson's: keep orjson's
            return value
    return value


def same_json(a: Any, b: Any) -> bool:
    """Whether two JSON values are the same: object keys in any order, but ``true`` is not ``1`` and
    ``1.0`` is not ``1`` (Python's ``==`` says they are)."""
    return bool(_SORTED.encode(a) == _SORTED.encode(b))
