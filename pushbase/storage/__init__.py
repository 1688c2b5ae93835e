"""Storage behind one small interface, with two engines: SQLite (embedded default) and PostgreSQL.

``open_store(target)`` takes a SQLite file path (or ``sqlite:///...``) or a ``postgresql://`` URL and
returns a ``Store``. Everything above this package talks to the database through ``Store.read()`` and
``Store.write()`` (SQLAlchemy Core connections inside a transaction) and never checks which engine it
is, except through the few engine-specific helpers here (``lock_dataset``, ``notify``, ``skip_locked``).

SQLite runs in WAL mode; writes go through a single pooled connection that starts ``BEGIN IMMEDIATE``,
so writers queue in-process instead of failing with "database is locked"; reads use their own pool and
see a consistent snapshot without blocking writers.
"""
from __future__ import annotations

import contextlib
import os
import select
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import psycopg
import sqlalchemy as sa
from sqlalchemy import event

from . import codecs, schema
from .writer import WritePressure, WriterTurns
from ..errors import DatabaseUnavailable
from ..exact_json import dumps_exact, loads_exact

__all__ = ["Store", "open_store", "database_unavailable_reason", "sqlite_busy_seconds", "DatasetColumns", "LightConnection", "NeedsConnection", "schema", "codecs"]

DEFAULT_DB = "./pushbase.db"
_PENDING_NOTIFICATIONS = "pushbase_pending_notifications"
_PENDING_PG_NOTIFY = "pushbase_pending_pg_notify"


@dataclass(frozen=True)
class DatasetColumns:
    """What the engine needs to know to build a dataset's table: its id and [(name, type, col)]."""

    id: int
    columns: tuple[tuple[str, str, str], ...]
    unique_cols: tuple[str, ...]


class NeedsConnection(Exception):
    """A light transaction (``Store.light_write``) met a statement that only a SQLAlchemy connection
    runs; it has been rolled back, and the caller does its work again in ``Store.write()``."""


