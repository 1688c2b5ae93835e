"""View filters: every op on every field type on SQLite and PostgreSQL with the same rows selected,
the errors users get, injection attempts, and generated values that never reach the database badly."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pushbase.columns import validator_for
from pushbase.errors import Invalid
from pushbase.storage.codecs import encoder, sql_type
from pushbase.views import FILTERS, FieldRef, compile_calculations, describe, parse_filters
from pushbase.views.filters import MAX_IN_VALUES

from .conftest import fresh_pg_schema, pg_sqlalchemy_url

PAYLOAD = "'; DROP TABLE items; --"
MAX = 9223372036854775807

FIELDS = {
    "id": "integer",
    "name": "string",
    "qty": "integer",
    "price": "number",
    "paid": "boolean",
    "due date": "date",
    "last pushed": "datetime",
    "data": "json",
}
ROWS = [
    (1, "Alice", 1, 10.5, True, "2024-01-31", "2024-01-01T10:00:00Z", [1]),
    (2, "alice smith", 2, 0.0, False, "2024-02-29", "2024-02-01T00:00:00Z", None),
    (3, "100% sure_thing", None, -3.25, None, None, None, {}),
    (4, "", MAX, None, True, "1999-12-31", "2023-12-31T23:59:59.999999Z", None),
    (5, None, -5, 1e300, False, "9999-12-31", "9999-12-31T23:59:59.999999Z", []),
    (6, "ÉCOLE école", 0, 2.5, True, "2024-01-31", "2024-01-01T10:00:00.000001Z", "x"),
    (7, PAYLOAD, 3, 1.0, False, "2024-03-01", "2024-03-01T00:00:00Z", None),
]


class Db:
    def __init__(self, dialect: str, engine: sa.Engine, schema: str | None) -> None:
        self.dialect = dialect
        self.engine = engine
        metadata = sa.MetaData(schema=schema)
        self.table = sa.Table(
            "items",
            metadata,
            *[sa.Column(name, sql_type(dialect, kind), primary_key=name == "id", autoincrement=False) for name, kind in FIELDS.items()],
        )
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                self.table.insert(),
                [
                    {
                        name: encoder(dialect, kind)(None if value is None else validator_for(kind)(value))
                        for (name, kind), value in zip(FIELDS.items(), row)
                    }
                    for row in ROWS
                ],
            )
        self.fields = {name: FieldRef(name, kind, self.table.c[name]) for name, kind in FIELDS.items()}

    def ids(self, filters: list[dict[str, Any]], fields: dict[str, FieldRef] | None = None) -> list[int]:
        conditions = parse_filters(filters, fields or self.fields, self.dialect)
        query = sa.select(self.table.c.id).where(*conditions).order_by(self.table.c.id)
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def row_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one()


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Db:
    path = tmp_path_factory.mktemp("filters") / "filters.db"
    return Db("sqlite", sa.create_engine(f"sqlite:///{path}"), None)


@pytest.fixture(scope="module")
def pg_db():
    engine = sa.create_engine(pg_sqlalchemy_url())
    try:
        with fresh_pg_schema("pb_filters") as schema:
            yield Db("postgresql", engine, schema)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Db:
    return request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "pg_db")


@pytest.fixture
def both(sqlite_db: Db, pg_db: Db) -> tuple[Db, Db]:
    return sqlite_db, pg_db


# ---------------------------------------------------------------------------------------------
# Every op, the same rows on both engines

CASES: list[tuple[str, str, Any, list[int]]] = [
    ("name", "equals", "Alice", [1]),
    ("name", "equals", "alice", []),
    ("name", "not_equals", "Alice", [2, 3, 4, 5, 6, 7]),  # empty values included
    ("name", "is_empty", None, [4, 5]),  # null or ''
    ("name", "is_not_empty", None, [1, 2, 3, 6, 7]),
    ("name", "contains", "alice", [1, 2]),  # ASCII case ignored
    ("name", "contains", "ALICE S", [2]),
    ("name", "contains", "%", [3]),  # wildcards are literal
    ("name", "contains", "_", [3]),
    ("name", "contains", "0% s", [3]),
    ("name", "contains", "e_t", [3]),
    ("name", "contains", "/", []),
    ("name", "contains", "", [1, 2, 3, 4, 6, 7]),
    ("name", "contains", "école", [6]),
    ("name", "contains", "École", [6]),  # ASCII letters match either case; É only matches É
    ("name", "contains", "ecole", []),
    ("name", "starts_with", "al", [1, 2]),
    ("name", "starts_with", "%", []),
    ("name", "starts_with", "100%", [3]),
    ("name", "gt", "a", [2, 6]),  # code point order
    ("name", "lte", "Alice", [1, 3, 4, 7]),
    ("name", "in", ["Alice", ""], [1, 4]),
    ("name", "in", [], []),
    ("name", "equals", PAYLOAD, [7]),
    ("name", "contains", "DROP TABLE", [7]),
    ("qty", "equals", 2, [2]),
    ("qty", "equals", 2.0, [2]),
    ("qty", "equals", 2.5, []),
    ("qty", "not_equals", 2, [1, 3, 4, 5, 6, 7]),
    ("qty", "gt", 1.5, [2, 4, 7]),
    ("qty", "gte", 2, [2, 4, 7]),
    ("qty", "lt", 0, [5]),
    ("qty", "lte", 0, [5, 6]),
    ("qty", "equals", MAX, [4]),
    ("qty", "equals", MAX - 1, []),
    ("qty", "gt", 9.2e18, [4]),
    ("qty", "equals", 1e300, []),
    ("qty", "in", [1, 3, 2.5], [1, 7]),
    ("qty", "is_empty", None, [3]),
    ("price", "gt", 0, [1, 5, 6, 7]),
    ("price", "lt", 0, [3]),
    ("price", "equals", 2.5, [6]),
    ("price", "equals", 1, [7]),
    ("price", "gte", 1e300, [5]),
    ("price", "is_not_empty", None, [1, 2, 3, 5, 6, 7]),
    ("paid", "equals", True, [1, 4, 6]),
    ("paid", "equals", False, [2, 5, 7]),
    ("paid", "not_equals", True, [2, 3, 5, 7]),
    ("paid", "in", [True], [1, 4, 6]),
    ("paid", "is_empty", None, [3]),
    ("due date", "equals", "2024-01-31", [1, 6]),
    ("due date", "gt", "2024-01-31", [2, 5, 7]),
    ("due date", "lt", "2000-01-01", [4]),
    ("due date", "in", ["2024-02-29", "1999-12-31"], [2, 4]),
    ("due date", "is_empty", None, [3]),
    ("last pushed", "gt", "2024-01-01T10:00:00Z", [2, 5, 6, 7]),
    ("last pushed", "gte", "2024-01-01", [1, 2, 5, 6, 7]),  # a date means midnight UTC
    ("last pushed", "lt", "2024-01-01", [4]),
    ("last pushed", "equals", "2024-01-01T10:00:00+00:00", [1]),
    ("last pushed", "equals", "2024-01-01T11:00:00+01:00", [1]),
    ("last pushed", "lte", "2024-01-01T10:00:00.000001Z", [1, 4, 6]),
    ("last pushed", "is_empty", None, [3]),
    ("last pushed", "in", ["2024-03-01T00:00:00Z", "2024-02-01"], [2, 7]),
    ("data", "is_empty", None, [2, 4, 7]),
    ("data", "is_not_empty", None, [1, 3, 5, 6]),
]


@pytest.mark.parametrize(("field", "op", "value", "expected"), CASES, ids=[f"{c[0]} {c[1]} {c[2]!r}" for c in CASES])
def test_filter_ops(db: Db, field: str, op: str, value: Any, expected: list[int]) -> None:
    raw: dict[str, Any] = {"field": field, "op": op}
    if FILTERS[op].needs_value:
        raw["value"] = value
    assert db.ids([raw]) == expected


def test_every_op_is_exercised() -> None:
    assert {case[1] for case in CASES} == set(FILTERS)


def test_filters_combine_with_and(db: Db) -> None:
    filters = [{"field": "paid", "op": "equals", "value": True}, {"field": "qty", "op": "lt", "value": 2}]
    assert db.ids(filters) == [1, 6]


def test_filters_on_calculations(db: Db) -> None:
    calcs = compile_calculations(
        [("double qty", "{qty} * 2"), ("label", "lower(coalesce({name}, 'none'))"), ("late", "{due date} < date '2024-02-01'")],
        db.fields,
        db.dialect,
    )
    fields = {**db.fields, **calcs}
    assert db.ids([{"field": "double qty", "op": "gt", "value": 3}], fields) == [2, 7]
    assert db.ids([{"field": "label", "op": "starts_with", "value": "none"}], fields) == [5]
    assert db.ids([{"field": "late", "op": "equals", "value": True}], fields) == [1, 4, 6]
    assert db.ids([{"field": "late", "op": "not_equals", "value": True}], fields) == [2, 3, 5, 7]


def test_injection_values_are_plain_values(db: Db) -> None:
    for value in (PAYLOAD, "' OR '1'='1", "1; DELETE FROM items", "%' OR 1=1 --", "\\", "$1", "%(name)s", ":name", "?"):
        db.ids([{"field": "name", "op": "equals", "value": value}])
        db.ids([{"field": "name", "op": "contains", "value": value}])
        db.ids([{"field": "name", "op": "in", "value": [value, value]}])
    assert db.ids([{"field": "name", "op": "equals", "value": "' OR '1'='1"}]) == []
    assert db.row_count() == len(ROWS)


def test_field_names_are_looked_up_not_pasted(db: Db) -> None:
    with pytest.raises(Invalid) as info:
        db.ids([{"field": "name; DROP TABLE items", "op": "is_empty"}])
    assert "unknown field 'name; DROP TABLE items'" in info.value.message
    assert db.row_count() == len(ROWS)


# ---------------------------------------------------------------------------------------------
# Errors


def _error(filters: Any, dialect: str = "sqlite") -> Invalid:
    metadata = sa.MetaData()
    table = sa.Table("t", metadata, *[sa.Column(name, sql_type(dialect, kind)) for name, kind in FIELDS.items()])
    fields = {name: FieldRef(name, kind, table.c[name]) for name, kind in FIELDS.items()}
    with pytest.raises(Invalid) as info:
        parse_filters(filters, fields, dialect)
    assert 400 <= info.value.status_code < 500
    assert info.value.to_json()["error"]["code"] == "invalid_filter"
    return info.value


@pytest.mark.parametrize(
    ("filters", "fragment"),
    [
        ("name equals x", "must be a list"),
        ({"field": "name"}, "must be a list"),
        ([1], "filters[0] must be an object"),
        ([{"field": "name", "op": "is_empty", "extra": 1}], "unknown keys 'extra'"),
        ([{"op": "is_empty"}], "filters[0]: field must be"),
        ([{"field": "name", "op": "equals"}], "equals needs a value"),
        ([{"field": "name", "op": "equals", "value": None}], "use is_empty"),
        ([{"field": "qty", "op": "equals", "value": "3"}], "expected a number"),
        ([{"field": "qty", "op": "equals", "value": True}], "expected a number"),
        ([{"field": "qty", "op": "equals", "value": 2**63}], "64-bit"),
        ([{"field": "price", "op": "gt", "value": "1"}], "expected a number"),
        ([{"field": "paid", "op": "equals", "value": "true"}], "expected true or false"),
        ([{"field": "due date", "op": "equals", "value": "2024-02-30"}], "2024-02-30"),
        ([{"field": "due date", "op": "equals", "value": "31/01/2024"}], "ISO 8601"),
        ([{"field": "last pushed", "op": "gt", "value": "yesterday"}], "ISO 8601"),
        ([{"field": "name", "op": "contains", "value": 5}], "expected a string"),
        ([{"field": "name", "op": "equals", "value": "a\x00b"}], "NUL"),
        ([{"field": "name", "op": "contains", "value": "x" * 50_000}], "too long"),
        ([{"field": "qty", "op": "contains", "value": "1"}], "contains does not work on integer fields like 'qty'"),
        ([{"field": "paid", "op": "gt", "value": True}], "gt does not work on boolean fields"),
        ([{"field": "data", "op": "equals", "value": [1]}], "equals does not work on json fields"),
        ([{"field": "name", "op": "in", "value": "Alice"}], "takes a list"),
        ([{"field": "name", "op": "in", "value": ["a", None]}], "use is_empty"),
        ([{"field": "name", "op": "in", "value": ["a"] * (MAX_IN_VALUES + 1)}], f"at most {MAX_IN_VALUES}"),
        ([{"field": "name", "op": "is_empty", "value": "x"}], "is_empty takes no value"),
        ([{"field": "name", "op": 5}], "unknown op 5"),
    ],
)
def test_bad_filters(filters: Any, fragment: str) -> None:
    error = _error(filters)
    assert fragment in error.message


def test_unknown_field_suggests_the_closest_and_names_the_index() -> None:
    error = _error([{"field": "name", "op": "is_empty"}, {"field": "last pushd", "op": "is_empty"}])
    assert error.message == "filters[1]: unknown field 'last pushd'; did you mean 'last pushed'?"
    assert error.details == {"index": 1, "field": "last pushd", "suggestion": "last pushed"}
    assert _error([{"field": "NAME", "op": "is_empty"}]).details["suggestion"] == "name"


def test_unknown_op_lists_the_valid_ones() -> None:
    error = _error([{"field": "name", "op": "equal", "value": "x"}])
    assert error.message.startswith("filters[0]: unknown op 'equal' (did you mean 'equals'?); valid ops: equals, not_equals, is_empty")
    assert error.details["valid_ops"] == list(FILTERS)
    assert error.details["index"] == 0


def test_value_errors_name_the_index_field_and_op() -> None:
    error = _error([{"field": "name", "op": "is_empty"}, {"field": "qty", "op": "gt", "value": "many"}])
    assert error.message.startswith("filters[1]: gt on 'qty': \"many\" is not usable")
    assert error.details["index"] == 1
    assert error.details["field"] == "qty"
    assert error.details["op"] == "gt"


# ---------------------------------------------------------------------------------------------
# The registry and describe()


def test_registry_entries() -> None:
    assert list(FILTERS) == ["equals", "not_equals", "is_empty", "is_not_empty", "gt", "gte", "lt", "lte", "contains", "starts_with", "in"]
    for key, op in FILTERS.items():
        assert op.key == key
        assert "{field}" in op.label
        assert ("{value}" in op.label) == op.needs_value


@pytest.mark.parametrize(
    ("raw", "sentence"),
    [
        ({"field": "needs pushing", "op": "equals", "value": True}, "needs pushing equals true"),
        ({"field": "last pushed", "op": "is_empty"}, "last pushed is empty"),
        ({"field": "receipt id", "op": "is_not_empty"}, "receipt id is not empty"),
        ({"field": "total", "op": "gt", "value": 40}, "total > 40"),
        ({"field": "total", "op": "lte", "value": 2.5}, "total <= 2.5"),
        ({"field": "status", "op": "not_equals", "value": "shipped"}, 'status does not equal "shipped"'),
        ({"field": "status", "op": "in", "value": ["a", "b"]}, 'status is one of ["a","b"]'),
        ({"field": "name", "op": "contains", "value": "acme"}, 'name contains "acme"'),
        ({"field": "name", "op": "starts_with", "value": "A"}, 'name starts with "A"'),
        ({"field": "x", "op": "bogus", "value": 1}, "x bogus 1"),
    ],
)
def test_describe(raw: dict[str, Any], sentence: str) -> None:
    assert describe(raw) == sentence


def test_every_op_is_documented() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "formulas.md").read_text()
    missing = [key for key in FILTERS if f"`{key}`" not in docs]
    assert not missing, f"filter ops missing from docs/formulas.md: {missing}"


# ---------------------------------------------------------------------------------------------
# Generated values: Invalid, or the same rows on both engines, never a database error

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.text(),
    st.dates().map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.sampled_from(["%", "_", "/", "%_/", "''", "\\", "\x00", "é", PAYLOAD, "2024-01-31", "Alice", "1e400"]),
)
VALUES = st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=4), st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2))
FILTER = st.fixed_dictionaries(
    {"field": st.sampled_from(list(FIELDS) + ["nope"]), "op": st.sampled_from(list(FILTERS) + ["eq"])},
    optional={"value": VALUES},
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(filters=st.lists(FILTER, min_size=1, max_size=2))
def test_generated_filters_are_invalid_or_agree(both: tuple[Db, Db], filters: list[dict[str, Any]]) -> None:
    outcomes = []
    for database in both:
        try:
            outcomes.append(database.ids(filters))
        except Invalid as exc:
            outcomes.append(("invalid", exc.message))
    assert outcomes[0] == outcomes[1], (filters, outcomes)


def _typed_value(kind: str) -> st.SearchStrategy[Any]:
    return {
        "string": st.one_of(st.text(max_size=6), st.sampled_from(["Alice", "alice", "%", "_", "é", "É", "", PAYLOAD])),
        "integer": st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([MAX, 2, 0, -5])),
        "number": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**53), 2**53), st.sampled_from([2.5, 1e300, 0.0])),
        "boolean": st.booleans(),
        "date": st.dates().map(lambda d: d.isoformat()),
        "datetime": st.one_of(st.datetimes().map(lambda d: d.isoformat() + "Z"), st.dates().map(lambda d: d.isoformat())),
        "json": st.none(),
    }[kind]


def _typed_filter(name: str) -> st.SearchStrategy[dict[str, Any]]:
    kind = FIELDS[name]
    ops = [key for key, op in FILTERS.items() if kind in op.field_types]

    def with_op(key: str) -> st.SearchStrategy[dict[str, Any]]:
        if not FILTERS[key].needs_value:
            return st.just({"field": name, "op": key})
        value = st.lists(_typed_value(kind), max_size=4) if key == "in" else _typed_value(kind)
        return value.map(lambda v: {"field": name, "op": key, "value": v})

    return st.sampled_from(ops).flatmap(with_op)


TYPED_FILTER = st.sampled_from([name for name in FIELDS if name != "id"]).flatmap(_typed_filter)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(filters=st.lists(TYPED_FILTER, min_size=1, max_size=2))
def test_generated_typed_filters_agree(both: tuple[Db, Db], filters: list[dict[str, Any]]) -> None:
    outcomes = []
    for database in both:
        try:
            outcomes.append(database.ids(filters))
        except Invalid as exc:
            outcomes.append(("invalid", exc.message))
    assert outcomes[0] == outcomes[1], (filters, outcomes)
