"""A view as a query: its fields (dataset columns, system fields, calculations), filters, sort and paging.

``ViewQuery`` is built from a dataset and a view definition; building it checks everything (unknown
fields, formula errors, filter values) so that saving a view fails early with a 4xx. The same object
serves the pull API (pages and streams) and the push engine (which also needs the row's
``_modified`` marker to stamp exactly what it delivered).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import sqlalchemy as sa

from ..columns import INT64_MAX, SYSTEM_FIELDS, validator_for
from ..datasets import Dataset, suggest
from ..errors import Invalid
from ..rows import JSON, RowDecoder, RowEncoder, decode_cursor, encode_cursor, page_limit
from ..storage import Store, codecs, cursors
from .filters import coerce_value, parse_filters
from .formulas import FieldRef, compile_calculations, macro

__all__ = ["ViewQuery", "JsonPage", "base_fields", "STREAM_BATCH"]

# Rows per fetch and per chunk written (~0.5 MB of NDJSON for 10 columns). 5000 held 9 MB more at
# the peak, which on PostgreSQL, with serve's worker child, took the server over 200 MB; it streamed
# NDJSON no faster, CSV alike on SQLite, but CSV on PostgreSQL about a third faster (one FETCH per
# batch: 128k against 160k-220k rows/s in bench/pull on 2026-12-01, still 3.5x Datasette's CSV).
STREAM_BATCH = 2000
PAGE_BATCH = 2500  # rows per fetch within a JSON page
# SQLite keeps no histograms, so it cannot tell a range filter that selects 100 rows of 1,000,000
# from one that selects them all, and reads the table in row id order (the view's order, no sort)
# either way. Below this many matching rows (counted through the index, at most this many read) a
# range filter on a column is marked selective for the planner: it reads the matching rows through
# the column's index and sorts them. See ``ViewQuery.conditions_for``.
SELECTIVE_ROWS = 10_000
_RANGE_OPS = frozenset({"gt", "gte", "lt", "lte"})


def base_fields(store: Store, dataset: Dataset, table: sa.Table) -> dict[str, FieldRef]:
    """Every field a formula or filter may name: the dataset's columns and its system fields."""
    fields = {c.name: FieldRef(c.name, c.type, table.c[c.col]) for c in dataset.columns}
    fields["row id [auto]"] = FieldRef("row id [auto]", SYSTEM_FIELDS["row id [auto]"], table.c._id)
    fields["created [auto]"] = FieldRef("created [auto]", "datetime", table.c._created)
    fields["last modified [auto]"] = FieldRef("last modified [auto]", "datetime", table.c._modified)
    return fields


@dataclass(frozen=True)
class SortKey:
    field: FieldRef
    descending: bool


@dataclass(frozen=True)
class JsonPage:
    """A page as sent (``body``) and the cursor of the next one (``next``, None on the last page)."""

    body: bytes
    next: str | None