class LightConnection:
    """A write transaction on the pooled DBAPI connection itself, for ``PreparedStatement``s.

    It offers what those and ``Store.notify`` use of a SQLAlchemy connection: ``dialect``,
    ``connection.dbapi_connection`` and ``info``; ``execute`` raises ``NeedsConnection``."""

    __slots__ = ("dialect", "connection", "info")

    def __init__(self, dialect: sa.Dialect, connection: Any, info: dict[str, Any]) -> None:
        self.dialect = dialect
        self.connection = connection  # the pool's connection; ``.dbapi_connection`` is the driver's
        self.info = info

    def execute(self, *_args: Any, **_kwargs: Any) -> Any:
        raise NeedsConnection()

    exec_driver_sql = execute


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = "postgresql" if url.startswith("postgresql") else "sqlite"
        self._table_cache: dict[tuple[int, tuple[tuple[str, str, str], ...]], sa.Table] = {}
        self._listeners: list[Callable[[str, str], None]] = []
        self._listeners_lock = threading.Lock()
        # True while a PgListener of this process is listening: then our own NOTIFYs come back to us
        # through it, and firing them locally as well would deliver each twice.
        self.hears_own_notifications = False
        self._checkpointer: _Checkpointer | None = None
        self.write_pressure = WritePressure()
        # SQLite's one writer goes round in turns; PostgreSQL's pool has room for many writers.
        self._writer_turn: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
        if self.dialect == "sqlite":
            self._writer_turn = WriterTurns().turn
            self.write_engine, self.read_engine = _sqlite_engines(url)
            self._checkpointer = _Checkpointer(_sqlite_path(url), self._writer_turn)
            self._checkpointer.start()
        else:
            engine = sa.create_engine(
                _pg_sqlalchemy_url(url),
                pool_size=int(os.environ.get("PUSHBASE_PG_POOL", "10")),
                max_overflow=20,
                json_serializer=_json_text,
                json_deserializer=loads_exact,
            )
            event.listen(engine, "checkout", _pg_connection_alive)
            event.listen(engine, "connect", _pg_session_settings)
            self.write_engine = self.read_engine = engine

    # -- transactions -------------------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[sa.Connection]:
        with self.read_engine.connect() as conn:
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sa.Connection]:
        with self.write_pressure.counted(), self._writer_turn(), self.write_engine.begin() as conn:
            conn.info[_PENDING_NOTIFICATIONS] = pending = []
            conn.info[_PENDING_PG_NOTIFY] = to_send = []
            try:
                yield conn
                if to_send:
                    _send_pg_notify(conn.connection.dbapi_connection, to_send)
            finally:
                conn.info.pop(_PENDING_NOTIFICATIONS, None)
                conn.info.pop(_PENDING_PG_NOTIFY, None)
        # Only now is the transaction committed: a woken listener must be able to see its rows.
        for channel, payload in pending:
            self.fire_local(channel, payload)

    @contextlib.contextmanager
    def light_write(self) -> Iterator[LightConnection]:
        """``write()`` for hot paths that run only ``PreparedStatement``s: the same transaction on the
        same pooled connection (SQLite's one writer, ``BEGIN IMMEDIATE``), the same notifications after
        the commit, without SQLAlchemy's Connection, its begin/commit events and execution contexts
        (about 0.1 ms a transaction). Anything else raises ``NeedsConnection`` after a rollback."""
        with self.write_pressure.counted(), self._writer_turn():
            fairy = self.write_engine.raw_connection()
            try:
                dbapi = fairy.dbapi_connection
                pending: list[tuple[str, str]] = []
                to_send: list[tuple[str, str]] = []
                conn = LightConnection(self.write_engine.dialect, fairy, {_PENDING_NOTIFICATIONS: pending, _PENDING_PG_NOTIFY: to_send})
                try:
                    if self.dialect == "sqlite":
                        dbapi.execute("BEGIN IMMEDIATE")
                    yield conn
                    _send_pg_notify(dbapi, to_send)
                    dbapi.commit()
                except BaseException:
                    try:
                        dbapi.rollback()
                    except Exception:  # noqa: BLE001 - a broken connection must not go back to the pool
                        fairy.invalidate()
                    raise
            finally:
                fairy.close()
        for channel, payload in pending:
            self.fire_local(channel, payload)

    def upgrade(self) -> int:
        """Create or upgrade the metadata schema; returns the version found before."""
        with self.write() as conn:
            if self.dialect == "postgresql":
                # Several processes may start at once against one PostgreSQL: upgrade one at a time.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(727400001)"))
            found = schema.upgrade(conn)
            if self.dialect == "postgresql":
                _tune_postgresql(conn)
            return found

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()

    # -- engine-specific helpers ----------------------------------------------------------------

    def lock_dataset(self, conn: sa.Connection, dataset_id: int) -> None:
        """Serialise writers of one dataset (PostgreSQL); SQLite's write lock already does."""
        if self.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(727400002, :id)"), {"id": dataset_id})

    def lock_dataset_acceptance(self, conn: sa.Connection, dataset_id: int) -> None:
        """Serialise the acceptance of jobs of one dataset until commit (PostgreSQL; SQLite's write lock
        already does): a job accepted while another's acceptance is still uncommitted would not see it,
        and could be loaded before it although accepted after it."""
        if self.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(727400003, :id)"), {"id": dataset_id})

    def skip_locked(self, select: sa.Select) -> sa.Select:
        if self.dialect == "postgresql":
            return select.with_for_update(skip_locked=True)
        return select

    def notify(self, conn: sa.Connection | LightConnection, channel: str, payload: str = "", *, sent: bool = False) -> None:
        """Wake workers and subscribers once ``conn``'s transaction (from ``write()``) commits.

        PostgreSQL: NOTIFY, which the database sends on commit to every listening process. In-process
        listeners are called after the commit, unless this process's PgListener will hear the NOTIFY.
        ``sent``: a statement of the transaction already called ``pg_notify`` with this payload.
        """
        if self.dialect == "postgresql" and not sent:
            to_send = conn.info.get(_PENDING_PG_NOTIFY)
            if to_send is None:
                raise RuntimeError("Store.notify needs a connection from Store.write()")
            # Sent by one statement just before the commit (PostgreSQL delivers at commit anyway):
            # a round trip per notification cost an ingest job about a tenth of its server time.
            to_send.append((channel, payload))
        if self.dialect == "postgresql" and self.hears_own_notifications:
            return
        pending = conn.info.get(_PENDING_NOTIFICATIONS)
        if pending is None:
            raise RuntimeError("Store.notify needs a connection from Store.write()")
        pending.append((channel, payload))

    def fire_local(self, channel: str, payload: str = "") -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(channel, payload)

    def add_listener(self, listener: Callable[[str, str], None]) -> None:
        with self._listeners_lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[str, str], None]) -> None:
        with self._listeners_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # -- dataset tables -----------------------------------------------------------------------

    def dataset_table(self, ds: DatasetColumns) -> sa.Table:
        """The SQLAlchemy Table of a dataset: ``ds_<id>`` with ``_id``, ``_created``, ``_modified``, ``c<n>``."""
        key = (ds.id, ds.columns)
        table = self._table_cache.get(key)
        if table is None:
            table = self._table_cache[key] = self._new_dataset_table(ds)
        return table

    def _new_dataset_table(self, ds: DatasetColumns) -> sa.Table:
        md = sa.MetaData()
        id_type = sa.Integer() if self.dialect == "sqlite" else sa.BigInteger()
        id_args: list[Any] = [sa.Identity()] if self.dialect == "postgresql" else []
        cols: list[Any] = [
            sa.Column("_id", id_type, *id_args, primary_key=True, autoincrement=True),
            sa.Column("_created", codecs.sql_type(self.dialect, "datetime"), nullable=False),
            sa.Column("_modified", codecs.sql_type(self.dialect, "datetime"), nullable=False),
        ]
        cols += [sa.Column(col, codecs.sql_type(self.dialect, ctype)) for _, ctype, col in ds.columns]
        return sa.Table(f"ds_{ds.id}", md, *cols)

    def create_dataset_table(self, conn: sa.Connection, ds: DatasetColumns) -> None:
        # A Table of its own: the indexes made below attach to it, and a cached one that had them
        # (a dataset id SQLite reuses after the newest dataset was deleted) would create them twice.
        # No index on `_modified` or `_created` here: every insert would keep it (a tenth of SQLite's
        # time per inserted row) for the views that filter on them, which get one when saved
        # (ensure_index). Datasets made before 2026-12-01 keep theirs.
        table = self._new_dataset_table(ds)
        table.create(conn)
        if ds.unique_cols:
            sa.Index(f"ds_{ds.id}_uid", *[table.c[c] for c in ds.unique_cols], unique=True).create(conn)

    def add_dataset_columns(self, conn: sa.Connection, ds: DatasetColumns, new: list[tuple[str, str, str]]) -> None:
        ddl_compiler = conn.dialect.ddl_compiler(conn.dialect, None)
        for _, ctype, col in new:
            column = sa.Column(col, codecs.sql_type(self.dialect, ctype))
            spec = ddl_compiler.get_column_specification(column)
            # Physical names are generated (c<n>) and types come from a fixed table: no user text here.
            conn.execute(sa.text(f'ALTER TABLE "ds_{ds.id}" ADD COLUMN {spec}'))

    def drop_dataset_table(self, conn: sa.Connection, dataset_id: int) -> None:
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "ds_{int(dataset_id)}"'))
        for key in [k for k in list(self._table_cache) if k[0] == dataset_id]:
            self._table_cache.pop(key, None)

    def ensure_index(self, conn: sa.Connection, ds: DatasetColumns, col: str) -> None:
        """An index for filters and sorts on one physical column (log-time fields, filtered columns,
        ``_created``/``_modified`` for the system fields).

        Views order by row id within equal values (ties, and the default order), so PostgreSQL gets
        ``(col, _id)``: an equality or IS NULL filter then reads its rows already in page order, with no
        sort. SQLite's index entries end with the rowid (``_id``) anyway. Idempotent; an older
        one-column index on PostgreSQL is kept rather than doubled, and so is a one-column unique id's
        index (views often sort by it): it serves the column's filters and sorts in the same order, and
        a second index would only cost every write. An index that goes on to other columns (a unique id
        of several) does not: within one value its rows are not in row id order."""
        indexes = sa.inspect(conn).get_indexes(f"ds_{ds.id}")
        if any(ix["column_names"] in ([col], [col, "_id"]) for ix in indexes):
            return
        table = self.dataset_table(ds)
        if self.dialect == "postgresql":
            sa.Index(f"ds_{ds.id}_{col}__id", table.c[col], table.c._id).create(conn)
        else:
            sa.Index(f"ds_{ds.id}{col}" if col.startswith("_") else f"ds_{ds.id}_{col}", table.c[col]).create(conn)


