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
decoders take what the DBAPI returns and give a JSON-ready value (datetimes as ISO 8601 with ``Z``).
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Callable

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = ["sql_type", "encoder", "decoder", "identity", "micros_to_datetime", "datetime_to_micros", "iso"]

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


def _json_text(value: Any) -> Any:
    return None if value is None else orjson.dumps(value).decode()


def _bool_int(value: Any) -> Any:
    return None if value is None else int(value)


def _date_text(value: Any) -> Any:
    return None if value is None else value.isoformat()


def _dt_micros(value: Any) -> Any:
    return None if value is None else datetime_to_micros(value)


def encoder(dialect: str, column_type: str) -> Callable[[Any], Any]:
    if dialect == "sqlite":
        return {"boolean": _bool_int, "date": _date_text, "datetime": _dt_micros, "json": _json_text}.get(column_type, identity)
    return identity


def _dec_json_text(value: Any) -> Any:
    return None if value is None else orjson.loads(value)


def _dec_bool(value: Any) -> Any:
    return None if value is None else bool(value)


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