class ViewQuery:
    def __init__(self, store: Store, dataset: Dataset, definition: dict[str, Any]) -> None:
        self.store = store
        self.dataset = dataset
        self.table = store.dataset_table(dataset.physical)
        fields = base_fields(store, dataset, self.table)
        calcs = definition.get("calculations") or []
        pairs = [(c["name"], c["formula"]) for c in calcs]
        self.calculations = compile_calculations(pairs, fields, store.dialect) if pairs else {}
        self.fields: dict[str, FieldRef] = {**fields, **self.calculations}
        self.output = self._output_fields(definition.get("columns"))
        self.filter_definitions = list(definition.get("filters") or [])
        self.conditions = parse_filters(self.filter_definitions, self.fields, store.dialect)
        self._range_probes = self._selectivity_probes()
        self.sort = self._sort_keys(definition.get("sort") or [])
        limit = definition.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= INT64_MAX):
            raise Invalid(f"limit must be a positive integer up to {INT64_MAX}, or null", code="invalid_view")
        self.limit: int | None = limit
        self.decoder = RowDecoder(store.dialect, [(f.name, f.type) for f in self.output])

    # -- definition checks -------------------------------------------------------------------

    def _field(self, name: Any, where: str) -> FieldRef:
        if not isinstance(name, str) or name not in self.fields:
            hint = suggest(str(name), list(self.fields))
            raise Invalid(
                f"{where}: unknown field {name!r}" + (f"; did you mean {hint!r}?" if hint else ""),
                code="unknown_field",
                details={"field": name, "suggestion": hint},
            )
        return self.fields[name]

    def _output_fields(self, columns: Sequence[str] | None) -> list[FieldRef]:
        if columns is None:
            chosen = [self.fields[c.name] for c in self.dataset.columns]
        else:
            chosen = [self._field(name, f"columns[{i}]") for i, name in enumerate(columns)]
            if len({f.name for f in chosen}) != len(chosen):
                raise Invalid("columns names a field twice", code="invalid_view")
        names = {f.name for f in chosen}
        # Calculations are columns of the view: listed ones keep their place, the others follow.
        return chosen + [calc for name, calc in self.calculations.items() if name not in names]

    def _sort_keys(self, sort: Sequence[Any]) -> list[SortKey]:
        keys = []
        for i, item in enumerate(sort):
            if isinstance(item, str):
                item = {"field": item}
            if not isinstance(item, dict):
                raise Invalid(f"sort[{i}] must be {{field, direction}}", code="invalid_view")
            field = self._field(item.get("field"), f"sort[{i}]")
            if field.type == "json":
                raise Invalid(f"sort[{i}]: json field {field.name!r} cannot be sorted", code="invalid_view")
            direction = item.get("direction", "asc")
            if direction not in ("asc", "desc"):
                raise Invalid(f"sort[{i}].direction must be asc or desc", code="invalid_view")
            keys.append(SortKey(field, direction == "desc"))
        return keys

    def indexable_columns(self) -> list[str]:
        """Physical columns that filters and sorts name directly: worth an index (e.g. the log-time field,
        or ``last modified [auto]`` for "changed since")."""
        names = [f.get("field") for f in self.filter_definitions if isinstance(f, dict)]
        names += [k.field.name for k in self.sort]
        return sorted({col for col in map(self._table_column, names) if col is not None})

    def _table_column(self, name: Any) -> str | None:
        """The physical column a field name stands for, when it is one of the table's own columns
        other than the row id (which has its index, and ranges of it SQLite reads by itself)."""
        ref = self.fields.get(name) if isinstance(name, str) else None
        expr = getattr(ref, "expr", None)
        if isinstance(expr, sa.Column) and expr.table is self.table and expr.name != "_id":
            return str(expr.name)
        return None

    def _selectivity_probes(self) -> list[tuple[int, sa.Select]]:
        """SQLite: for each range filter on a column of the table (other than the row id, which SQLite
        reads by range anyway), its position and a query that finds a row only if the filter
        matches more than ``SELECTIVE_ROWS`` rows. PostgreSQL's planner has statistics: none."""
        if self.store.dialect != "sqlite":
            return []
        probes = []
        for i, raw in enumerate(self.filter_definitions):
            if raw.get("op") not in _RANGE_OPS or self._table_column(raw.get("field")) is None:
                continue
            ref = self.fields[raw["field"]]
            if ref.type == "integer" and isinstance(coerce_value(ref, raw["op"], raw.get("value")), float):
                continue  # compared as a double (filters._operands): no index can serve it, and the probe would scan
            probe = sa.select(sa.literal_column("1")).select_from(self.table).where(self.conditions[i])
            probes.append((i, probe.limit(1).offset(SELECTIVE_ROWS)))
        return probes

    def conditions_for(self, conn: sa.Connection) -> list[Any]:
        """The filters' conditions for a query about to run on ``conn``: on SQLite, a range filter that
        matches fewer than ``SELECTIVE_ROWS`` rows is wrapped in ``likelihood(..., 0.001)``, which makes
        the planner read it through its index (the probe reads at most that many index entries)."""
        if not self._range_probes:
            return self.conditions
        conditions = list(self.conditions)
        for i, probe in self._range_probes:
            if conn.execute(probe).first() is None:
                conditions[i] = macro("likelihood({0}, 0.001)", conditions[i], type_=conditions[i].type)
        return conditions

    # -- SQL ------------------------------------------------------------------------------------

    def _order_by(self) -> list[Any]:
        order: list[Any] = []
        for key in self.sort:
            # NULLs last in both directions on both engines, made explicit so paging can rely on it.
            order.append(sa.case((key.field.expr.is_(None), 1), else_=0))
            order.append(key.field.expr.desc() if key.descending else key.field.expr.asc())
        order.append(self.table.c._id.asc())
        return order

    def _after(self, cursor: str) -> Any:
        values = decode_cursor(cursor)[:-1]  # the last element is the count of rows already given
        if len(values) != len(self.sort) + 1 or not isinstance(values[-1], int):
            raise Invalid("the 'after' cursor does not belong to this view", code="invalid_cursor")
        try:
            encoded = [
                None if v is None else codecs.encoder(self.store.dialect, k.field.type)(validator_for(k.field.type)(v))
                for k, v in zip(self.sort, values)
            ]
        except ValueError:
            raise Invalid("the 'after' cursor does not belong to this view", code="invalid_cursor") from None
        keys: list[tuple[Any, Any]] = []  # (equal, after) conditions per key, then _id
        for key, value in zip(self.sort, encoded):
            expr = key.field.expr
            if value is None:
                keys.append((expr.is_(None), sa.false()))
            else:
                # A bound value, not a Python constant: SQLAlchemy refuses ``expr < True``.
                value = sa.literal(value, expr.type)
                beyond = expr < value if key.descending else expr > value
                keys.append((expr == value, sa.or_(beyond, expr.is_(None))))
        keys.append((self.table.c._id == values[-1], self.table.c._id > values[-1]))
        alternatives = []
        for i, (_, after) in enumerate(keys):
            alternatives.append(sa.and_(*[eq for eq, _ in keys[:i]], after))
        return sa.or_(*alternatives)

    def select(
        self, *, extra: Sequence[Any] = (), with_order: bool = True, output: str | None = None, conditions: Sequence[Any] | None = None
    ) -> sa.Select:
        """The view's SELECT: ``_id``, the output fields (``f0``, ``f1`` ...), then ``extra`` columns.

        ``output="json"`` or ``"csv"`` gives the fields as the pull API writes them where SQL can
        (``codecs.output_sql``; see ``encoder``); by default they come in their stored form.
        ``conditions``: the filters as ``conditions_for`` gives them (default: as saved)."""
        fields = [f.expr.label(f"f{i}") for i, f in enumerate(self.output)]
        if output is not None:
            for i, sql in self._output_sql(output).items():
                fields[i] = sql.label(f"f{i}")
        query = sa.select(self.table.c._id, *fields, *extra).select_from(self.table)
        conditions = self.conditions if conditions is None else conditions
        if conditions:
            query = query.where(*conditions)
        if with_order:
            query = query.order_by(*self._order_by())
        return query

    def _output_sql(self, fmt: str) -> dict[int, Any]:
        """Output fields converted by the database, by position. Only plain columns: a calculation
        would be evaluated several times per row (and its ``now()`` once per use)."""
        out = {}
        for i, field in enumerate(self.output):
            if isinstance(field.expr, sa.Column):
                sql = codecs.output_sql(self.store.dialect, field.type, field.expr, fmt)
                if sql is not None:
                    out[i] = sql
        return out

    def encoder(self, fmt: str) -> RowEncoder:
        """Writes the rows of ``select(output=fmt)`` (``fmt`` is ``"json"`` or ``"csv"``)."""
        in_sql = self._output_sql(fmt)
        convert = []
        for i, field in enumerate(self.output):
            decode = codecs.decoder(self.store.dialect, field.type)
            if i not in in_sql and (decode is not codecs.identity or (fmt == "csv" and field.type in ("boolean", "json"))):
                convert.append((i + 1, decode))
        return RowEncoder(["_id", *[f.name for f in self.output]], convert)

    def _cursor_for(self, row: Sequence[Any], seen: int) -> str:
        """The cursor after ``row``: its sort values (stored form, after the output fields) and ``_id``."""
        values: list[Any] = []
        first = len(self.output) + 1
        for k, key in enumerate(self.sort):
            value = row[first + k]
            values.append(None if value is None else codecs.decoder(self.store.dialect, key.field.type)(value))
        return encode_cursor([*values, row[0], seen])

    def _page_query(self, conn: sa.Connection, limit: int | None, after: str | None) -> tuple[sa.Select | None, int, int]:
        """The SELECT of a page (``None`` when the view's own limit is already reached), its size and
        the count of rows before it. Checks ``limit`` and ``after`` (4xx) before anything is read."""
        size = page_limit(limit)
        seen = 0
        after_condition = None
        if after:
            after_condition = self._after(after)
            seen = decode_cursor(after)[-1]
            if not isinstance(seen, int) or seen < 0:
                raise Invalid("the 'after' cursor does not belong to this view", code="invalid_cursor")
        if self.limit is not None:
            # The view's own limit caps the whole result, not each page.
            size = min(size, max(self.limit - seen, 0))
            if size == 0:
                return None, size, seen
        sort_cols = [k.field.expr.label(f"s{i}") for i, k in enumerate(self.sort)]
        query = self.select(extra=sort_cols, output="json", conditions=self.conditions_for(conn))
        if after_condition is not None:
            query = query.where(after_condition)
        return query.limit(size + 1), size, seen

    def _page_batches(self, conn: sa.Connection, query: sa.Select | None, size: int, seen: int) -> Iterator[list[Sequence[Any]]]:
        """The page's result tuples in batches; returns (as the generator's value) the next cursor."""
        if query is None:
            return None
        last: Sequence[Any] | None = None
        fetched = 0
        # Read in batches, so that on PostgreSQL the next batch is fetched while this one is encoded.
        for rows in cursors.bounded(conn, query, PAGE_BATCH):
            take = rows[: max(size - fetched, 0)]
            fetched += len(rows)
            if take:
                last = take[-1]
                yield take
        more = fetched > size and (self.limit is None or seen + size < self.limit)
        return self._cursor_for(last, seen + size) if more and last is not None else None

    def page_json(self, conn: sa.Connection, *, limit: int | None, after: str | None) -> JsonPage:
        """One page, ``{"rows": [objects], "next": cursor or null}``, as JSON. The rows are read in
        batches, turned into row structs while PostgreSQL sends the next batch (``cursors.bounded``),
        and written by one encode (an encode per batch, joined, cost the server more)."""
        query, size, seen = self._page_query(conn, limit, after)
        encoder = self.encoder("json")
        batches = self._page_batches(conn, query, size, seen)
        objects: list[Any] = []
        while True:
            try:
                objects += encoder.structs(next(batches))
            except StopIteration as stop:
                return JsonPage(JSON.encode({"rows": objects, "next": stop.value}), stop.value)

    def output_rows(self, conn: sa.Connection, fmt: str, batch: int | None = None) -> Iterator[list[Sequence[Any]]]:
        """Every row of the view as result tuples for ``encoder(fmt)``, in batches, in constant memory."""
        query = self.select(output=fmt, conditions=self.conditions_for(conn))
        if self.limit is not None:
            query = query.limit(int(self.limit))
        return cursors.stream(conn, query, batch or STREAM_BATCH)

    def stream(self, conn: sa.Connection, batch: int | None = None) -> Iterator[list[dict[str, Any]]]:
        """Every row of the view as objects (as in JSON pages), in batches, without holding the result in memory."""
        encoder = self.encoder("json")
        for rows in self.output_rows(conn, "json", batch):
            yield encoder.objects(rows)