class _Checkpointer:
    """Moves the SQLite WAL into the database file in the background (PASSIVE: never blocks writers),
    so bulk loads do not pay for checkpoints inside their commits, and the WAL stays small.

    SQLite starts the WAL file over from its beginning only after a checkpoint that reached its end.
    Under writes that never pause (a sustained ingest), a PASSIVE round never does: writers append
    while it copies. The WAL then grew by everything written (94 MB per 200,000 bench rows, without
    end), and every write extended the file, which the kernel zeroes block by block (7% of the
    server's CPU during an ingest). So when a round finds a long WAL, it takes a turn at the writer
    (``WriterTurns``) and finishes the checkpoint there, with no writer appending; the next write then
    starts the WAL over (unless a reader still reads an older snapshot of it: then a later round tries
    again)."""

    # Frames (pages) past which the WAL is long enough to finish a round in a writer turn: 16 MB.
    RESTART_FRAMES = 4096

    def __init__(self, path: str, writer_turn: Callable[[], contextlib.AbstractContextManager[None]], every_seconds: float = 0.5) -> None:
        self.path = path
        self.every = every_seconds
        self.rounds = 0
        self._writer_turn = writer_turn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pushbase-sqlite-checkpoint", daemon=True)

    def start(self) -> None:
        if self.path != ":memory:":
            self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=5)
            self._checkpoint("TRUNCATE")

    def _checkpoint(self, mode: str) -> int:
        """The count of frames in the WAL (0 when the checkpoint could not run)."""
        try:
            conn = sqlite3.connect(self.path, timeout=5, isolation_level=None)
            try:
                _busy, frames, _copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()  # mode: our constant
                return int(frames)
            finally:
                conn.close()
        except sqlite3.Error:
            return 0  # the next round will do it

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            if self._checkpoint("PASSIVE") > self.RESTART_FRAMES:
                with contextlib.suppress(DatabaseUnavailable), self._writer_turn():  # writes kept it 120 s: next round
                    self._checkpoint("PASSIVE")
            self.rounds += 1


