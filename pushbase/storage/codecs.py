"""How each column type is stored by each engine, and how stored values come back as JSON values.

=========  ===============================  ==========================
type       SQLite                           PostgreSQL
=========  ===============================  ==========================
string     TEXT                             text
integer    INTEGER                          bigint
number     REAL                             double precision
boolean    INTEGER 0/1                      boolean
date       TEXT 'YYYY-MM-DD'                date
datetime   INTEGER microseconds since the   timestamptz
           Unix epoch, UTC (exact, ordered,
           cheap to compare and index)
json       TEXT (JSON)                      jsonb
=========  ===============================  ==========================

Encoders take the canonical Python value (see ``pushbase.columns``) and return what the DBAPI gets;
decoders take what the DBAPI returns and give a JSON-ready value (datetimes as ISO 8601 with ``Z``);
both take ``None`` too, and give it back.
``output_sql`` does the same conversions inside the database, for the pull API's hot path: there a
conversion in SQL costs a fraction of a Python call per value.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Callable

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = ["sql_type", "encoder", "decoder", "output_sql", "identity", "json_text", "micros_to_datetime", "datetime_to_micros", "iso"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def datetime_to_micros(value: dt.datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def micros_to_datetime(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=value)


_EPOCH_NAIVE = dt.datetime(1970, 1, 1)


def iso(value: dt.datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` and always microseconds, so text order is time order."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds") + "Z"


def sql_type(dialect: str, column_type: str) -> sa.types.TypeEngine[Any]:
    if dialect == "sqlite":
        return {
            "string": sa.Text(),
            "integer": sa.BigInteger(),
            "number": sa.Float(),
            "boolean": sa.Integer(),
            "date": sa.Text(),
            "datetime": sa.BigInteger(),
            "json": sa.Text(),
        }[column_type]
    return {
        "string": sa.Text(),
        "integer": sa.BigInteger(),
        "number": sa.Float(precision=53),
        "boolean": sa.Boolean(),
        "date": sa.Date(),
        "datetime": sa.DateTime(timezone=True),
        "json": postgresql.JSONB(none_as_null=True),
    }[column_type]


def identity(value: Any) -> Any:
    return value


def json_text(value: Any) -> Any:
    """A dataset json value as its JSON text (None stays None). Dataset values hold no integers beyond
    64 bits (refused when loaded), so orjson writes every one."""
    return None if value is None else orjson.dumps(value).decode()


class _Lookup(dict):  # type: ignore[type-arg]
    """A conversion as a dict lookup: ``map(table.__getitem__, values)`` runs it in C, at a fraction of a
    Python function's call per value (these run for every value of every load and pull). A value not
    in the table goes through ``miss``; with ``remember``, its result is kept, up to ``bound`` entries
    (never cleared, so that lookups from other threads never see the table emptied)."""

    def __init__(self, table: dict[Any, Any], miss: Callable[[Any], Any], *, remember: bool = False, bound: int = 50_000) -> None:
        super().__init__(table)
        self._miss = miss
        self._remember = remember
        self._bound = bound

    def __missing__(self, value: Any) -> Any:
        result = self._miss(value)
        if self._remember and len(self) < self._bound:
            self[value] = result
        return result


# SQLite: booleans bound as exact ints (Python's sqlite3 sent each bool through its adaptation lookup,
# which raised and cleared two AttributeErrors per value); each distinct date formatted once (a
# dataset's dates repeat: days, not instants).
_bool_int = _Lookup({True: 1, False: 0, None: None}, int).__getitem__
_date_text = _Lookup({None: None}, lambda day: day.isoformat(), remember=True).__getitem__


def _dt_micros(value: Any) -> Any:
    return None if value is None else datetime_to_micros(value)


def encoder(dialect: str, column_type: str) -> Callable[[Any], Any]:
    if dialect == "sqlite":
        return {"boolean": _bool_int, "date": _date_text, "datetime": _dt_micros, "json": json_text}.get(column_type, identity)
    return identity


def _dec_json_text(value: Any) -> Any:
    return None if value is None else orjson.loads(value)


# Not 0 or 1 (a boolean calculation's result, say): truthiness, as SQLite's.
_dec_bool = _Lookup({0: False, 1: True, None: None}, bool).__getitem__


def _dec_micros(value: Any) -> Any:
    # Hot on every pull of a datetime column: build the naive UTC datetime directly.
    return None if value is None else (_EPOCH_NAIVE + dt.timedelta(microseconds=int(value))).isoformat(timespec="microseconds") + "Z"


def _dec_datetime(value: Any) -> Any:
    return None if value is None else iso(value)


def _dec_date(value: Any) -> Any:
    return None if value is None else (value if isinstance(value, str) else value.isoformat())


def decoder(dialect: str, column_type: str) -> Callable[[Any], Any]:
    if dialect == "sqlite":
        return {
            "boolean": _dec_bool,
            "datetime": _dec_micros,
            "json": _dec_json_text,
        }.get(column_type, identity)
    return {"datetime": _dec_datetime, "date": _dec_date}.get(column_type, identity)


# SQL constants (never user text), as literal SQL so that the statements have no extra parameters.
_SPACE = sa.literal_column("' '")
_T = sa.literal_column("'T'")
_SQLITE_UNIXEPOCH = sa.literal_column("'unixepoch'")
_SQLITE_FRACTION_FORMAT = sa.literal_column("'.%06dZ'")
_PG_ISO_FORMAT = sa.literal_column("""'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'""")
_PG_DATE_FORMAT = sa.literal_column("'YYYY-MM-DD'")
_PG_UTC = sa.literal_column("'UTC'")
_MILLION = sa.literal_column("1000000", sa.BigInteger())
_TRUE = sa.literal_column("'true'", sa.Text())
_FALSE = sa.literal_column("'false'", sa.Text())


def _sqlite_iso(expr: Any) -> Any:
    """Microseconds since the epoch -> the text of ``_dec_micros``, in SQL (also before 1970)."""
    fraction = (expr % _MILLION + _MILLION) % _MILLION  # 0..999999 before 1970 too (% truncates)
    seconds = (expr - fraction) // _MILLION  # exact: a multiple of 1,000,000
    # datetime() and a space made a 'T' cost a sixth less than strftime with a format (callgrind).
    text = sa.func.replace(sa.func.datetime(seconds, _SQLITE_UNIXEPOCH, type_=sa.Text()), _SPACE, _T, type_=sa.Text())
    return text.op("||", return_type=sa.Text())(sa.func.printf(_SQLITE_FRACTION_FORMAT, fraction, type_=sa.Text()))


def output_sql(dialect: str, column_type: str, expr: Any, fmt: str) -> Any | None:
    """``expr`` (a stored column) as the pull API writes it, computed by the database; ``None`` when
    the driver's value already is what is written, or only Python can make it (JSON booleans on
    SQLite, json values). ``fmt`` is ``"json"`` (JSON and NDJSON) or ``"csv"`` (booleans as text).

    ``expr`` is used more than once: give a column, not a calculation (whose ``now()`` would be
    evaluated once per use)."""
    if column_type == "datetime":
        if dialect == "sqlite":
            return _sqlite_iso(expr)
        return sa.func.to_char(sa.func.timezone(_PG_UTC, expr), _PG_ISO_FORMAT, type_=sa.Text())
    if column_type == "date" and dialect != "sqlite":
        return sa.func.to_char(expr, _PG_DATE_FORMAT, type_=sa.Text())
    if column_type == "boolean" and fmt == "csv":
        if dialect == "sqlite":
            return sa.case((expr.is_(None), sa.null()), (expr != sa.literal_column("0"), _TRUE), else_=_FALSE)
        return sa.case((expr.is_(True), _TRUE), (expr.is_(False), _FALSE), else_=sa.null())
    return None
