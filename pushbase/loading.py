"""Checking and writing rows in bulk: the hot path of every ingest job.

Rows are checked column by column, so the common case (every value already of the right JSON type)
costs one pass of C-level checks per column instead of a Python call per value; only a column that
fails the fast check is walked value by value to name each problem. Writes go through the DBAPI
directly (SQLite ``executemany``, PostgreSQL ``COPY``) with SQL generated from our own physical
names (``ds_<id>``, ``c<n>``), never from user text.
"""
from __future__ import annotations

import datetime as dt
import functools
import itertools
import math
import operator
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Iterable, Sequence

import msgspec
import orjson
import sqlalchemy as sa
from psycopg.types.json import Jsonb

from .columns import INT64_MAX, INT64_MIN, MAX_JSON_DEPTH, fits_int64, json_depth, flatten_row, modification_time, validator_for
from .datasets import Dataset
from .exact_json import may_hold_long_integers, same_json
from .rows import JSON, struct_names_ok
from .storage import Store, codecs, cursors

__all__ = [
    "JobFailed",
    "LoadCounts",
    "Checked",
    "check_rows",
    "check_typed",
    "check_keys",
    "write_rows",
    "delete_keys",
    "MAX_ERRORS_LISTED",
]

MAX_ERRORS_LISTED = 100
_LOOKUP_CHUNK = 2000
_ROWS_PER_INSERT = 100
_MAX_PARAMS = 30_000  # SQLite allows 32,766 bound parameters per statement


class JobFailed(Exception):
    """The payload broke a rule: the job ends ErrorExit with these errors and loads nothing."""

    def __init__(self, errors: list[dict[str, Any]], reason: str, total: int | None = None) -> None:
        super().__init__(reason)
        self.errors = errors
        self.reason = reason
        self.total = total if total is not None else len(errors)


@dataclass
class LoadCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0


@dataclass
class Checked:
    """A checked payload, column by column: ``columns[i]`` holds the stored values of the dataset's
    i-th column, one per row. Kept column-wise because that is how both checks produce it, and rows as
    tuples would cost an allocation per row (and the garbage collector's attention) before the write."""

    columns: list[Sequence[Any]]
    count: int
    # SQLite: every row's parameters already grouped for multi-row INSERTs (``group_rows``), built by
    # the request thread so the worker does less inside the write lock. Used when all rows are new.
    groups: list[tuple[Any, ...]] | None = None

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        return list(zip(*self.columns)) if self.columns else [() for _ in range(self.count)]

    def key_values(self, dataset: Dataset) -> Sequence[Any]:
        """The unique-id values in row order: plain values for one column, tuples for several."""
        positions = [next(i for i, c in enumerate(dataset.columns) if c.name == n) for n in dataset.unique_id]
        if len(positions) == 1:
            return self.columns[positions[0]]
        return list(zip(*[self.columns[p] for p in positions]))


EXPECTED = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean (true/false)",
    "date": "date (YYYY-MM-DD)",
    "datetime": "datetime (ISO 8601)",
    "json": "any JSON",
}


def excerpt(value: Any) -> Any:
    """A refused value as an error shows it: long text cut, objects and arrays as JSON text, and an
    integer beyond 64 bits as its digits (every JSON writer here reads it exactly that way)."""
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "…"
    if isinstance(value, (dict, list)):
        text = JSON.encode(value).decode()
        return text if len(text) <= 200 else text[:200] + "…"
    if type(value) is int and not fits_int64(value):
        return str(value)
    return value


class _Errors:
    def __init__(self) -> None:
        self.listed: list[dict[str, Any]] = []
        self.count = 0

    def add(self, row: int, column: str | None, message: str, value: Any = None, expected: str | None = None) -> None:
        self.count += 1
        if len(self.listed) < MAX_ERRORS_LISTED:
            error = {"row": row, "column": column, "message": message, "value": excerpt(value)}
            if expected:
                error["expected"] = expected
            self.listed.append(error)

    def raise_if_any(self, verb: str) -> None:
        if self.count:
            self.listed.sort(key=lambda e: (e["row"], e["column"] or ""))
            raise JobFailed(self.listed, f"{self.count} problem(s) in the payload; nothing was {verb}", self.count)


def stored_encoder(dialect: str, column_type: str) -> Callable[[Any], Any]:
    """Canonical value -> what the DBAPI writes. Like codecs.encoder, but json is always text here
    (SQLite TEXT; PostgreSQL COPY/``::jsonb``), because these writes bypass SQLAlchemy's JSON type."""
    if column_type == "json":
        return codecs.json_text
    return codecs.encoder(dialect, column_type)


