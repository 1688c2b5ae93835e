"""The push engine's hot statements, compiled once per dialect and run on the DBAPI cursor.

A push call runs about ten small statements; through ``Connection.execute`` SQLAlchemy's per-execution
work (cache key, execution context, result metadata) costs more than SQLite takes to run them. A
``Prepared`` statement keeps what SQLAlchemy would do that matters for correctness — the SQL string
of the dialect, each parameter's bind processor (datetimes, JSON, booleans as each engine stores them)
and each result column's result processor — and runs it on the connection's DBAPI cursor, inside the
transaction the ``Store`` began. Statements stay written as SQLAlchemy Core, so the SQL is the same.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import collections

import sqlalchemy as sa

__all__ = ["Prepared"]


class _Compiled:
    __slots__ = ("sql", "positional", "order", "defaults", "binds", "results", "tuple")

    def __init__(self, stmt: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = str(compiled)
        self.positional = bool(compiled.positional)
        names = compiled.bind_names  # BindParameter -> name in the SQL
        self.defaults = {name: bp.effective_value for bp, name in names.items() if not bp.required}
        self.order: tuple[str, ...] = tuple(compiled.positiontup or ()) if self.positional else tuple(names.values())
        processors = compiled._bind_processors  # noqa: SLF001 - what SQLAlchemy applies itself
        self.binds: tuple[tuple[str, Callable[[Any], Any] | None], ...] = tuple((n, processors.get(n)) for n in self.order)
        results: list[Callable[[Any], Any] | None] = []
        fields: list[str] = []
        for column in getattr(compiled, "_result_columns", None) or ():
            fields.append(column[0])
            results.append(column[3]._cached_result_processor(dialect, None))  # noqa: SLF001
        self.results = tuple(results) if any(p is not None for p in results) else None
        self.tuple = collections.namedtuple("Row", fields, rename=True) if fields else None  # type: ignore[misc]

    def parameters(self, given: dict[str, Any]) -> Any:
        values = {**self.defaults, **given} if self.defaults else given
        if self.positional:
            return tuple(v if p is None or v is None else p(v) for n, p in self.binds for v in (values[n],))
        return {n: (values[n] if p is None or values[n] is None else p(values[n])) for n, p in self.binds}

    def row(self, raw: Sequence[Any] | None) -> Any:
        if raw is None:
            return None
        assert self.tuple is not None
        if self.results is None:
            return self.tuple._make(raw)
        return self.tuple._make(v if p is None or v is None else p(v) for p, v in zip(self.results, raw))


class Prepared:
    """One statement (SQLAlchemy Core, bound parameters by name), run through the DBAPI cursor."""

    def __init__(self, stmt: sa.ClauseElement) -> None:
        self.stmt = stmt
        self._by_dialect: dict[str, _Compiled] = {}

    def _compiled(self, conn: sa.Connection) -> _Compiled:
        dialect = conn.dialect
        found = self._by_dialect.get(dialect.name)
        if found is None:
            found = self._by_dialect[dialect.name] = _Compiled(self.stmt, dialect)
        return found

    def _cursor(self, conn: sa.Connection, params: dict[str, Any]) -> tuple[_Compiled, Any]:
        compiled = self._compiled(conn)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(compiled.sql, compiled.parameters(params))
        return compiled, cursor

    def run(self, conn: sa.Connection, params: dict[str, Any]) -> int:
        """Execute; returns the row count (UPDATE, DELETE)."""
        _, cursor = self._cursor(conn, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def first(self, conn: sa.Connection, params: dict[str, Any]) -> Any:
        """The first row as a named tuple (each value through its column's result processor), or None."""
        compiled, cursor = self._cursor(conn, params)
        try:
            return compiled.row(cursor.fetchone())
        finally:
            cursor.close()
