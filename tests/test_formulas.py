"""Calculations: every function and operator on a real table, on SQLite and on PostgreSQL, with the
same answers; the errors users get; injection attempts; generated formulas that never reach the client
as database errors."""
from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite

from pushbase.columns import validator_for
from pushbase.errors import Invalid
from pushbase.storage.codecs import decoder, encoder, iso, sql_type
from pushbase.views import FieldRef, FormulaError, compile_calculations, compile_formula, parse_filters
from pushbase.views.formulas import FUNCTIONS, MAX_FORMULA_LENGTH

from .conftest import fresh_pg_schema, pg_sqlalchemy_url

QUOTED = "it's \"quoted\"); DROP TABLE orders; --"
PAYLOAD = "'; DROP TABLE orders; --"

FIELDS = {
    "row id [auto]": "integer",
    "created [auto]": "datetime",
    "last modified [auto]": "datetime",
    "last pushed": "datetime",
    "order_id": "integer",
    "total": "number",
    "customer name": "string",
    "address.city": "string",
    "due date": "date",
    "paid": "boolean",
    "items": "json",
    QUOTED: "string",
}

ROWS = [
    {"row id [auto]": 1, "created [auto]": "2024-01-01T10:00:00Z", "last modified [auto]": "2024-01-02T10:00:00Z",
     "last pushed": None, "order_id": 1, "total": 10.5, "customer name": "Alice", "address.city": "Paris",
     "due date": "2024-01-31", "paid": True, "items": [{"sku": "a"}], QUOTED: "q1"},
    {"row id [auto]": 2, "created [auto]": "2024-01-01T00:00:00Z", "last modified [auto]": "2024-01-01T12:00:00Z",
     "last pushed": "2024-01-01T13:00:00Z", "order_id": 2, "total": 0.0, "customer name": "bob", "address.city": "",
     "due date": "2024-02-29", "paid": False, "items": None, QUOTED: None},
    {"row id [auto]": 3, "created [auto]": "2024-02-01T00:00:00Z", "last modified [auto]": "2024-03-01T00:00:00.5Z",
     "last pushed": "2024-02-01T00:00:00Z", "order_id": 3, "total": -3.25, "customer name": "Ünïcode ÉÀ",
     "address.city": None, "due date": None, "paid": None, "items": {}, QUOTED: "x"},
    {"row id [auto]": 4, "created [auto]": "2023-12-31T23:59:59.999999Z", "last modified [auto]": "2024-01-05T00:00:00Z",
     "last pushed": "2024-01-05T00:00:00Z", "order_id": None, "total": None, "customer name": None,
     "address.city": "100%_sure", "due date": "1999-12-31", "paid": True, "items": None, QUOTED: ""},
    {"row id [auto]": 5, "created [auto]": "0001-01-01T00:00:00Z", "last modified [auto]": "9999-12-31T23:59:59.999999Z",
     "last pushed": None, "order_id": 9223372036854775807, "total": 1e300, "customer name": PAYLOAD,
     "address.city": "a_b", "due date": "9999-12-31", "paid": False, "items": [], QUOTED: "'); DROP"},
]


# ---------------------------------------------------------------------------------------------
# A real table on each engine


class Db:
    def __init__(self, dialect: str, engine: sa.Engine, schema: str | None) -> None:
        self.dialect = dialect
        self.engine = engine
        metadata = sa.MetaData(schema=schema)
        self.table = sa.Table(
            "orders",
            metadata,
            *[
                sa.Column(name, sql_type(dialect, kind), primary_key=name == "row id [auto]", autoincrement=False)
                for name, kind in FIELDS.items()
            ],
        )
        metadata.create_all(engine)
        rows = []
        for row in ROWS:
            encoded = {}
            for name, kind in FIELDS.items():
                value = row[name]
                canonical = None if value is None else validator_for(kind)(value)
                encoded[name] = encoder(dialect, kind)(canonical)
            rows.append(encoded)
        with engine.begin() as conn:
            conn.execute(self.table.insert(), rows)
        self.fields = {name: FieldRef(name, kind, self.table.c[name]) for name, kind in FIELDS.items()}
        self.id = self.table.c["row id [auto]"]

    def values(self, expr: Any, type_name: str) -> list[Any]:
        query = sa.select(expr.label("v")).select_from(self.table).order_by(self.id)
        with self.engine.connect() as conn:
            raw = conn.execute(query).scalars().all()
        decode = decoder(self.dialect, type_name)
        return [decode(value) for value in raw]

    def formula(self, formula: str, fields: dict[str, FieldRef] | None = None) -> list[Any]:
        compiled = compile_formula(formula, fields or self.fields, self.dialect)
        return self.values(compiled.expr, compiled.type)

    def ids(self, *conditions: Any) -> list[int]:
        query = sa.select(self.id).where(*conditions).order_by(self.id)
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def row_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one()


def _sqlite_db(tmp: Path) -> Db:
    engine = sa.create_engine(f"sqlite:///{tmp / 'formulas.db'}")
    return Db("sqlite", engine, None)


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Db:
    return _sqlite_db(tmp_path_factory.mktemp("formulas"))


@pytest.fixture(scope="module")
def pg_db():
    engine = sa.create_engine(pg_sqlalchemy_url())
    try:
        with fresh_pg_schema("pb_formulas") as schema:
            yield Db("postgresql", engine, schema)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Db:
    return request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "pg_db")


@pytest.fixture
def both(sqlite_db: Db, pg_db: Db) -> tuple[Db, Db]:
    return sqlite_db, pg_db


def T(text: str) -> str:
    """A datetime as the row decoder writes it."""
    return iso(validator_for("datetime")(text))


def days(micros: int) -> float:
    return micros / 86400000000.0


