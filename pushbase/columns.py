"""Column types: what a sample's values become, which incoming values each type accepts, and names.

The seven types are ``string, integer, number, boolean, date, datetime, json``. A validator turns one
incoming JSON value into the canonical Python value of its type (``datetime.date``, an aware UTC
``datetime.datetime`` ...) or raises ``ValueError`` with the reason; the storage engines then encode
canonical values for their database (see ``pushbase.storage``).

Accepted coercions (everything else is refused, see docs/datasets.md):
- integer: JSON integers; floats with no fractional part (``3.0``). Not strings, not booleans.
- number: JSON integers and floats. Not strings, not booleans, not NaN/Infinity.
- boolean: JSON ``true``/``false`` only.
- string: JSON strings only (numbers are not turned into text silently).
- date: ISO 8601 ``YYYY-MM-DD`` strings.
- datetime: ISO 8601 strings with date and time; a missing offset means UTC; stored in UTC.
- json: any JSON value (arrays, objects, scalars).
- Text (and JSON) may not contain U+0000, which PostgreSQL cannot store; refused on both engines.
- ``null`` is accepted for every column except the unique identifier.
"""
from __future__ import annotations

import datetime as dt
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable


from .errors import Invalid

__all__ = [
    "COLUMN_TYPES",
    "SYSTEM_FIELDS",
    "Column",
    "columns_from_sample",
    "validate_column_name",
    "validate_object_name",
    "validator_for",
    "utc_now",
    "INT64_MIN",
    "INT64_MAX",
    "fits_int64",
    "MAX_JSON_DEPTH",
    "json_depth",
    "first_long_integer",
    "refuse_long_integers",
]

COLUMN_TYPES = ("string", "integer", "number", "boolean", "date", "datetime", "json")

# User-visible names of the system fields, as formulas write them, and their types.
SYSTEM_FIELDS = {
    "row id [auto]": "integer",
    "created [auto]": "datetime",
    "last modified [auto]": "datetime",
}

MAX_NAME_LENGTH = 120
_OBJECT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|z|[+-]\d{2}:?\d{2})?$")


@dataclass(frozen=True)
class Column:
    name: str
    type: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type}


def validate_object_name(name: object, kind: str) -> str:
    """Names of datasets, views, pushes, actions and tasks appear in URL paths: identifier-like only."""
    if not isinstance(name, str) or not _OBJECT_NAME.match(name):
        raise Invalid(
            f"{kind} name must start with a letter or underscore and hold only letters, digits and underscores (at most 63)",
            code="invalid_name",
            details={"name": name},
        )
    return name


def validate_column_name(name: object) -> str:
    """Column names are free text (spaces, dots, any letters) but not empty, not control characters,
    not braces (formulas write fields as {name}) and not the reserved '[auto]' suffix or '_id'."""
    if not isinstance(name, str) or not name.strip():
        raise Invalid("column name must be a non-empty string", code="invalid_name", details={"name": name})
    if len(name) > MAX_NAME_LENGTH:
        raise Invalid(f"column name is longer than {MAX_NAME_LENGTH} characters", code="invalid_name", details={"name": name[:200]})
    if name != name.strip() or any(ord(ch) < 32 or ch in "{}" for ch in name):
        raise Invalid("column name may not have leading/trailing spaces, control characters or braces", code="invalid_name", details={"name": name})
    if name.endswith("[auto]") or name == "_id":
        raise Invalid(f"column name {name!r} is reserved for system fields", code="invalid_name", details={"name": name})
    return name


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# ---------------------------------------------------------------------------------------------
# Sample inference


def _infer_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        if _DATE.match(value):
            try:
                dt.date.fromisoformat(value)
                return "date"
            except ValueError:
                return "string"
        if _DATETIME.match(value):
            try:
                parse_datetime(value)
                return "datetime"
            except ValueError:
                return "string"
        return "string"
    if value is None:
        return "string"
    return "json"