def _json_text(value: Any) -> str:
    """JSON columns (run records, job errors, definitions) keep integers beyond 64 bits exactly: a
    task's answer may hold one (read back with ``loads_exact``)."""
    return dumps_exact(value).decode()


def _pg_connection_alive(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Refuse a pooled PostgreSQL connection the server has ended (restart, ``pg_terminate_backend``,
    idle timeout): SQLAlchemy then opens a new one. An idle connection's socket has nothing to read
    unless the server sent its farewell (``FATAL``) or closed it, so a poll with no wait tells, without
    the round trip of ``pool_pre_ping``'s ``SELECT 1`` (two thread switches on both sides, at every
    transaction: the largest part of a push call's cost on PostgreSQL). A connection cut without a
    word (a network partition) is found by the first statement instead, which fails."""
    try:
        if dbapi_connection.closed or dbapi_connection.broken:
            raise sa.exc.DisconnectionError("the connection is closed")
        readable, _, _ = select.select([dbapi_connection.fileno()], [], [], 0)
    except (OSError, ValueError) as exc:
        raise sa.exc.DisconnectionError(str(exc)) from exc
    if readable:
        raise sa.exc.DisconnectionError("the server ended the connection")


# What says the database cannot serve now, as opposed to a statement that can never work (a bug):
# SQLite's primary result codes, and PostgreSQL's SQLSTATE classes and codes.
_SQLITE_UNAVAILABLE = {"SQLITE_BUSY": "locked by another process", "SQLITE_FULL": "disk full",
                       "SQLITE_IOERR": "disk error", "SQLITE_CANTOPEN": "cannot open the file", "SQLITE_READONLY": "read-only"}
_PG_UNAVAILABLE = {"08": "connection failed", "53": "out of resources (disk, memory or connections)",
                   "57P01": "server shutting down", "57P02": "server shutting down", "57P03": "server starting up"}


def database_unavailable_reason(exc: BaseException) -> str | None:
    """A short reason when ``exc`` says the database cannot serve now (PostgreSQL down, cut off or out of
    resources; a SQLite file locked by another process, read-only or on a full disk); None for any
    other error. Never the driver's text, which may name hosts and users."""
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, sqlite3.Error):
        primary = (getattr(orig, "sqlite_errorname", None) or "").split("_")[:2]
        return _SQLITE_UNAVAILABLE.get("_".join(primary))
    if isinstance(orig, psycopg.OperationalError):
        state = orig.sqlstate
        if state is None:  # failed on the client side: no connection, or it broke
            return "connection failed"
        return _PG_UNAVAILABLE.get(state) or _PG_UNAVAILABLE.get(state[:2])
    return None