def micros(text: str) -> int:
    value = validator_for("datetime")(text)
    return encoder("sqlite", "datetime")(value)


# ---------------------------------------------------------------------------------------------
# The seed's example, verbatim


def test_seed_needs_pushing_with_filter_equals_true(db: Db) -> None:
    calcs = compile_calculations(
        [("needs pushing", "{last modified [auto]} > {last pushed}")], db.fields, db.dialect
    )
    assert calcs["needs pushing"].type == "boolean"
    assert db.values(calcs["needs pushing"].expr, "boolean") == [None, False, True, False, None]
    conditions = parse_filters(
        [{"field": "needs pushing", "op": "equals", "value": True}], {**db.fields, **calcs}, db.dialect
    )
    assert db.ids(*conditions) == [3]


def test_seed_recipe_never_pushed(db: Db) -> None:
    conditions = parse_filters([{"field": "last pushed", "op": "is_empty"}], db.fields, db.dialect)
    assert db.ids(*conditions) == [1, 5]


def test_seed_recipe_new_or_modified_since_pushed(db: Db) -> None:
    for formula in (
        "is_empty({last pushed}) or {last modified [auto]} > {last pushed}",
        "{last pushed} is empty OR {last modified [auto]} > {last pushed}",
        "coalesce({last modified [auto]} > {last pushed}, true)",
    ):
        calcs = compile_calculations([("needs pushing", formula)], db.fields, db.dialect)
        conditions = parse_filters(
            [{"field": "needs pushing", "op": "equals", "value": True}], {**db.fields, **calcs}, db.dialect
        )
        assert db.ids(*conditions) == [1, 3, 5], formula


# ---------------------------------------------------------------------------------------------
# Every operator and function, the same answers on both engines

MAX = 9223372036854775807
C = [micros(row["created [auto]"]) for row in ROWS]
M = [micros(row["last modified [auto]"]) for row in ROWS]