def columns_from_sample(sample: object) -> list[Column]:
    """A sample object's structure as columns: nested objects flatten to ``a.b.c``; arrays become json."""
    if not isinstance(sample, dict) or not sample:
        raise Invalid("sample must be a non-empty JSON object", code="invalid_sample")
    columns: list[Column] = []

    def walk(prefix: str, obj: dict[str, Any], depth: int) -> None:
        if depth > 16:
            raise Invalid("sample is nested deeper than 16 levels", code="invalid_sample")
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(name + ".", value, depth + 1)
            elif isinstance(value, (list, dict)):
                columns.append(Column(validate_column_name(name), "json"))
            elif type(value) is int and not fits_int64(value):
                raise Invalid(f"sample: {name!r} is an integer beyond 64 bits, which no column holds exactly; send it as a string",
                              code="invalid_sample", details={"column": name})
            else:
                columns.append(Column(validate_column_name(name), _infer_scalar(value)))

    walk("", sample, 0)
    seen: set[str] = set()
    for column in columns:
        if column.name in seen:  # {"a.b": 1, "a": {"b": 2}}: a key with a dot and a nested object
            raise Invalid(f"sample: column {column.name!r} comes twice once nested objects are flattened", code="invalid_sample",
                          details={"column": column.name})
        seen.add(column.name)
    return columns


