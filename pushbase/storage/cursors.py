"""A SELECT's rows as the driver's plain tuples, for the hot read paths (the pull API, view streams).

SQLAlchemy still builds, caches and binds the statement (bound parameters such as ``now()`` are
computed at execution), but the rows come straight from the DBAPI cursor, in batches, without a
``Row`` object and a result processor per row: that alone costs about as much as the rest of a pull.
Only use it for statements whose columns need no SQLAlchemy result processing (the dataset types of
``codecs`` need none: the drivers return their values as they are).

- ``stream``: every row in batches, in constant memory. SQLite steps its cursor as it is read;
  PostgreSQL reads through a server-side cursor (``DECLARE ... NO SCROLL CURSOR`` / ``FETCH FORWARD n``),
  since a client-side cursor would first pull the whole result into memory, planned for reading all
  of it (``cursor_tuple_fraction = 1``), one batch ahead of the caller.
- ``bounded``: the rows of a SELECT whose size is bounded (a JSON page: ``LIMIT 10001``), in batches.
  On PostgreSQL an ordinary query whose rows libpq hands over in chunks as they arrive (chunked rows
  mode, libpq 17+): the database finds and sends the next rows while the caller encodes these, with no
  cursor to declare and no round trip per batch. With an older libpq, one client-side result.
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import orjson
import sqlalchemy as sa
from psycopg.types.json import set_json_loads
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement

__all__ = ["stream", "bounded", "rows_cursor"]

_names = itertools.count(1)


def rows_cursor(conn: sa.Connection) -> Any:
    """A DBAPI cursor for dataset rows. On PostgreSQL its jsonb values are read by ``orjson.loads``:
    dataset json values never hold integers beyond 64 bits (refused when loaded), so the engine's
    ``loads_exact`` (for Pushbase's own JSON columns, task run records among them) would only add its
    digit scan to every json cell of a pull."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    if conn.dialect.name == "postgresql":
        set_json_loads(orjson.loads, cursor)
    return cursor


def stream(conn: sa.Connection, select: sa.Select, batch: int) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of ``select`` in lists of up to ``batch`` DBAPI tuples; never more than a batch in memory."""
    if conn.dialect.name == "postgresql":
        yield from _pg_stream(conn, select, batch)
        return
    # No stream_results here: with it SQLAlchemy pre-fetches a row into a buffer of its own.
    result = conn.execute(select, execution_options={"stream_results": False})
    try:
        cursor = result.cursor
        while rows := cursor.fetchmany(batch):
            yield rows
    finally:
        result.close()


def bounded(conn: sa.Connection, select: sa.Select, batch: int) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of ``select``, which has a small ``LIMIT``, in lists of up to ``batch`` DBAPI tuples."""
    if conn.dialect.name != "postgresql":
        yield from stream(conn, select, batch)
        return
    if conn.dialect.driver != "psycopg" or not _chunked_rows():
        result = conn.execute(select)  # a client-side cursor: the whole (bounded) result at once
        try:
            while rows := result.cursor.fetchmany(batch):
                yield rows
        finally:
            result.close()
        return
    statement, parameters = _statement(conn, select)
    cursor = rows_cursor(conn)
    rows_of = cursor.stream(statement, parameters, size=batch)
    try:
        while rows := list(itertools.islice(rows_of, batch)):
            yield rows
    finally:
        rows_of.close()  # read to the end, or else the query is cancelled
        cursor.close()


@functools.cache
def _chunked_rows() -> bool:
    import psycopg

    return psycopg.pq.version() >= 170000  # libpq's chunked rows mode, used by cursor.stream(size=n)


def _statement(conn: sa.Connection, select: sa.Select) -> tuple[str, Any]:
    """The SQL text and DBAPI parameters that SQLAlchemy would run for ``select`` (compiled, cached,
    parameters bound and processed as always), without running it."""
    sink: list[tuple[str, Any]] = []
    conn.execute(select, execution_options={"pushbase_capture": sink}).close()
    return sink[0]


def _capture(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
    """``do_execute`` hook: for executions that ask for it, keep the statement instead of running it."""
    sink = context.execution_options.get("pushbase_capture")
    if sink is None:
        return False
    sink.append((statement, parameters))
    return True


# Listened for on the dialect class, once, at import: adding a listener to a live engine could race
# with other threads' executions.
sa.event.listen(PGDialect, "do_execute", _capture)


class _DeclareCursor(Executable, ClauseElement):
    """``DECLARE name NO SCROLL CURSOR FOR <select>``, compiled and bound by SQLAlchemy."""

    inherit_cache = False  # a stream runs one statement for thousands of rows: nothing to gain

    def __init__(self, name: str, select: sa.Select) -> None:
        self.name = name
        self.select = select


@compiles(_DeclareCursor)
def _compile_declare(element: _DeclareCursor, compiler: Any, **kw: Any) -> str:
    return f"DECLARE {element.name} NO SCROLL CURSOR FOR " + compiler.process(element.select, **kw)


def _pg_stream(conn: sa.Connection, select: sa.Select, batch: int) -> Iterator[list[tuple[Any, ...]]]:
    name = f"pushbase_stream_{next(_names)}"  # our own name: no user text in it
    # Every row will be read: plan for the whole result, not for the first 10% of it (the default for
    # cursors), which picks a walk of the primary key past every row a selective filter rejects.
    conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")
    conn.execute(_DeclareCursor(name, select))
    cursor = rows_cursor(conn)
    fetch = f"FETCH FORWARD {int(batch)} FROM {name}"

    def next_batch() -> list[tuple[Any, ...]]:
        cursor.execute(fetch)
        return cursor.fetchall()

    # One batch ahead: PostgreSQL reads the next batch (and the driver waits for it without holding
    # the GIL) while the caller encodes this one. The connection is only ever used by one thread at
    # a time: the caller does not touch it until the stream is over.
    ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pushbase-fetch")
    pending: Future[list[tuple[Any, ...]]] | None = ahead.submit(next_batch)
    try:
        while pending is not None:
            rows = pending.result()
            pending = ahead.submit(next_batch) if len(rows) == batch else None
            if rows:
                yield rows
    finally:
        if pending is not None:
            wait([pending])  # the caller stopped early: let the fetch in flight finish first
        ahead.shutdown()
        try:
            cursor.execute(f"CLOSE {name}")
        except Exception:  # noqa: BLE001 - the transaction failed; ending it closes the cursor anyway
            pass
        cursor.close()