CASES: list[tuple[str, str, list[Any]]] = [
    # arithmetic
    ("{order_id} + 1", "integer", [2, 3, 4, None, None]),  # 64-bit overflow gives null
    ("{order_id} - 1", "integer", [0, 1, 2, None, MAX - 1]),
    ("{order_id} * 2", "integer", [2, 4, 6, None, None]),
    ("-{order_id}", "integer", [-1, -2, -3, None, -MAX]),
    ("+{order_id}", "integer", [1, 2, 3, None, MAX]),
    ("{order_id} / 2", "number", [0.5, 1.0, 1.5, None, MAX / 2]),
    ("{order_id} / ({order_id} - 1)", "number", [None, 2.0, 1.5, None, 1.0]),  # division by zero is null
    ("{total} / 0", "number", [None, None, None, None, None]),
    ("{total} * 2", "number", [21.0, 0.0, -6.5, None, 2e300]),
    ("{total} * {total}", "number", [110.25, 0.0, 10.5625, None, None]),  # beyond the largest double: null
    ("1e308 + 1e308", "number", [None] * 5),
    ("-1e308 - 1e308", "number", [None] * 5),
    ("1e300 / 1e-300", "number", [None] * 5),
    ("5e-324 / 2", "number", [0.0] * 5),  # underflow is 0, as in IEEE
    ("1.5e-323 * 0.5", "number", [1e-323] * 5),
    ("{total} + 1", "number", [11.5, 1.0, -2.25, None, 1e300]),
    ("{total} - {order_id}", "number", [9.5, -2.0, -6.25, None, 1e300 - MAX]),
    ("2 + 3 * 4 - (10 - 4) / 3", "number", [12.0] * 5),
    ("7 / 2", "number", [3.5] * 5),
    ("1e300 * 1e300", "number", [None] * 5),
    ("1e-200 * 1e-200", "number", [0.0] * 5),
    ("0 / -5", "number", [0.0] * 5),
    ("abs({total})", "number", [10.5, 0.0, 3.25, None, 1e300]),
    ("abs({order_id} - 2)", "integer", [1, 0, 1, None, MAX - 2]),
    ("abs(-9223372036854775807 - 1)", "integer", [None] * 5),
    ("round({total})", "number", [11.0, 0.0, -3.0, None, 1e300]),
    ("round({total} / 3, 2)", "number", [3.5, 0.0, -1.08, None, 1e300 / 3]),
    ("round(2.675, 2)", "number", [2.68] * 5),
    ("round(-2.5)", "number", [-3.0] * 5),
    ("round({order_id}, 3)", "integer", [1, 2, 3, None, MAX]),
    # comparisons and logic
    ("{total} > 0", "boolean", [True, False, False, None, True]),
    ("{total} >= 0", "boolean", [True, True, False, None, True]),
    ("{order_id} = 2", "boolean", [False, True, False, None, False]),
    ("{order_id} == 2", "boolean", [False, True, False, None, False]),
    ("{order_id} != 2", "boolean", [True, False, True, None, True]),
    ("{order_id} <> 2.0", "boolean", [True, False, True, None, True]),
    ("{total} <= {order_id}", "boolean", [False, True, True, None, False]),
    ("{customer name} < 'b'", "boolean", [True, False, False, None, True]),  # code point order
    ("'a' < 'B'", "boolean", [False] * 5),
    ("{paid} and {total} > 0", "boolean", [True, False, False, None, False]),
    ("{paid} or {total} > 0", "boolean", [True, False, None, True, True]),
    ("not {paid}", "boolean", [False, True, None, False, True]),
    ("not ({total} > 0) and {order_id} < 3", "boolean", [False, True, False, None, False]),
    ("{paid} = true", "boolean", [True, False, None, True, False]),
    ("{order_id} in (1, 3)", "boolean", [True, False, True, None, False]),
    ("{customer name} not in ('bob', 'Alice')", "boolean", [False, False, True, None, True]),
    ("{order_id} between 2 and 3", "boolean", [False, True, True, None, False]),
    ("{order_id} not between 2 and 3", "boolean", [True, False, False, None, True]),
    ("{customer name} between 'A' and 'Z'", "boolean", [True, False, False, None, False]),
    ("{address.city} is empty", "boolean", [False, True, True, False, False]),
    ("{address.city} is not empty", "boolean", [True, False, False, True, True]),
    ("{address.city} is null", "boolean", [False, False, True, False, False]),
    ("{address.city} IS NOT NULL", "boolean", [True, True, False, True, True]),
    ("{items} is empty", "boolean", [False, True, False, True, False]),
    ("is_empty({last pushed})", "boolean", [True, False, False, False, True]),
    ("is_not_empty({last pushed})", "boolean", [False, True, True, True, False]),
    ("is_empty({customer name})", "boolean", [False, False, False, True, False]),
    # text
    ("lower({customer name})", "string", ["alice", "bob", "Ünïcode ÉÀ", None, "'; drop table orders; --"]),
    ("upper({customer name})", "string", ["ALICE", "BOB", "ÜNïCODE ÉÀ", None, "'; DROP TABLE ORDERS; --"]),
    ("length({customer name})", "integer", [5, 3, 10, None, 24]),
    ("trim('  two words  ')", "string", ["two words"] * 5),
    ("{customer name} || '!'", "string", ["Alice!", "bob!", "Ünïcode ÉÀ!", None, PAYLOAD + "!"]),
    ("concat({customer name}, ' #', {order_id})", "string", ["Alice #1", "bob #2", "Ünïcode ÉÀ #3", " #", PAYLOAD + " #" + str(MAX)]),
    ("concat({due date}, ' ', {paid})", "string", ["2024-01-31 true", "2024-02-29 false", " ", "1999-12-31 true", "9999-12-31 false"]),
    ("'it''s' || ' ok'", "string", ["it's ok"] * 5),
    ("coalesce({address.city}, 'n/a')", "string", ["Paris", "", "n/a", "100%_sure", "a_b"]),
    ("coalesce({order_id}, {total}, 0)", "number", [1.0, 2.0, 3.0, 0.0, float(MAX)]),
    # conditions
    ("if({paid}, 'paid', 'open')", "string", ["paid", "open", "open", "paid", "open"]),
    ("if({total} > 5, 1, 0.5)", "number", [1.0, 0.5, 0.5, 0.5, 1.0]),
    ("if({total} > 5, {order_id}, null)", "integer", [1, None, None, None, MAX]),
    ("case when {total} > 5 then 'big' when {total} > 0 then 'small' else 'none' end", "string", ["big", "none", "none", "none", "big"]),
    ("CASE {address.city} WHEN 'Paris' THEN 1 WHEN '' THEN 2 END", "integer", [1, 2, None, None, None]),
    ("case {due date} when '2024-02-29' then true else false end", "boolean", [False, True, False, False, False]),
    # dates and datetimes
    ("{due date} + 1", "date", ["2024-02-01", "2024-03-01", None, "2000-01-01", None]),
    ("1 + {due date}", "date", ["2024-02-01", "2024-03-01", None, "2000-01-01", None]),
    ("{due date} - 1", "date", ["2024-01-30", "2024-02-28", None, "1999-12-30", "9999-12-30"]),
    ("add_days({due date}, {order_id})", "date", ["2024-02-01", "2024-03-02", None, None, None]),
    ("add_days({due date}, -3000000)", "date", [None, None, None, None, "1786-04-11"]),
    ("add_days({due date}, 9223372036854775807)", "date", [None] * 5),
    ("add_days({due date}, -9223372036854775807)", "date", [None] * 5),
    ("{due date} - date '2024-01-01'", "integer", [30, 59, None, -8767, 2913173]),
    ("days_between('2024-01-01', {due date})", "integer", [30, 59, None, -8767, 2913173]),
    ("{due date} + interval '2 weeks'", "date", ["2024-02-14", "2024-03-14", None, "2000-01-14", None]),
    ("{due date} > '2024-02-01'", "boolean", [False, True, None, False, True]),
    ("{due date} between '2024-01-01' and '2024-12-31'", "boolean", [True, True, None, False, False]),
    ("{due date} in ('2024-01-31', '1999-12-31')", "boolean", [True, False, None, True, False]),
    ("{created [auto]} > '2024-01-01'", "boolean", [True, False, True, False, False]),
    ("{created [auto]} >= datetime('2024-01-01T10:00:00+00:00')", "boolean", [True, False, True, False, False]),
    ("{created [auto]} < date '2024-01-01'", "boolean", [False, False, False, True, True]),  # date as midnight UTC
    ("date({created [auto]})", "date", ["2024-01-01", "2024-01-01", "2024-02-01", "2023-12-31", "0001-01-01"]),
    ("date({last modified [auto]})", "date", ["2024-01-02", "2024-01-01", "2024-03-01", "2024-01-05", "9999-12-31"]),
    ("date('2024-02-29')", "date", ["2024-02-29"] * 5),
    ("datetime({due date})", "datetime", ["2024-01-31T00:00:00.000000Z", "2024-02-29T00:00:00.000000Z", None, "1999-12-31T00:00:00.000000Z", "9999-12-31T00:00:00.000000Z"]),
    ("datetime('2024-05-01T12:30:00+02:00')", "datetime", ["2024-05-01T10:30:00.000000Z"] * 5),
    ("add_hours({created [auto]}, 1)", "datetime", ["2024-01-01T11:00:00.000000Z", "2024-01-01T01:00:00.000000Z", "2024-02-01T01:00:00.000000Z", "2024-01-01T00:59:59.999999Z", T("0001-01-01T01:00:00Z")]),
    ("add_minutes({created [auto]}, -1)", "datetime", ["2024-01-01T09:59:00.000000Z", "2023-12-31T23:59:00.000000Z", "2024-01-31T23:59:00.000000Z", "2023-12-31T23:58:59.999999Z", None]),
    ("add_seconds({last modified [auto]}, 1)", "datetime", ["2024-01-02T10:00:01.000000Z", "2024-01-01T12:00:01.000000Z", "2024-03-01T00:00:01.500000Z", "2024-01-05T00:00:01.000000Z", None]),
    ("add_days({created [auto]}, 1)", "datetime", ["2024-01-02T10:00:00.000000Z", "2024-01-02T00:00:00.000000Z", "2024-02-02T00:00:00.000000Z", "2024-01-01T23:59:59.999999Z", T("0001-01-02T00:00:00Z")]),
    ("{last modified [auto]} + interval '1 day 2 hours'", "datetime", ["2024-01-03T12:00:00.000000Z", "2024-01-02T14:00:00.000000Z", "2024-03-02T02:00:00.500000Z", "2024-01-06T02:00:00.000000Z", None]),
    ("{last modified [auto]} - interval '30 minutes'", "datetime", ["2024-01-02T09:30:00.000000Z", "2024-01-01T11:30:00.000000Z", "2024-02-29T23:30:00.500000Z", "2024-01-04T23:30:00.000000Z", "9999-12-31T23:29:59.999999Z"]),
    ("interval '1 hour' + {created [auto]}", "datetime", ["2024-01-01T11:00:00.000000Z", "2024-01-01T01:00:00.000000Z", "2024-02-01T01:00:00.000000Z", "2024-01-01T00:59:59.999999Z", T("0001-01-01T01:00:00Z")]),
    ("days_between({created [auto]}, {last modified [auto]})", "number", [days(m - c) for c, m in zip(C, M)]),
    ("hours_between({created [auto]}, {last modified [auto]})", "number", [(m - c) / 3600000000.0 for c, m in zip(C, M)]),
    ("minutes_between({created [auto]}, {last modified [auto]})", "number", [(m - c) / 60000000.0 for c, m in zip(C, M)]),
    ("seconds_between({created [auto]}, {last modified [auto]})", "number", [(m - c) / 1000000.0 for c, m in zip(C, M)]),
    ("days_between({due date}, {created [auto]})", "number", [-30.0 + 10 / 24, -59.0, None, days(C[3] - micros("1999-12-31T00:00:00Z")), days(C[4] - micros("9999-12-31T00:00:00Z"))]),
    ("now() > {created [auto]}", "boolean", [True] * 5),
    ("today() >= date({created [auto]})", "boolean", [True] * 5),
    ("days_between(today(), today())", "integer", [0] * 5),
    # fields with awkward names
    (f"{{{QUOTED}}} || '?'", "string", ["q1?", None, "x?", "?", "'); DROP?"]),
    ("{row id [auto]} * 10", "integer", [10, 20, 30, 40, 50]),
    ("{items}", "json", [[{"sku": "a"}], None, {}, None, []]),
]