def _fast_ok(column_type: str, values: list[Any]) -> bool:
    """True when every value is already acceptable as is (None or the exact JSON type)."""
    if column_type == "string":
        return all(type(v) is str or v is None for v in values) and not any("\x00" in v for v in values if v)
    if column_type == "integer":
        if not all(type(v) is int or v is None for v in values):
            return False
        present = [v for v in values if v is not None]
        return not present or (INT64_MIN <= min(present) and max(present) <= INT64_MAX)
    if column_type == "number":
        if not all(type(v) is float or type(v) is int or v is None for v in values):
            return False
        # A long integer (beyond 64 bits, read exactly) goes to the validator, which makes it a float.
        return all(math.isfinite(v) if type(v) is float else fits_int64(v) for v in values if v is not None)
    if column_type == "boolean":
        return all(type(v) is bool or v is None for v in values)
    return False


def _check_column(store: Store, name: str, column_type: str, values: list[Any], errors: _Errors) -> list[Any]:
    encode = stored_encoder(store.dialect, column_type)
    if _fast_ok(column_type, values):
        return values if encode is codecs.identity else list(map(encode, values))
    validate = validator_for(column_type)
    out: list[Any] = []
    # Dates and datetimes repeat a lot within a payload; parse each distinct text once.
    cache: dict[Any, Any] = {}
    cacheable = column_type in ("date", "datetime")
    for index, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        if cacheable and type(value) is str:
            hit = cache.get(value)
            if hit is not None:
                out.append(hit)
                continue
        try:
            stored = encode(validate(value))
        except ValueError as exc:
            errors.add(index, name, str(exc), value, EXPECTED[column_type])
            out.append(None)
            continue
        if column_type == "json" and "\\u0000" in stored:
            errors.add(index, name, "JSON text may not contain the NUL character (U+0000)", value, EXPECTED[column_type])
        if cacheable and type(value) is str:
            cache[value] = stored
        out.append(stored)
    return out


def check_rows(store: Store, dataset: Dataset, items: Sequence[Any]) -> Checked:
    """Check a load payload against the dataset; raise JobFailed naming every problem (up to 100)."""
    errors = _Errors()
    known = frozenset(c.name for c in dataset.columns)
    nested = dataset.nested
    objects: list[dict[str, Any]] = []
    ignore_unknown = dataset.ignore_unknown_fields
    for index, item in enumerate(items):
        if type(item) is not dict:
            errors.add(index, None, "each row must be a JSON object", item)
            objects.append({})
            continue
        if nested and not nested.isdisjoint(item):
            item = flatten_row(item, nested)
        if not ignore_unknown and not known.issuperset(item):
            for key in sorted(set(item) - known):
                errors.add(index, key, f"the dataset has no column {key!r}", item[key])
        objects.append(item)
    columns = []
    unique = set(dataset.unique_id)
    for column in dataset.columns:
        values = [item.get(column.name) for item in objects]
        if column.name in unique:
            for index, value in enumerate(values):
                if value is None and index < len(items) and type(items[index]) is dict:
                    errors.add(index, column.name, "a unique-id value is required", None, EXPECTED[column.type])
        columns.append(_check_column(store, column.name, column.type, values, errors))
    if unique:
        # Also when other rows failed: the errors name every problem of the payload at once. A
        # missing or unreadable unique-id value (None here) is reported above, never as a repeat.
        positions = [next(i for i, c in enumerate(dataset.columns) if c.name == n) for n in dataset.unique_id]
        keys = list(zip(*[columns[p] for p in positions]))
        if len(set(keys)) != len(keys):
            first_seen: dict[tuple[Any, ...], int] = {}
            for index, key in enumerate(keys):
                if None in key:
                    continue
                if key in first_seen:
                    errors.add(index, ",".join(dataset.unique_id), f"unique id repeats row {first_seen[key]} of the same payload", list(key))
                else:
                    first_seen[key] = index
    errors.raise_if_any("loaded")
    return Checked(columns, len(objects))


