"""Hot statements compiled once per dialect and run on the DBAPI cursor (used by the push engine).

A push call runs about ten small statements; through ``Connection.execute`` SQLAlchemy's per-execution
work (cache key, execution context, result metadata) costs more than SQLite takes to run them. A
``PreparedStatement`` keeps what SQLAlchemy would do that matters for correctness — the SQL string
of the dialect, each parameter's bind processor (datetimes, JSON, booleans as each engine stores them)
and each result column's result processor — and runs it on the connection's DBAPI cursor, inside the
transaction the ``Store`` began. Statements stay written as SQLAlchemy Core, so the SQL is the same.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Sequence

import sqlalchemy as sa

__all__ = ["PreparedStatement"]


class _Compiled:
    __slots__ = ("sql", "positional", "order", "defaults", "callables", "binds", "types", "results", "resolved", "tuple", "usable", "dialect")

    def __init__(self, stmt: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = str(compiled)
        self.positional = bool(compiled.positional)
        names = compiled.bind_names  # BindParameter -> name in the SQL
        # Values fixed in the statement; ``callable_`` ones (``now()`` in a formula) are called at each execution.
        self.defaults = {name: bp.value for bp, name in names.items() if not bp.required and bp.callable is None}
        self.callables = {name: bp.callable for bp, name in names.items() if bp.callable is not None}
        # Parameters expanded at execution (IN lists) need SQLAlchemy: such a statement is run through it.
        self.usable = "POSTCOMPILE" not in self.sql and not compiled.literal_execute_params
        self.order: tuple[str, ...] = tuple(compiled.positiontup or ()) if self.positional else tuple(names.values())
        processors = compiled._bind_processors  # noqa: SLF001 - what SQLAlchemy applies itself
        self.binds: tuple[tuple[str, Callable[[Any], Any] | None], ...] = tuple((n, processors.get(n)) for n in self.order)
        fields: list[str] = []
        self.types: list[Any] = []
        for column in getattr(compiled, "_result_columns", None) or ():
            fields.append(column[0])
            self.types.append(column[3])
        # Result processors are resolved at the first execution, from the cursor's description, as
        # SQLAlchemy does (some depend on the type the database reports, e.g. PostgreSQL numerics).
        self.dialect = dialect
        self.results: tuple[Callable[[Any], Any] | None, ...] | None = None
        self.resolved = not self.types
        self.tuple = collections.namedtuple("Row", fields, rename=True) if fields else None  # type: ignore[misc]

    def parameters(self, given: dict[str, Any]) -> Any:
        values = {**self.defaults, **given} if self.defaults else given
        if self.callables:
            values = {**values, **{name: fn() for name, fn in self.callables.items()}}
        if self.positional:
            return tuple(v if p is None or v is None else p(v) for n, p in self.binds for v in (values[n],))
        return {n: (values[n] if p is None or values[n] is None else p(values[n])) for n, p in self.binds}

    def resolve(self, description: Sequence[Any] | None) -> None:
        codes = [d[1] for d in description or ()]
        codes += [None] * (len(self.types) - len(codes))
        results = tuple(t._cached_result_processor(self.dialect, c) for t, c in zip(self.types, codes))  # noqa: SLF001
        self.results = results if any(p is not None for p in results) else None
        self.resolved = True

    def row(self, raw: Sequence[Any] | None) -> Any:
        if raw is None:
            return None
        assert self.tuple is not None
        if self.results is None:
            return self.tuple._make(raw)
        return self.tuple._make(v if p is None or v is None else p(v) for p, v in zip(self.results, raw))


class PreparedStatement:
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

    def usable(self, conn: sa.Connection) -> bool:
        """False when the statement needs SQLAlchemy at execution (expanding parameters)."""
        return self._compiled(conn).usable

    def _cursor(self, conn: sa.Connection, params: dict[str, Any]) -> tuple[_Compiled, Any]:
        compiled = self._compiled(conn)
        if not compiled.usable:
            raise TypeError("this statement has parameters that only SQLAlchemy can expand")
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
            if not compiled.resolved:
                compiled.resolve(cursor.description)
            return compiled.row(cursor.fetchone())
        finally:
            cursor.close()

    def all(self, conn: sa.Connection, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Every row, as plain tuples (each value through its column's result processor)."""
        compiled, cursor = self._cursor(conn, params or {})
        try:
            if not compiled.resolved:
                compiled.resolve(cursor.description)
            raw = cursor.fetchall()
        finally:
            cursor.close()
        processors = compiled.results
        if processors is None:
            return raw  # type: ignore[no-any-return]
        return [tuple(v if p is None or v is None else p(v) for p, v in zip(processors, r)) for r in raw]
