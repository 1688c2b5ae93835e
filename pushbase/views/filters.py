"""View filters: ``{"field": "needs pushing", "op": "equals", "value": true}``.

``FILTERS`` is the one registry (modelled on Datasette's filters): each ``FilterOp`` holds its key, the
sentence the console shows (``"{field} is empty"``), whether it takes a value, the field types it works on
and how it builds SQL. The same table feeds validation, the SQL, ``describe()`` and docs/formulas.md (a
test fails when an op is missing from the docs).

Values are checked against the field's type with ``pushbase.columns.validator_for`` (so a filter accepts
what the dataset accepts), encoded for the engine with ``pushbase.storage.codecs.encoder`` and always sent
as bound parameters.

Decisions, the same on SQLite and PostgreSQL:
- ``not_equals`` keeps empty (null) values: "status does not equal 'shipped'" includes rows without a status.
- ``is_empty`` is null, or ``''`` for text; ``is_not_empty`` is the opposite.
- ``contains`` and ``starts_with`` work on text fields, ignore the case of ASCII letters (SQLite's LIKE
  rule), and treat ``%`` and ``_`` in the value literally.
- ``gt``/``gte``/``lt``/``lte`` order text by code point (``COLLATE "C"`` on PostgreSQL), like SQLite.
- A datetime field accepts a date (``"2024-05-01"``) as midnight UTC.
- ``in`` takes a list of at most ``MAX_IN_VALUES`` values; an empty list matches nothing.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import orjson
import sqlalchemy as sa

from ..columns import validator_for
from ..errors import Invalid
from .formulas import FieldRef, _dialect, bind, closest_name, macro, sqltype

__all__ = ["FilterOp", "FILTERS", "MAX_IN_VALUES", "describe", "parse_filters", "coerce_value"]

MAX_IN_VALUES = 1000
_MAX_PATTERN_BYTES = 40_000  # SQLite refuses LIKE patterns over 50,000 bytes

_ALL = ("string", "integer", "number", "boolean", "date", "datetime", "json")
_COMPARABLE = ("string", "integer", "number", "boolean", "date", "datetime")
_ORDERED = ("string", "integer", "number", "date", "datetime")
_TEXT = ("string",)


@dataclass(frozen=True)
class FilterOp:
    key: str
    label: str  # the console's sentence, e.g. "{field} is empty"
    needs_value: bool
    field_types: tuple[str, ...]
    summary: str
    _sql: Callable[[FieldRef, Any, str], Any]

    def build(self, field: FieldRef, value: Any, dialect: str) -> Any:
        """The SQL condition for ``field`` with ``value`` (checked and coerced to the field's type)."""
        dialect = _dialect(dialect)
        if field.type not in self.field_types:
            kinds = ", ".join(self.field_types)
            raise Invalid(
                f"{self.key} does not work on {field.type} fields like {field.name!r} (it needs {kinds})",
                code="invalid_filter",
                details={"field": field.name, "op": self.key, "field_type": field.type},
            )
        if not self.needs_value and value is not None:
            raise Invalid(
                f"{self.key} takes no value", code="invalid_filter", details={"field": field.name, "op": self.key}
            )
        return self._sql(field, value, dialect)

    def describe(self, field_name: str, value: Any = None) -> str:
        return self.label.format(field=field_name, value=_show(value))


def _show(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


def _bad(field: FieldRef, op: str, value: Any, reason: str) -> Invalid:
    shown = _show(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return Invalid(
        f"{op} on {field.name!r}: {shown} is not usable: {reason}",
        code="invalid_filter",
        details={"field": field.name, "op": op, "value": value if len(_show(value)) <= 200 else shown},
    )


def coerce_value(field: FieldRef, op: str, value: Any) -> Any:
    """``value`` as the canonical Python value of the field's type, or Invalid saying why not."""
    if value is None:
        raise _bad(field, op, value, "a value is needed (use is_empty / is_not_empty for empty values)")
    kind = field.type
    try:
        if kind == "integer":
            if isinstance(value, int) and not isinstance(value, bool):
                return validator_for("integer")(value)
            number = validator_for("number")(value)
            if isinstance(number, float) and number.is_integer() and -(2**63) <= number < 2**63:
                return int(number)
            return number  # compared as doubles (see _operands)
        if kind == "datetime":
            try:
                return validator_for("datetime")(value)
            except ValueError:
                if isinstance(value, str):
                    try:
                        day = validator_for("date")(value)
                    except ValueError:
                        pass
                    else:
                        return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
                raise
        canonical = validator_for(kind)(value)
    except (ValueError, OverflowError, TypeError) as exc:
        raise _bad(field, op, value, str(exc) or "wrong type") from None
    if isinstance(canonical, str):
        if "\x00" in canonical:
            raise _bad(field, op, value, "text may not contain the NUL character")
        try:
            canonical.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad(field, op, value, "text must be valid Unicode") from None
    return canonical


def _operands(field: FieldRef, op: str, values: list[Any], dialect: str) -> tuple[Any, list[Any]]:
    """The field's expression and the values as bound parameters of its type. An integer field met
    with a fractional or out-of-range number is compared as a double on both engines."""
    canonical = [coerce_value(field, op, value) for value in values]
    if field.type == "integer" and any(isinstance(value, float) for value in canonical):
        cast = "CAST({0} AS DOUBLE PRECISION)" if dialect == "postgresql" else "CAST({0} AS REAL)"
        expr = macro(cast, field.expr, type_=sqltype(dialect, "number"))
        return expr, [bind(dialect, "number", float(value)) for value in canonical]
    return field.expr, [bind(dialect, field.type, value) for value in canonical]


def _boolean(template: str, *args: Any, dialect: str) -> Any:
    return macro(template, *args, type_=sqltype(dialect, "boolean"))


def _collated(field: FieldRef, dialect: str, index: int) -> str:
    return '({%d} COLLATE "C")' % index if dialect == "postgresql" and field.type == "string" else "{%d}" % index


def _equals(field: FieldRef, value: Any, dialect: str) -> Any:
    expr, (param,) = _operands(field, "equals", [value], dialect)
    return _boolean("({0} = {1})", expr, param, dialect=dialect)


def _not_equals(field: FieldRef, value: Any, dialect: str) -> Any:
    expr, (param,) = _operands(field, "not_equals", [value], dialect)
    template = "({0} IS DISTINCT FROM {1})" if dialect == "postgresql" else "({0} IS NOT {1})"
    return _boolean(template, expr, param, dialect=dialect)


def _ordered(op: str, symbol: str) -> Callable[[FieldRef, Any, str], Any]:
    def build(field: FieldRef, value: Any, dialect: str) -> Any:
        expr, (param,) = _operands(field, op, [value], dialect)
        template = "(%s %s %s)" % (_collated(field, dialect, 0), symbol, _collated(field, dialect, 1))
        return _boolean(template, expr, param, dialect=dialect)

    return build


def _is_empty(field: FieldRef, value: Any, dialect: str) -> Any:
    if field.type != "string":
        template = "({0} IS NULL)"
    elif isinstance(field.expr, sa.Column):
        template = "({0} IS NULL OR {0} = '')"  # a plain column: keep it usable by an index
    else:
        template = "(COALESCE({0}, '') = '')"  # a calculation: write it once
    return _boolean(template, field.expr, dialect=dialect)


def _is_not_empty(field: FieldRef, value: Any, dialect: str) -> Any:
    template = "(COALESCE({0}, '') <> '')" if field.type == "string" else "({0} IS NOT NULL)"
    return _boolean(template, field.expr, dialect=dialect)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _like(op: str, prefix: str) -> Callable[[FieldRef, Any, str], Any]:
    def build(field: FieldRef, value: Any, dialect: str) -> Any:
        text = coerce_value(field, op, value)
        escaped = text.replace("/", "//").replace("%", "/%").replace("_", "/_")
        pattern = f"{prefix}{escaped}%"
        if len(pattern.encode("utf-8")) > _MAX_PATTERN_BYTES:
            raise _bad(field, op, value, "the text is too long")
        if dialect == "postgresql":
            # SQLite's LIKE ignores the case of ASCII letters only; do exactly that on PostgreSQL.
            template = "(LOWER({0} COLLATE \"C\") LIKE {1} ESCAPE '/')"
            pattern = pattern.translate(_ASCII_LOWER)
        else:
            template = "({0} LIKE {1} ESCAPE '/')"
        return _boolean(template, field.expr, bind(dialect, "string", pattern), dialect=dialect)

    return build


def _in(field: FieldRef, value: Any, dialect: str) -> Any:
    if not isinstance(value, list):
        raise _bad(field, "in", value, "in takes a list of values, e.g. [\"a\", \"b\"]")
    if len(value) > MAX_IN_VALUES:
        raise _bad(field, "in", f"{len(value)} values", f"in takes at most {MAX_IN_VALUES} values")
    if not value:
        return _boolean("(1 = 0)", dialect=dialect)
    expr, params = _operands(field, "in", value, dialect)
    template = "({0} IN (%s))" % ", ".join("{%d}" % (i + 1) for i in range(len(params)))
    return _boolean(template, expr, *params, dialect=dialect)


FILTERS: dict[str, FilterOp] = {
    op.key: op
    for op in (
        FilterOp("equals", "{field} equals {value}", True, _COMPARABLE, "the field equals the value", _equals),
        FilterOp("not_equals", "{field} does not equal {value}", True, _COMPARABLE, "the field differs from the value or is empty", _not_equals),
        FilterOp("is_empty", "{field} is empty", False, _ALL, "the field is null (or '' for text)", _is_empty),
        FilterOp("is_not_empty", "{field} is not empty", False, _ALL, "the field has a value (not '' for text)", _is_not_empty),
        FilterOp("gt", "{field} > {value}", True, _ORDERED, "greater than the value", _ordered("gt", ">")),
        FilterOp("gte", "{field} >= {value}", True, _ORDERED, "greater than or equal to the value", _ordered("gte", ">=")),
        FilterOp("lt", "{field} < {value}", True, _ORDERED, "less than the value", _ordered("lt", "<")),
        FilterOp("lte", "{field} <= {value}", True, _ORDERED, "less than or equal to the value", _ordered("lte", "<=")),
        FilterOp("contains", "{field} contains {value}", True, _TEXT, "the text contains the value (ASCII case ignored)", _like("contains", "%")),
        FilterOp("starts_with", "{field} starts with {value}", True, _TEXT, "the text starts with the value (ASCII case ignored)", _like("starts_with", "")),
        FilterOp("in", "{field} is one of {value}", True, _COMPARABLE, "the field equals one of a list of values", _in),
    )
}


def describe(filter: Mapping[str, Any]) -> str:
    """The console's sentence for one filter, e.g. ``needs pushing equals true``."""
    field_name = str(filter.get("field", "?"))
    op = FILTERS.get(str(filter.get("op")))
    if op is None:
        return f"{field_name} {filter.get('op')} {_show(filter.get('value'))}"
    return op.describe(field_name, filter.get("value"))


def parse_filters(raw_list: Any, fields: Mapping[str, FieldRef], dialect: str) -> list[Any]:
    """Check a view's ``filters`` (a list of ``{"field", "op", "value"}``) and build their SQL conditions.

    ``fields`` holds the dataset's fields and the view's calculations. Every problem is an Invalid that
    names the filter's index: an unknown field (with the closest name), an unknown op (with the valid
    ones), a value of the wrong type."""
    if raw_list is None:
        return []
    if not isinstance(raw_list, (list, tuple)):
        raise Invalid("filters must be a list of {field, op, value} objects", code="invalid_filter")
    conditions = []
    for index, raw in enumerate(raw_list):
        where = f"filters[{index}]"
        if not isinstance(raw, Mapping):
            raise Invalid(f"{where} must be an object with field, op and value", code="invalid_filter", details={"index": index})
        unknown = sorted(set(raw) - {"field", "op", "value"})
        if unknown:
            raise Invalid(
                f"{where} has unknown keys {', '.join(map(repr, unknown))} (expected field, op, value)",
                code="invalid_filter",
                details={"index": index, "keys": unknown},
            )
        name, op_key = raw.get("field"), raw.get("op")
        if not isinstance(name, str) or not name:
            raise Invalid(f"{where}: field must be a field or calculation name", code="invalid_filter", details={"index": index})
        field = fields.get(name)
        if field is None:
            suggestion = closest_name(name, fields)
            hint = f"; did you mean {suggestion!r}?" if suggestion else ""
            raise Invalid(
                f"{where}: unknown field {name!r}{hint}",
                code="invalid_filter",
                details={"index": index, "field": name, "suggestion": suggestion},
            )
        op = FILTERS.get(op_key) if isinstance(op_key, str) else None
        if op is None:
            valid = list(FILTERS)
            suggestion = closest_name(op_key, valid) if isinstance(op_key, str) else None
            hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
            raise Invalid(
                f"{where}: unknown op {op_key!r}{hint}; valid ops: {', '.join(valid)}",
                code="invalid_filter",
                details={"index": index, "op": op_key if isinstance(op_key, str) else None, "valid_ops": valid, "suggestion": suggestion},
            )
        if op.needs_value and "value" not in raw:
            raise Invalid(
                f"{where}: {op.key} needs a value", code="invalid_filter", details={"index": index, "field": name, "op": op.key}
            )
        try:
            conditions.append(op.build(field, raw.get("value"), dialect))
        except Invalid as exc:
            details = dict(exc.details) if isinstance(exc.details, dict) else {}
            details["index"] = index
            raise Invalid(f"{where}: {exc.message}", code=exc.code, details=details) from None
    return conditions