def _same(actual: list[Any], expected: list[Any]) -> bool:
    if len(actual) != len(expected):
        return False
    for a, e in zip(actual, expected):
        if isinstance(e, float) and isinstance(a, (int, float)) and a is not None:
            if not math.isclose(a, e, rel_tol=1e-12, abs_tol=1e-12):
                return False
        elif a != e:
            return False
    return True


@pytest.mark.parametrize(("formula", "type_name", "expected"), CASES, ids=[case[0] for case in CASES])
def test_formula_values(db: Db, formula: str, type_name: str, expected: list[Any]) -> None:
    compiled = compile_formula(formula, db.fields, db.dialect)
    assert compiled.type == type_name
    actual = db.values(compiled.expr, compiled.type)
    assert _same(actual, expected), f"{db.dialect}: {formula} -> {actual}, expected {expected}"


@pytest.mark.parametrize(("formula", "expected"), [
    ("round(0.285, 2)", 0.29), ("round(2.675, 2)", 2.68), ("round(-2.5)", -3.0), ("round(123.456, 2)", 123.46),
    # Scaled past 2^40 the nudge would show (3.000000000000003 where 3.0 was meant): not applied there.
    ("round(3.0, 15)", 3.0), ("round(1.0, 15)", 1.0), ("round(-1.0, 15)", -1.0), ("round(2.675, 15)", 2.675),
    ("round(1000000000000000.2, 0)", 1000000000000000.0), ("round(0.1 + 0.2, 15)", 0.3),
])
def test_round_gives_the_decimal_meant_exactly(db: Db, formula: str, expected: float) -> None:
    compiled = compile_formula(formula, db.fields, db.dialect)
    assert db.values(compiled.expr, compiled.type) == [expected] * 5, f"{db.dialect}: {formula}"


def test_every_function_is_exercised() -> None:
    used = " ".join(case[0] for case in CASES).lower()
    missing = [name for name in FUNCTIONS if f"{name}(" not in used]
    assert not missing


def test_formula_reports_references(db: Db) -> None:
    compiled = compile_formula("{total} * 2 > {order_id} or is_empty({last pushed})", db.fields, db.dialect)
    assert compiled.references == {"total", "order_id", "last pushed"}


def test_now_is_computed_when_the_query_runs(db: Db) -> None:
    compiled = compile_formula("now()", db.fields, db.dialect)
    first = db.values(compiled.expr, "datetime")[0]
    time.sleep(0.01)
    second = db.values(compiled.expr, "datetime")[0]
    assert first < second


# ---------------------------------------------------------------------------------------------
# Calculations that use calculations