def flatten_row(obj: dict[str, Any], nested: frozenset[str]) -> dict[str, Any]:
    """Flatten an incoming object like its sample was flattened: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``.

    ``nested`` holds the prefixes (``"a"``, ``"a.b"``) that the dataset's columns make into objects; any
    other key is kept as is, so json columns keep their objects whole."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key in nested and isinstance(value, dict):
            for sub_key, sub_value in flatten_row(value, _child_prefixes(nested, key)).items():
                out[f"{key}.{sub_key}"] = sub_value
        else:
            out[key] = value
    return out


def _child_prefixes(nested: frozenset[str], key: str) -> frozenset[str]:
    start = key + "."
    return frozenset(p[len(start):] for p in nested if p.startswith(start))


def nested_prefixes(columns: Iterable[Column]) -> frozenset[str]:
    prefixes: set[str] = set()
    for column in columns:
        parts = column.name.split(".")
        for i in range(1, len(parts)):
            prefixes.add(".".join(parts[:i]))
    return frozenset(prefixes)


# ---------------------------------------------------------------------------------------------
# Validators: incoming JSON value -> canonical Python value


def parse_datetime(value: str) -> dt.datetime:
    if not _DATETIME.match(value):
        raise ValueError("expected an ISO 8601 date-time such as 2024-05-01T12:30:00Z")
    text = value.replace("z", "Z")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python 3.11 reads at most microseconds; cut nanoseconds rather than refuse them.
    match = re.match(r"^(.*\.\d{6})\d+(.*)$", text)
    if match:
        text = match.group(1) + match.group(2)
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    try:
        return parsed.astimezone(dt.timezone.utc)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-14:00 is in year 10000 once in UTC
        raise ValueError("date-time out of range: it must fall in years 1 to 9999 once converted to UTC") from None


def _string(value: Any) -> str:
    if isinstance(value, str):
        if "\x00" in value:
            # PostgreSQL text cannot hold U+0000; refuse it on both engines alike.
            raise ValueError("text may not contain the NUL character (U+0000)")
        return value
    raise ValueError("expected a string")


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what an integer column (and an integer in a json value) holds


def fits_int64(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, int):
        if fits_int64(value):
            return value
        raise ValueError("integer out of the 64-bit range")
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    raise ValueError("expected an integer")


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    if isinstance(value, int):
        if abs(value) < 2**53:
            return value  # type: ignore[return-value]
        try:
            return float(value)  # a number is a 64-bit float: a long integer is read as the nearest one
        except OverflowError:
            raise ValueError("number out of range") from None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number")
        return value
    raise ValueError("expected a number")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("expected true or false")


def _date(value: Any) -> dt.date:
    if isinstance(value, str) and _DATE.match(value):
        return dt.date.fromisoformat(value)
    raise ValueError("expected an ISO 8601 date such as 2024-05-01")


def _datetime(value: Any) -> dt.datetime:
    if isinstance(value, str):
        return parse_datetime(value)
    raise ValueError("expected an ISO 8601 date-time such as 2024-05-01T12:30:00Z")


@dataclass(frozen=True)
class _JsonScan:
    depth: int  # levels of arrays and objects (0 for a scalar)
    long_integer: int | None  # the first integer beyond the 64-bit range
    nul: bool  # a text or a key holds U+0000


def _scan_json(value: Any) -> _JsonScan:
    """One walk over a JSON value for what a stored json value may not have."""
    deepest, long, nul = 0, None, False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is int:
            if long is None and not fits_int64(item):
                long = item
        elif kind is str:
            nul = nul or "\x00" in item
        elif kind is dict:
            deepest = max(deepest, depth)
            nul = nul or any("\x00" in key for key in item if type(key) is str)
            stack.extend((child, depth + 1) for child in item.values())
        elif kind is list:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return _JsonScan(deepest, long, nul)


def first_long_integer(value: Any) -> int | None:
    """The first integer in a JSON value beyond the 64-bit range, if any."""
    return _scan_json(value).long_integer


def refuse_long_integers(value: Any, *, code: str) -> None:
    """A 422 naming the first integer in ``value`` beyond the 64-bit range (stored as JSON it would
    come back as a float or not at all)."""
    long = first_long_integer(value)
    if long is not None:
        raise Invalid(f"integers must be within the 64-bit range; {long} is not (send it as a string)", code=code, details={"value": long})


# How deep a json value may nest. Rows, pages and push bodies wrap a value in a few more levels, and
# orjson writes at most 254: a limit well below that keeps every way out of the store open.
MAX_JSON_DEPTH = 200


def json_depth(value: Any) -> int:
    """Levels of arrays and objects in a JSON value (0 for a scalar)."""
    return _scan_json(value).depth


def _json(value: Any) -> Any:
    scan = _scan_json(value)
    if scan.depth > MAX_JSON_DEPTH:
        raise ValueError(f"a JSON value may nest at most {MAX_JSON_DEPTH} levels of arrays and objects")
    if scan.long_integer is not None:
        # Stored, it would come back as a float: refuse it rather than change it.
        raise ValueError(f"a JSON value may hold integers within the 64-bit range; {scan.long_integer} is not (send it as a string)")
    if scan.nul:
        raise ValueError("JSON text may not contain the NUL character (U+0000)")
    return value


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": _boolean,
    "date": _date,
    "datetime": _datetime,
    "json": _json,
}


def validator_for(column_type: str) -> Callable[[Any], Any]:
    return _VALIDATORS[column_type]


def parse_columns(raw: object) -> list[Column]:
    """An explicit column list from a request: ``[{"name": ..., "type": ...}]``."""
    if not isinstance(raw, list) or not raw:
        raise Invalid("columns must be a non-empty list of {name, type}", code="invalid_columns")
    columns: list[Column] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise Invalid(f"columns[{i}] must be an object with name and type", code="invalid_columns")
        name = validate_column_name(item.get("name"))
        column_type = item.get("type")
        if column_type not in COLUMN_TYPES:
            raise Invalid(
                f"column {name!r}: type must be one of {', '.join(COLUMN_TYPES)}",
                code="invalid_columns",
                details={"column": name, "type": column_type},
            )
        if name in seen:
            raise Invalid(f"column {name!r} is given twice", code="invalid_columns", details={"column": name})
        seen.add(name)
        columns.append(Column(name, column_type))
    return columns


_last_modification = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_modification_lock = threading.Lock()


def modification_time() -> dt.datetime:
    """Now, but strictly later than any earlier call in this process, so that every change to a row
    moves ``last modified [auto]`` forward even within one clock tick."""
    global _last_modification
    with _modification_lock:
        now = utc_now()
        if now <= _last_modification:
            now = _last_modification + dt.timedelta(microseconds=1)
        _last_modification = now
        return now