def check_keys(store: Store, dataset: Dataset, items: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Delete payloads: each item names a row by its unique id (an object, or a bare value for one column)."""
    if not dataset.unique_id:
        raise JobFailed([], f"dataset {dataset.name!r} has no unique id; use delete-all or give it a unique id")
    columns = [dataset.column(n) for n in dataset.unique_id]
    errors = _Errors()
    keys = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            if len(columns) == 1 and not isinstance(item, (list, dict)):
                item = {columns[0].name: item}
            else:
                errors.add(index, None, "each item must be an object with the unique-id fields", item)
                continue
        key = []
        for column in columns:
            value = item.get(column.name)
            try:
                if value is None:
                    raise ValueError("a unique-id value is required")
                key.append(stored_encoder(store.dialect, column.type)(validator_for(column.type)(value)))
            except ValueError as exc:
                errors.add(index, column.name, str(exc), value, EXPECTED[column.type])
        if len(key) == len(columns):
            keys.append(tuple(key))
    errors.raise_if_any("deleted")
    return keys


# ------------------------------------------------------------------------------------------------
# The typed fast path: decode and check a JSON body in one pass with msgspec


_INT = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
_PYTHON_TYPES: dict[str, Any] = {
    "string": str,
    "integer": _INT,
    "number": float,
    "boolean": bool,
    "date": dt.date,
    "datetime": dt.datetime,
    "json": msgspec.Raw,
}


@functools.lru_cache(maxsize=512)
def _typed_decoder(columns: tuple[tuple[str, str], ...], unique: frozenset[str], ignore_unknown: bool) -> msgspec.json.Decoder[Any] | None:
    """A decoder of payloads into row structs; None when msgspec cannot have the column names."""
    if not struct_names_ok([name for name, _ in columns]):
        return None
    fields = []
    for i, (name, column_type) in enumerate(columns):
        kind = _PYTHON_TYPES[column_type]
        if name in unique:
            fields.append((f"f{i}", kind))
        else:
            fields.append((f"f{i}", kind | None, None))
    # Field names are generated; rename maps them to the user's column names, whatever they are.
    row = msgspec.defstruct(
        "Row", fields, rename={f"f{i}": name for i, (name, _) in enumerate(columns)}, forbid_unknown_fields=not ignore_unknown, gc=False
    )
    return msgspec.json.Decoder(list[row] | row)  # type: ignore[valid-type]


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _micros(value: dt.datetime | None) -> int | None:
    return None if value is None else codecs.datetime_to_micros(_utc(value))


class _NeedsGeneralPath(Exception):
    """A json value may hold an integer beyond 64 bits, or a datetime falls outside years 1-9999 once
    in UTC: the typed path leaves the payload to the general one, which names the value and refuses it."""


# The datetimes a column holds: years 1 to 9999 in UTC (what Python and both engines can read back).
_MIN_MICROS = codecs.datetime_to_micros(dt.datetime.min.replace(tzinfo=dt.timezone.utc))
_MAX_MICROS = codecs.datetime_to_micros(dt.datetime.max.replace(tzinfo=dt.timezone.utc))


def _may_nest_too_deep(text: bytes) -> bool:
    # Counting brackets is cheap and nearly always settles it; only a value with many is measured.
    return text.count(b"[") + text.count(b"{") > MAX_JSON_DEPTH and json_depth(orjson.loads(text)) > MAX_JSON_DEPTH


def _convert_column(dialect: str, column_type: str, values: tuple[Any, ...]) -> tuple[Any, ...] | list[Any] | None:
    """Decoded values -> what the DBAPI writes; ``None`` when the column needs no conversion.
    One comprehension per column: these run for every row of every payload."""
    if column_type == "json":
        texts = [None if v is None else bytes(v) for v in values]
        if any(may_hold_long_integers(t) or _may_nest_too_deep(t) for t in texts if t is not None):
            # The general path reads such integers exactly and refuses them, and measures the nesting.
            raise _NeedsGeneralPath
        return [None if t is None else t.decode() for t in texts]
    if column_type == "datetime" and dialect == "sqlite":
        try:
            # The common case: every value has a UTC offset (aware), none missing. The arithmetic of
            # codecs.datetime_to_micros, inline: timedelta // timedelta cost twice as much.
            micros = [((d := v - _EPOCH).days * 86400 + d.seconds) * 1_000_000 + d.microseconds for v in values]
        except TypeError:  # a naive value (read as UTC) or a missing one
            try:
                micros = list(map(_micros, values))
            except OverflowError:
                raise _NeedsGeneralPath from None
        present = [m for m in micros if m is not None] if None in micros else micros
        lowest, highest = min(present, default=0), max(present, default=0)
        if lowest < _MIN_MICROS or highest > _MAX_MICROS:
            raise _NeedsGeneralPath
        return micros
    if column_type == "datetime":
        if all(v is not None and v.tzinfo is dt.timezone.utc for v in values):
            return None
        try:
            return [None if v is None else _utc(v) for v in values]
        except OverflowError:
            raise _NeedsGeneralPath from None
    if column_type in ("date", "boolean") and dialect == "sqlite":
        return list(map(codecs.encoder(dialect, column_type), values))
    return None


def check_typed(store: Store, dataset: Dataset, body: bytes) -> Checked | None:
    """Decode and check a JSON body in one C-level pass. ``None`` when the body needs the general path
    (nested columns to flatten, a problem to report in detail, NUL characters), which then decides;
    raises ``msgspec.DecodeError`` when the body is not JSON at all."""
    if dataset.nested or b"\\u0000" in body:
        return None
    decoder = _typed_decoder(tuple((c.name, c.type) for c in dataset.columns), frozenset(dataset.unique_id), dataset.ignore_unknown_fields)
    if decoder is None:
        return None
    try:
        value = decoder.decode(body)
    except msgspec.ValidationError:
        return None
    structs = value if isinstance(value, list) else [value]
    count = len(structs)
    if not count or not dataset.columns:
        return Checked([[] for _ in dataset.columns], count)
    # Column by column straight from the structs: no tuple per row.
    columns: list[Sequence[Any]] = [list(map(getter, structs)) for getter in _field_getters(len(dataset.columns))]
    del structs, value
    for i, column in enumerate(dataset.columns):
        if column.type in ("json", "datetime", "date", "boolean"):
            try:
                converted = _convert_column(store.dialect, column.type, columns[i])
            except _NeedsGeneralPath:
                return None
            if converted is not None:
                columns[i] = converted
    checked = Checked(columns, count)
    if dataset.unique_id:
        keys = checked.key_values(dataset)
        if len(set(keys)) != count:
            return None
    return checked


@functools.lru_cache(maxsize=64)
def _field_getters(count: int) -> list[Callable[[Any], Any]]:
    return [operator.attrgetter(f"f{i}") for i in range(count)]


# ------------------------------------------------------------------------------------------------
# Writing


def _chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def _placeholder(store: Store, column_type: str) -> str:
    if store.dialect == "sqlite":
        return "?"
    return "%s::jsonb" if column_type == "json" else "%s"


def same_stored_value(dialect: str, column_type: str, old: Any, new: Any) -> bool:
    """Whether a stored value and a new one are the same value: an upsert or a row update that changes
    nothing leaves ``last modified [auto]`` where it was. ``new`` as ``stored_encoder`` gives it (json:
    its text); ``old`` as the driver reads it (json: text on SQLite, the value on PostgreSQL, where a
    stored JSON string is a Python string, not JSON text). json values differ when ``true`` became
    ``1``: Python's ``==`` would call them equal and keep the old one."""
    if old is None or new is None:
        return old is None and new is None
    if column_type == "json":
        if dialect == "sqlite" and old == new:  # the same text from the same writer: a row sent again
            return True
        # Dataset json values never hold integers beyond 64 bits (refused when loaded): orjson reads them.
        return same_json(orjson.loads(old) if dialect == "sqlite" else old, orjson.loads(new))
    if column_type == "number":
        return float(old) == float(new)
    return bool(old == new)


def _existing(store: Store, conn: sa.Connection, dataset: Dataset, keys: Sequence[Any]) -> dict[Any, tuple[Any, ...]]:
    """Rows already stored under these keys (plain values for a one-column unique id, tuples for
    several, as ``Checked.key_values``): key -> (_id, value1, value2 ...)."""
    positions = [next(i for i, c in enumerate(dataset.columns) if c.name == n) for n in dataset.unique_id]
    uid_cols = [dataset.column(n).col for n in dataset.unique_id]
    select = f'SELECT _id, {", ".join(c.col for c in dataset.columns)} FROM "ds_{dataset.id}"'
    cursor = cursors.rows_cursor(conn)
    found: dict[Any, tuple[Any, ...]] = {}
    # Text order in PostgreSQL follows the database's collation, not Python's code-point order, so the
    # range below is only asked there for non-text ids (SQLite compares text by code point too).
    if len(uid_cols) == 1 and keys and (store.dialect == "sqlite" or dataset.column(dataset.unique_id[0]).type != "string"):
        # Appends usually carry new, increasing ids: when no stored row falls between the payload's
        # smallest and largest key (one index probe), none of its keys can exist.
        mark = "?" if store.dialect == "sqlite" else "%s"
        cursor.execute(f'SELECT 1 FROM "ds_{dataset.id}" WHERE {uid_cols[0]} BETWEEN {mark} AND {mark} LIMIT 1', (min(keys), max(keys)))
        if cursor.fetchone() is None:
            return found
    if len(uid_cols) == 1 and store.dialect == "sqlite":
        # One parameter whatever the batch size: the keys as a JSON array, unpacked by json_each.
        for chunk in _chunks(keys, 20000):
            cursor.execute(f"{select} WHERE {uid_cols[0]} IN (SELECT value FROM json_each(?))", (orjson.dumps(list(chunk)).decode(),))
            for row in cursor.fetchall():
                found[row[1 + positions[0]]] = row
        return found
    if len(uid_cols) == 1:
        for chunk in _chunks(keys, 20000):
            cursor.execute(f"{select} WHERE {uid_cols[0]} = ANY(%s)", (list(chunk),))
            for row in cursor.fetchall():
                found[row[1 + positions[0]]] = tuple(row)
        return found
    table = store.dataset_table(dataset.physical)
    where_cols = [table.c[c] for c in uid_cols]
    for chunk in _chunks(keys, max(1, _LOOKUP_CHUNK // len(uid_cols))):
        query = sa.select(table.c._id, *[table.c[c.col] for c in dataset.columns]).where(sa.tuple_(*where_cols).in_(list(chunk)))
        for row in conn.execute(query):
            found[tuple(row[1 + p] for p in positions)] = tuple(row)
    return found


def write_rows(store: Store, conn: sa.Connection, dataset: Dataset, checked: Checked) -> LoadCounts:
    """Insert, or upsert on the unique id, inside the caller's transaction."""
    counts = LoadCounts()
    if not checked.count:
        return counts
    now = codecs.encoder(store.dialect, "datetime")(modification_time())
    insert_columns = checked.columns
    inserted = checked.count
    updates: list[tuple[Any, ...]] = []
    if dataset.unique_id:
        keys = checked.key_values(dataset)
        existing = _existing(store, conn, dataset, keys)
        if existing:
            types = [c.type for c in dataset.columns]
            inserts: list[tuple[Any, ...]] = []
            for row, key in zip(zip(*checked.columns), keys):
                old = existing.get(key)
                if old is None:
                    inserts.append(row)
                elif all(same_stored_value(store.dialect, t, o, n) for t, o, n in zip(types, old[1:], row)):
                    counts.unchanged += 1
                else:
                    updates.append((*row, now, old[0]))
            insert_columns = list(zip(*inserts)) if inserts else []
            inserted = len(inserts)
    if inserted:
        _insert(store, conn, dataset, insert_columns, inserted, now, checked.groups if insert_columns is checked.columns else None)
    if updates:
        _update(store, conn, dataset, updates)
    counts.inserted = inserted
    counts.updated = len(updates)
    return counts


def _update(store: Store, conn: sa.Connection, dataset: Dataset, updates: list[tuple[Any, ...]]) -> None:
    """Rewrite rows in place: each of ``updates`` is (the columns' values as stored, ``_modified``,
    ``_id``)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    table = f'"ds_{dataset.id}"'
    if store.dialect != "sqlite":
        assignments = ", ".join(f"{c.col} = {_placeholder(store, c.type)}" for c in dataset.columns)
        cursor.executemany(f"UPDATE {table} SET {assignments}, _modified = %s WHERE _id = %s", updates)
        return
    # Many rows per statement, joined to their VALUES, as inserts go (_insert): an executemany steps once
    # per row and gives up the GIL each time, and behind a busy event loop each step waits for it to
    # come back (up to the 5 ms switch interval) while the transaction holds the one writer.
    width = len(dataset.columns) + 2
    assignments = ", ".join([*(f"{c.col} = k.column{i}" for i, c in enumerate(dataset.columns, 1)), f"_modified = k.column{width - 1}"])
    one = "(" + ", ".join("?" * width) + ")"

    def statement(rows: int) -> str:
        return f"UPDATE {table} SET {assignments} FROM (VALUES {', '.join([one] * rows)}) AS k WHERE {table}._id = k.column{width}"

    per = _rows_per_insert(width)
    full = len(updates) // per * per
    flat = itertools.chain.from_iterable
    if full:
        cursor.executemany(statement(per), [tuple(flat(updates[i:i + per])) for i in range(0, full, per)])
    if full < len(updates):
        cursor.execute(statement(len(updates) - full), tuple(flat(updates[full:])))


def _rows_per_insert(columns: int) -> int:
    return max(1, min(_ROWS_PER_INSERT, _MAX_PARAMS // max(1, columns)))


def group_rows(columns: Sequence[Sequence[Any]], count: int) -> list[tuple[Any, ...]]:
    """The parameters of the rows that fill whole multi-row INSERTs, one flat tuple per statement,
    interleaved straight from the column slices (zip reuses its tuple: no tuple per row)."""
    per = _rows_per_insert(len(columns))
    if not columns or per < 2:
        return []
    flat = itertools.chain.from_iterable
    return [tuple(flat(zip(*[c[i:i + per] for c in columns]))) for i in range(0, count // per * per, per)]


def prepare_insert(store: Store, checked: Checked) -> None:
    """Do what can be done of the write before the write lock is taken (SQLite: group the rows)."""
    if store.dialect == "sqlite" and checked.columns:
        checked.groups = group_rows(checked.columns, checked.count)


def _insert(
    store: Store, conn: sa.Connection, dataset: Dataset, columns: Sequence[Sequence[Any]], count: int, now: Any, groups: list[tuple[Any, ...]] | None = None
) -> None:
    """Insert ``count`` rows given column by column (``groups``: those rows already grouped)."""
    names = ", ".join(["_created", "_modified", *[c.col for c in dataset.columns]])
    raw = conn.connection.dbapi_connection
    if store.dialect == "sqlite":
        # `now` is our own integer (microseconds), written as a literal so each row tuple goes as is.
        marks = ", ".join("?" for _ in dataset.columns)
        one = f'({int(now)}, {int(now)}{", " if marks else ""}{marks})'
        sql = f'INSERT INTO "ds_{dataset.id}" ({names}) VALUES '
        cursor = raw.cursor()  # type: ignore[union-attr]
        # Many rows per statement: a third less CPU per row than one row per statement, and one trip
        # into SQLite (one release of the GIL) per group rather than per row.
        if not columns:  # a dataset without columns of its own
            cursor.executemany(sql + one, [()] * count)
            return
        per = _rows_per_insert(len(columns))
        if groups is None:
            groups = group_rows(columns, count)
        full = len(groups) * per
        if groups:
            cursor.executemany(sql + ", ".join([one] * per), groups)
        if full < count:
            cursor.executemany(sql + one, zip(*[c[full:] for c in columns]))
        return
    # Binary COPY with the types named up front: psycopg then needs no per-value dumper lookup, and
    # PostgreSQL no text parsing (about a seventh of the CPU of a text COPY). jsonb values are our JSON
    # text, wrapped so that they are sent as they are rather than encoded again as a JSON string.
    values = [
        [None if v is None else Jsonb(v, dumps=_as_is) for v in column] if c.type == "json" else column
        for c, column in zip(dataset.columns, columns)
    ]
    with raw.cursor().copy(f'COPY "ds_{dataset.id}" ({names}) FROM STDIN (FORMAT BINARY)') as copy:  # type: ignore[union-attr]
        copy.set_types(["timestamptz", "timestamptz", *[_PG_COPY_TYPES[c.type] for c in dataset.columns]])
        write = copy.write_row
        for row in zip(itertools.repeat(now, count), itertools.repeat(now, count), *values):
            write(row)


_PG_COPY_TYPES = {"string": "text", "integer": "int8", "number": "float8", "boolean": "bool", "date": "date", "datetime": "timestamptz", "json": "jsonb"}


def _as_is(text: str) -> str:
    return text


def delete_keys(store: Store, conn: sa.Connection, dataset: Dataset, keys: list[tuple[Any, ...]]) -> int:
    table = store.dataset_table(dataset.physical)
    uid_cols = [table.c[dataset.column(n).col] for n in dataset.unique_id]
    deleted = 0
    for chunk in _chunks(keys, max(1, _LOOKUP_CHUNK // len(uid_cols))):
        where = uid_cols[0].in_([k[0] for k in chunk]) if len(uid_cols) == 1 else sa.tuple_(*uid_cols).in_(list(chunk))
        deleted += conn.execute(table.delete().where(where)).rowcount or 0
    return deleted