def test_calculations_may_use_each_other_in_any_order(db: Db) -> None:
    calcs = compile_calculations(
        [("double", "{plus one} * 2"), ("plus one", "{order_id} + 1"), ("label", "concat('#', {double})")],
        db.fields,
        db.dialect,
    )
    assert list(calcs) == ["double", "plus one", "label"]
    assert calcs["double"].type == "integer"
    assert db.values(calcs["double"].expr, "integer") == [4, 6, 8, None, None]
    assert db.values(calcs["label"].expr, "string") == ["#4", "#6", "#8", "#", "#"]
    fields = {**db.fields, **calcs}
    assert db.formula("{double} + {plus one}", fields) == [6, 9, 12, None, None]
    assert db.ids(*parse_filters([{"field": "double", "op": "gt", "value": 5}], fields, db.dialect)) == [2, 3]


@pytest.mark.parametrize(
    ("calcs", "cycle"),
    [
        ([("a", "{b} + 1"), ("b", "{a} + 1")], ["a", "b", "a"]),
        ([("a", "{a} + 1")], ["a", "a"]),
        ([("x", "{order_id}"), ("a", "{c} * 2"), ("b", "{a} - 1"), ("c", "{b} + {x}")], ["a", "c", "b", "a"]),
    ],
)
def test_calculation_cycles_are_refused(calcs: list[tuple[str, str]], cycle: list[str]) -> None:
    with pytest.raises(FormulaError) as info:
        compile_calculations(calcs, _fields("sqlite"), "sqlite")
    assert info.value.details["cycle"] == cycle
    assert "cycle" in info.value.message
    assert " -> ".join(cycle) in info.value.message


@pytest.mark.parametrize(
    ("calcs", "fragment"),
    [
        ([("total", "1")], "same name as a field"),
        ([("a", "1"), ("a", "2")], "defined twice"),
        ([("a {b}", "1")], "braces"),
        ([("a [auto]", "1")], "reserved"),
        ([("", "1")], "non-empty"),
        ([("a", 5)], "must be text"),
    ],
)
def test_bad_calculation_names(calcs: list[tuple[str, Any]], fragment: str) -> None:
    with pytest.raises(FormulaError) as info:
        compile_calculations(calcs, _fields("sqlite"), "sqlite")
    assert fragment in info.value.message
    assert info.value.status_code == 422


def test_error_in_a_calculation_names_it() -> None:
    with pytest.raises(FormulaError) as info:
        compile_calculations([("ok", "1"), ("needs pushing", "{last modified [auto]} > {last pushd}")], _fields("sqlite"), "sqlite")
    details = info.value.details
    assert details["calculation"] == "needs pushing"
    assert details["field"] == "last pushd"
    assert details["suggestion"] == "last pushed"
    assert details["position"] == 25
    assert info.value.message.startswith("calculation 'needs pushing': unknown field {last pushd}")


def test_unknown_calculation_suggests_other_calculations() -> None:
    with pytest.raises(FormulaError) as info:
        compile_calculations([("plus one", "{order_id} + 1"), ("b", "{plus on} * 2")], _fields("sqlite"), "sqlite")
    assert info.value.details["suggestion"] == "plus one"


# ---------------------------------------------------------------------------------------------
# Errors users see


def _fields(dialect: str) -> dict[str, FieldRef]:
    metadata = sa.MetaData()
    table = sa.Table("t", metadata, *[sa.Column(name, sql_type(dialect, kind)) for name, kind in FIELDS.items()])
    return {name: FieldRef(name, kind, table.c[name]) for name, kind in FIELDS.items()}


def _error(formula: str, dialect: str = "sqlite") -> FormulaError:
    with pytest.raises(FormulaError) as info:
        compile_formula(formula, _fields(dialect), dialect)
    error = info.value
    assert isinstance(error, Invalid) and 400 <= error.status_code < 500
    assert error.to_json()["error"]["code"] == "invalid_formula"
    assert formula.startswith(error.details["formula"])
    return error


@pytest.mark.parametrize(
    ("formula", "field", "suggestion", "position"),
    [
        ("{last modified [auto]} > {last pushd}", "last pushd", "last pushed", 25),
        ("{Last Pushed} is empty", "Last Pushed", "last pushed", 0),
        ("1 + {totl}", "totl", "total", 4),
        ("{created}", "created", "created [auto]", 0),
        ("{zzzzzz}", "zzzzzz", None, 0),
    ],
)
def test_unknown_field_with_suggestion(formula: str, field: str, suggestion: str | None, position: int) -> None:
    error = _error(formula)
    assert error.details["field"] == field
    assert error.details.get("suggestion") == suggestion
    assert error.details["position"] == position
    assert f"{{{field}}}" in error.message
    if suggestion:
        assert f"did you mean {{{suggestion}}}" in error.message


@pytest.mark.parametrize(
    ("formula", "position", "fragment"),
    [
        ("{total} +", 9, "a value is missing at the end of the formula"),
        ("({total} + 1", 12, "expected ')' but found the end of the formula"),
        ("{total} + * 2", 10, "unexpected '*'"),
        ("{total} 2", 8, "unexpected '2'"),
        ("{total", 0, "not closed"),
        ("{}", 0, "empty field name"),
        ("total}", 5, "no matching"),
        ("'open", 0, "not closed"),
        ('"total" > 1', 0, "single quotes"),
        ("{total} % 2", 8, "not supported"),
        ("1 < 2 < 3", 6, "chained"),
        ("{total} is 3", 11, "NULL or EMPTY"),
        ("case when true then 1", 21, "END"),
        ("case 1 end", 7, "WHEN"),
        ("", 0, "empty"),
        ("99999999999999999999", 0, "64-bit"),
        ("total > 1", 0, "braces"),
        ("{total} > 1 then", 12, "unexpected 'then'"),
        ("(" * 60 + "1" + ")" * 60, 40, "nests too deeply"),
        ("not " * 60 + "true", 160, "nests too deeply"),
    ],
)
def test_syntax_errors_have_positions(formula: str, position: int, fragment: str) -> None:
    error = _error(formula)
    assert error.details["position"] == position, error.message
    assert fragment in error.message