def sqlite_busy_seconds() -> float:
    """How long a SQLite statement waits for a lock another process holds (``PUSHBASE_SQLITE_BUSY_SECONDS``,
    60): a backup or a ``sqlite3`` shell holding the file. Past it the request is a 503."""
    value = os.environ.get("PUSHBASE_SQLITE_BUSY_SECONDS", "60").strip()
    try:
        seconds = float(value)
    except ValueError:
        raise DatabaseUnavailable(f"PUSHBASE_SQLITE_BUSY_SECONDS must be a number, not {value!r}") from None
    if not 0 <= seconds <= 3600:
        raise DatabaseUnavailable(f"PUSHBASE_SQLITE_BUSY_SECONDS must be between 0 and 3600, not {value!r}")
    return seconds


def pg_random_page_cost() -> float | None:
    """What our PostgreSQL sessions plan with (``PUSHBASE_PG_RANDOM_PAGE_COST``; empty: the server's)."""
    value = os.environ.get("PUSHBASE_PG_RANDOM_PAGE_COST", "1.1").strip()
    if not value:
        return None
    try:
        cost = float(value)
    except ValueError:
        raise DatabaseUnavailable(f"PUSHBASE_PG_RANDOM_PAGE_COST must be a number, not {value!r}") from None
    if not 0 < cost < 1000:
        raise DatabaseUnavailable(f"PUSHBASE_PG_RANDOM_PAGE_COST must be between 0 and 1000, not {value!r}")
    return cost


def _pg_session_settings(dbapi_connection: Any, _record: Any) -> None:
    """Plan as for SSDs or data in memory (``random_page_cost`` 1.1 instead of 4, the default made for
    spinning disks), in our own sessions only. With 4, a filtered view's page (9,937 of 1,000,000 rows
    through the index on the filter column and ``_id``) was read by a bitmap scan and then sorted by
    ``_id``: 16.7 ms in the database; with 1.1, by the index in ``_id`` order, no sort: 9.3 ms."""
    cost = pg_random_page_cost()
    if cost is None:
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"SET random_page_cost = {cost!r}")  # a float we parsed, never the text as given
    finally:
        cursor.close()
    dbapi_connection.commit()