@pytest.mark.parametrize("formula", ["sqlite_version()", "pg_sleep(1)", "{total} + pg_sleep(10)", "randomblob(1000000000)", "load_extension('x')", "eval('1')"])
def test_functions_not_on_the_list_are_refused(formula: str) -> None:
    error = _error(formula)
    name = formula.split("(")[0].split()[-1]
    assert error.details["function"] == name
    assert f"unknown function {name}()" in error.message
    assert "Available functions: if, coalesce" in error.message
    assert error.details["position"] == formula.index(name)


def test_unknown_function_suggests_a_close_one() -> None:
    error = _error("lowr({customer name})")
    assert error.details["suggestion"] == "lower"
    assert "did you mean lower()" in error.message


@pytest.mark.parametrize(
    ("formula", "fragment"),
    [
        ("lower({total})", "lower() needs text, got a number"),
        ("length({order_id})", "length() needs text"),
        ("{customer name} + 1", "join text with || or concat()"),
        ("{total} * 'a'", "'*' needs an integer or a number, got text"),
        ("{paid} and 1", "AND needs a boolean, got an integer"),
        ("not {total}", "NOT needs a boolean"),
        ("if({total}, 1, 2)", "the condition of if() needs a boolean"),
        ("if({paid}, 1, 'a')", "if() mixes an integer and text"),
        ("coalesce(null, null)", "always empty"),
        ("null", "always empty"),
        ("{total} = null", "use IS EMPTY"),
        ("{customer name} = 1", "cannot compare text with an integer"),
        ("{items} = 1", "json fields cannot be compared"),
        ("{paid} > {customer name}", "cannot compare a boolean with text"),
        ("{created [auto]} - {last pushed}", "days_between"),
        ("{created [auto]} + 1", "cannot combine a datetime and an integer"),
        ("add_hours({due date}, 1)", "add_hours() needs a datetime, got a date"),
        ("add_days({due date}, 1.5)", "the number of days needs an integer"),
        ("{due date} + interval '3 hours'", "whole days"),
        ("{due date} > 'soon'", "'soon' is not a date"),
        ("{created [auto]} > 'yesterday'", "is not a datetime"),
        ("date('2024-02-30')", "is not a date"),
        ("date({customer name})", "date() (or a 'YYYY-MM-DD' text) needs a date or a datetime"),
        ("interval '3 months' + {created [auto]}", "whole numbers of seconds"),
        ("interval '5000000 days' + {created [auto]}", "longer than 10,000 years"),
        ("interval '1 day'", "an interval can only be added"),
        ("round({total}, 16)", "from 0 to 15"),
        ("round({total}, {order_id})", "from 0 to 15"),
        ("if({paid}, 1)", "takes 3 arguments, got 2"),
        ("now(1)", "takes no arguments"),
        ("concat({total})", "numbers cannot be joined"),
        ("{customer name} || {created [auto]}", "not a datetime"),
        ("{customer name} in (1, 2)", "cannot compare text with an integer"),
        ("case when 1 then 2 end", "WHEN needs a boolean"),
    ],
)
def test_type_errors(formula: str, fragment: str) -> None:
    error = _error(formula)
    assert fragment in error.message
    assert "position" in error.details


def test_formula_length_and_complexity_limits() -> None:
    assert "longer than" in _error("1" + " " * MAX_FORMULA_LENGTH).message
    assert "too complex" in _error(" + ".join(["{order_id}"] * 100)).message
    calcs = [("c0", "{order_id}")] + [(f"c{i}", f"{{c{i - 1}}} + {{c{i - 1}}}") for i in range(1, 16)]
    with pytest.raises(FormulaError) as info:
        compile_calculations(calcs, _fields("sqlite"), "sqlite")
    assert "too complex" in info.value.message


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("add_hours(", ", 1)"),
        ("round(", " * 1.5, 2)"),
        ("if({paid}, ", ", 0)"),
        ("(", " * 2 - {order_id})"),
        ("lower(", " || 'x')"),
        ("coalesce(", ", 1.5)"),
    ],
)
def test_formulas_at_the_complexity_limit_still_run_in_a_view_query(db: Db, start: str, end: str) -> None:
    """The deepest formula accepted still runs where the view engine puts it: labelled in the select
    list, in filters, sorted with empty values last, and compared with a paging cursor."""
    leaf = {"add_hours(": "{created [auto]}", "lower(": "{customer name}"}.get(start, "{total}")
    accepted = None
    for depth in range(1, 80):
        formula = start * depth + leaf + end * depth
        try:
            accepted = compile_formula(formula, db.fields, db.dialect)
        except FormulaError as exc:
            assert "too complex" in exc.message or "nests too deeply" in exc.message
            break
    assert accepted is not None and depth > 3
    expr = accepted.expr
    sample = {"datetime": "2024-01-01T00:00:00Z", "number": 1.5, "integer": 1, "string": "x"}[accepted.type]
    cursor = encoder(db.dialect, accepted.type)(validator_for(accepted.type)(sample))  # as query.py pages
    query = (
        sa.select(db.id, expr.label("v"))
        .where(
            *parse_filters([{"field": "calc", "op": "is_not_empty"}], {"calc": FieldRef("calc", accepted.type, expr)}, db.dialect),
            sa.or_(sa.and_(expr == cursor, db.id > 1), sa.or_(expr > cursor, expr.is_(None))),
        )
        .order_by(sa.case((expr.is_(None), 1), else_=0), expr.desc(), db.id)
    )
    with db.engine.connect() as conn:
        conn.execute(query).all()


def test_long_but_reasonable_formulas_compile(db: Db) -> None:
    formula = " + ".join(["{order_id}"] * 8)
    assert db.formula(formula)[:3] == [8, 16, 24]


# ---------------------------------------------------------------------------------------------
# Injection attempts: refused, or plain values


@pytest.mark.parametrize(
    "formula",
    [
        "{total}; DROP TABLE orders",
        "'a' || (select 1)",
        "{customer name} || (SELECT group_concat(name) FROM sqlite_master)",
        "1; DELETE FROM orders",
        "{total} -- comment\n",
        "{total} /* c */",
        "pg_sleep(5)",
        "{customer name} = '' OR 1=1 --'",
        "{order_id} UNION SELECT 1",
        '"orders"."total"',
        "`total`",
        "{total}\x00",
        "$$x$$",
        "E'\\x41'",
    ],
)
def test_injection_formulas_are_refused(db: Db, formula: str) -> None:
    with pytest.raises(FormulaError):
        compile_formula(formula, db.fields, db.dialect)
    assert db.row_count() == len(ROWS)


@pytest.mark.parametrize(
    ("formula", "value"),
    [
        ("'x''; DROP TABLE orders; --'", "x'; DROP TABLE orders; --"),
        ("'\"; DROP TABLE orders; --'", '"; DROP TABLE orders; --'),
        ("'%(param_1)s ? :x $1'", "%(param_1)s ? :x $1"),
        ("'{total}'", "{total}"),
        ("'\\' || ''", "\\"),
    ],
)
def test_injection_text_is_a_plain_value(db: Db, formula: str, value: str) -> None:
    compiled = compile_formula(formula, db.fields, db.dialect)
    assert db.values(compiled.expr, compiled.type) == [value] * len(ROWS)
    dialect = sqlite.dialect() if db.dialect == "sqlite" else postgresql.psycopg.dialect(paramstyle="named")
    sql = str(sa.select(compiled.expr.label("v")).select_from(db.table).compile(dialect=dialect))
    assert value not in sql
    assert len(sqlglot.parse(sql, read="sqlite" if db.dialect == "sqlite" else "postgres")) == 1
    assert db.row_count() == len(ROWS)


def test_field_names_with_quotes_are_plain_names(db: Db) -> None:
    assert db.formula(f"length({{{QUOTED}}})") == [2, None, 1, 0, 8]
    assert db.row_count() == len(ROWS)


def test_user_text_never_appears_in_the_sql(db: Db) -> None:
    formula = "if({customer name} = 'Robert''); DROP TABLE orders;--', 'x' || 'EVIL', date '2024-01-01' || '')"
    compiled = compile_formula(formula, db.fields, db.dialect)
    sql = str(sa.select(compiled.expr.label("v")).select_from(db.table).compile(dialect=db.engine.dialect))
    for fragment in ("Robert", "DROP", "EVIL", "2024"):
        assert fragment not in sql


# ---------------------------------------------------------------------------------------------
# Generated formulas: a FormulaError, or the same answers on both engines, never a database error

NAMES = list(FIELDS)
INTS = st.one_of(st.integers(-1000, 1000), st.sampled_from([0, 1, -1, 2**31, 2**53, 2**62, 2**63 - 1]))
FLOATS = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 4)),
    st.sampled_from([0.5, 1e-300, 1e300, 1.7976931348623157e308, 5e-324, 1e15 + 0.5]),
)
TEXTS = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
DATES = st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)).map(lambda d: d.isoformat())
DATETIMES = st.datetimes(dt.datetime(1, 1, 2), dt.datetime(9999, 12, 30)).map(lambda d: d.isoformat() + "Z")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _number_literal(value: float) -> str:
    text = repr(float(value))
    return text if text[0] != "-" else f"({text})"