def _send_pg_notify(dbapi_connection: Any, notifications: list[tuple[str, str]]) -> None:
    """The transaction's NOTIFYs, a statement per 500 (PostgreSQL takes at most 65,535 parameters)."""
    for start in range(0, len(notifications), 500):
        chunk = notifications[start:start + 500]
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT " + ", ".join(["pg_notify(%s, %s)"] * len(chunk)), [v for pair in chunk for v in pair])
        finally:
            cursor.close()


def _tune_postgresql(conn: sa.Connection) -> None:
    """Ingest job bodies are written once and dropped when their job completes: compressing them
    (pglz, PostgreSQL's default for bytea) cost the database about 13 ms of CPU per MB, in the path of
    every accepted request, for nothing. Stored uncompressed (still out of line) instead. A metadata
    change, made once."""
    storage = conn.execute(
        sa.text("SELECT attstorage FROM pg_attribute WHERE attrelid = 'pb_jobs'::regclass AND attname = 'body'")
    ).scalar()
    if storage == "x":
        conn.execute(sa.text("ALTER TABLE pb_jobs ALTER COLUMN body SET STORAGE EXTERNAL"))


def _pg_sqlalchemy_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _sqlite_path(url: str) -> str:
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") else url


def _sqlite_engines(url: str) -> tuple[sa.Engine, sa.Engine]:
    path = _sqlite_path(url)
    if path != ":memory:":
        directory = os.path.dirname(os.path.abspath(path))
        # A typo in --db must not leave a new, empty database somewhere: the folder has to exist.
        if not os.path.isdir(directory):
            raise DatabaseUnavailable(f"cannot open the SQLite database {path}: the folder {directory} does not exist")
    sa_url = f"sqlite:///{path}"
    busy_seconds = sqlite_busy_seconds()

    def make(pool_size: int, begin: str, cache_kib: int) -> sa.Engine:
        engine = sa.create_engine(
            sa_url,
            connect_args={"check_same_thread": False, "timeout": busy_seconds},
            poolclass=sa.pool.QueuePool,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=120,
            json_serializer=_json_text,
            json_deserializer=loads_exact,
        )

        @event.listens_for(engine, "connect")
        def on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control from the sqlite3 module so BEGIN IMMEDIATE can be issued.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
            cur.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
            cur.execute("PRAGMA temp_store=MEMORY")
            # Debian's SQLite zeroes every freed page (secure_delete=ON), which made dropping a 1 MB job
            # body cost another megabyte of WAL and checkpoint. FAST still zeroes deleted content on the
            # pages a change writes anyway, but not whole freed pages, which are reused for later writes.
            cur.execute("PRAGMA secure_delete=FAST")
            # Checkpoints run on the Store's checkpointer thread, not inside some writer's commit.
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.close()

        @event.listens_for(engine, "begin")
        def on_begin(conn: sa.Connection) -> None:
            # On the driver's connection: SQLAlchemy's execution of a statement (context, cursor,
            # events) cost about a third of an empty transaction, on every transaction.
            try:
                conn.connection.dbapi_connection.execute(begin)  # type: ignore[union-attr]
            except sqlite3.Error as exc:  # raised as SQLAlchemy would have (callers catch its classes)
                raise sa.exc.DBAPIError.instance(begin, None, exc, sqlite3.Error) from exc

        return engine

    # The writer gets a large page cache (bulk loads, index updates); each reader a small one, since
    # streams touch every page once and eight full caches would cost half a gigabyte.
    return make(1, "BEGIN IMMEDIATE", 65536), make(8, "BEGIN", 8192)


def resolve_db(target: str | None) -> str:
    """``--db`` / ``PUSHBASE_DB`` / default, as a URL or path the Store understands."""
    return target or os.environ.get("PUSHBASE_DB") or DEFAULT_DB


def open_store(target: str | None = None, *, upgrade: bool = True) -> Store:
    url = resolve_db(target)
    store = Store(url)
    if upgrade:
        try:
            store.upgrade()
        except sa.exc.OperationalError as exc:
            store.close()
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise DatabaseUnavailable(f"cannot open the database {_without_password(url)}: {reason}") from None
    return store


def _without_password(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True) if "://" in url else url