def _typed(kind: str, depth: int) -> st.SearchStrategy[str]:
    """Formulas that are mostly well typed, so the engines really compute something."""
    fields = [name for name, t in FIELDS.items() if t == kind]
    leaves: list[st.SearchStrategy[str]] = [st.sampled_from([f"{{{n}}}" for n in fields])] if fields else []
    if kind == "integer":
        leaves.append(INTS.map(lambda i: str(i) if i >= 0 else f"({i})"))
    elif kind == "number":
        leaves.append(FLOATS.map(_number_literal))
    elif kind == "string":
        leaves.append(TEXTS.map(_quote))
    elif kind == "boolean":
        leaves.append(st.sampled_from(["true", "false"]))
    elif kind == "date":
        leaves.extend([DATES.map(lambda d: f"date '{d}'"), st.just("today()")])
    elif kind == "datetime":
        leaves.extend([DATETIMES.map(lambda d: f"datetime('{d}')"), st.just("now()")])
    leaf = st.one_of(leaves)
    if depth <= 0:
        return leaf
    sub = lambda k: _typed(k, depth - 1)  # noqa: E731
    options: list[st.SearchStrategy[str]] = [leaf]
    if kind in ("integer", "number"):
        num = st.one_of(sub("integer"), sub("number"))
        ops = ["+", "-", "*"] if kind == "integer" else ["+", "-", "*", "/"]
        options.append(st.tuples(sub(kind), st.sampled_from(ops), sub(kind)).map(lambda t: f"({t[0]} {t[1]} {t[2]})"))
        options.append(sub(kind).map(lambda s: f"abs({s})"))
        options.append(sub(kind).map(lambda s: f"(-{s})"))
        options.append(st.tuples(sub("boolean"), sub(kind), sub(kind)).map(lambda t: f"if({t[0]}, {t[1]}, {t[2]})"))
        if kind == "integer":
            options.append(sub("string").map(lambda s: f"length({s})"))
            options.append(st.tuples(sub("date"), sub("date")).map(lambda t: f"days_between({t[0]}, {t[1]})"))
        else:
            options.append(st.tuples(num, num).map(lambda t: f"({t[0]} / {t[1]})"))
            options.append(st.tuples(num, st.integers(0, 4)).map(lambda t: f"round({t[0]}, {t[1]})"))
            options.append(
                st.tuples(st.sampled_from(["days", "hours", "minutes", "seconds"]), sub("datetime"), sub("datetime")).map(
                    lambda t: f"{t[0]}_between({t[1]}, {t[2]})"
                )
            )
    elif kind == "string":
        options.append(st.tuples(sub("string"), sub("string")).map(lambda t: f"({t[0]} || {t[1]})"))
        options.append(st.tuples(sub("string"), sub("integer"), sub("date")).map(lambda t: f"concat({t[0]}, {t[1]}, {t[2]})"))
        options.append(st.tuples(st.sampled_from(["lower", "upper", "trim"]), sub("string")).map(lambda t: f"{t[0]}({t[1]})"))
        options.append(st.tuples(sub("string"), sub("string")).map(lambda t: f"coalesce({t[0]}, {t[1]})"))
    elif kind == "boolean":
        comparable = st.sampled_from(["integer", "number", "string", "date", "datetime"])
        options.append(
            comparable.flatmap(
                lambda k: st.tuples(sub(k), st.sampled_from(["=", "<>", "<", "<=", ">", ">="]), sub(k))
            ).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
        )
        options.append(st.tuples(sub("boolean"), st.sampled_from(["and", "or"]), sub("boolean")).map(lambda t: f"({t[0]} {t[1]} {t[2]})"))
        options.append(sub("boolean").map(lambda s: f"(not {s})"))
        options.append(st.sampled_from(NAMES).map(lambda n: f"({{{n}}} is empty)"))
        options.append(comparable.flatmap(lambda k: st.tuples(sub(k), sub(k), sub(k))).map(lambda t: f"({t[0]} in ({t[1]}, {t[2]}))"))
        options.append(comparable.flatmap(lambda k: st.tuples(sub(k), sub(k), sub(k))).map(lambda t: f"({t[0]} between {t[1]} and {t[2]})"))
    elif kind == "date":
        options.append(st.tuples(sub("date"), st.sampled_from(["+", "-"]), sub("integer")).map(lambda t: f"({t[0]} {t[1]} {t[2]})"))
        options.append(sub("datetime").map(lambda s: f"date({s})"))
        options.append(st.tuples(sub("date"), sub("integer")).map(lambda t: f"add_days({t[0]}, {t[1]})"))
    elif kind == "datetime":
        options.append(
            st.tuples(st.sampled_from(["add_days", "add_hours", "add_minutes", "add_seconds"]), sub("datetime"), sub("integer")).map(
                lambda t: f"{t[0]}({t[1]}, {t[2]})"
            )
        )
        options.append(sub("date").map(lambda s: f"datetime({s})"))
        options.append(
            st.tuples(sub("datetime"), st.sampled_from(["+", "-"]), st.integers(-10**6, 10**6), st.sampled_from(["seconds", "hours", "days", "weeks"])).map(
                lambda t: f"({t[0]} {t[1]} interval '{t[2]} {t[3]}')"
            )
        )
    return st.one_of(options)


TYPED = st.sampled_from(["integer", "number", "string", "boolean", "date", "datetime"]).flatmap(lambda k: _typed(k, 2))

TOKENS = st.sampled_from(
    ["{total}", "{order_id}", "{customer name}", "{due date}", "{created [auto]}", "{paid}", "{items}", "{nope}", "{",
     "}", "(", ")", ",", "+", "-", "*", "/", "=", "<>", "<", ">=", "||", "'", "''", "'x'", "1", "2.5", "1e308", "-",
     "and", "or", "not", "is", "empty", "null", "true", "in", "between", "case", "when", "then", "else", "end",
     "if(", "round(", "lower(", "now()", "pg_sleep(", "date '2024-01-01'", "interval '1 day'", ";", "--", "select",
     '"', "%", "\x00", "é", "9223372036854775807", "days_between("]
)
RANDOM_FORMULAS = st.one_of(
    st.text(max_size=30),
    st.lists(TOKENS, max_size=12).map(" ".join),
    st.lists(TOKENS, max_size=12).map("".join),
)


def _compile_both(formula: str, both: tuple[Db, Db]) -> list[Any] | None:
    outcomes = []
    for database in both:
        try:
            compiled = compile_formula(formula, database.fields, database.dialect)
        except FormulaError as exc:
            outcomes.append(("error", exc.message))
            continue
        outcomes.append(("ok", compiled.type, database.values(compiled.expr, compiled.type)))
    assert outcomes[0][:2] == outcomes[1][:2], (formula, outcomes)
    if outcomes[0][0] == "error":
        return None
    left, right = outcomes[0][2], outcomes[1][2]
    if "now()" in formula or "today()" in formula:
        return left
    assert _same(left, right) or _same(right, left), (formula, left, right)
    return left


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(formula=TYPED)
def test_generated_formulas_agree_on_both_engines(both: tuple[Db, Db], formula: str) -> None:
    _compile_both(formula, both)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(formula=RANDOM_FORMULAS)
def test_random_text_is_a_formula_error_or_works(both: tuple[Db, Db], formula: str) -> None:
    _compile_both(formula, both)


# ---------------------------------------------------------------------------------------------
# Docs


def test_every_function_is_documented() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "formulas.md").read_text()
    missing = [name for name in FUNCTIONS if f"`{name}(" not in docs]
    assert not missing, f"functions missing from docs/formulas.md: {missing}"
