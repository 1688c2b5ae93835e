"""Read-ahead of JSON pages: while a client paging through a view reads one page, the server prepares
the next, so that its work (and the database's) overlaps the client's instead of waiting for the next
request.

A prepared page is only ever served if nothing at all was committed to the database since its reading
began: then it is exactly the page the request would have read. Otherwise it is dropped and the page
read as usual. "Nothing committed" is asked of the database, for both engines, just before the read
and again when the page is asked for:
- SQLite: ``PRAGMA data_version`` on a connection of our own (it changes whenever any other connection,
  of any process, commits), a microsecond;
- PostgreSQL: ``pg_current_snapshot()``, which stays the same only while no transaction of the whole
  server has been given an id or has ended (a write anywhere makes the page stale: conservative).

When it is used:
- after a request that carried ``after``: a client that is paging through. A first page never starts
  one, so a client polling the first page of a view costs no extra read;
- not for views whose formulas read the clock (``now()``, ``today()``): their rows depend on when the
  page is read.
At most ``MAX_PAGES`` pages are held, each for at most ``TTL_SECONDS``; one is read at a time.

On a database that is written all the time (a steady ingest), most prepared pages go stale and each
would be read twice. So when ``STALE_OF_RECENT`` of the last ``RECENT`` prepared pages went stale,
read-ahead pauses for ``PAUSE_SECONDS``, then tries again.
"""
from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from ..storage import Store
from .query import JsonPage

__all__ = ["ReadAhead", "reads_the_clock"]

READ_AHEAD = Counter(
    "pushbase_pull_read_ahead_total",
    "JSON pages read ahead for clients paging through a view, by what became of them (served, stale, unused)",
    ["result"],
)

_CLOCK = re.compile(r"\b(now|today)\s*\(", re.IGNORECASE)


def reads_the_clock(definition: dict[str, Any]) -> bool:
    """True when a calculation of the view may use ``now()`` or ``today()`` (a field name that merely
    looks like it counts too: then there is simply no read-ahead)."""
    return any(_CLOCK.search(str(c.get("formula", ""))) for c in definition.get("calculations") or [])


class _SqliteVersion:
    """``PRAGMA data_version`` on a connection of our own."""

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _PgVersion:
    """``pg_current_snapshot()`` as text (its xmin, xmax and transactions in progress)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __call__(self) -> Any:
        with self._store.read() as conn:
            return conn.exec_driver_sql("SELECT pg_current_snapshot()::text").scalar()

    def close(self) -> None:
        pass


@dataclass
class _Prepared:
    future: Future[tuple[Any, JsonPage]]  # (version just before the read, the page)
    since: float


class ReadAhead:
    MAX_PAGES = 8
    TTL_SECONDS = 30.0
    RECENT = 10
    STALE_OF_RECENT = 8
    PAUSE_SECONDS = 30.0

    def __init__(self, version: _SqliteVersion | _PgVersion) -> None:
        self.version = version
        self._lock = threading.Lock()
        self._pages: OrderedDict[tuple[Any, ...], _Prepared] = OrderedDict()
        self._recent: deque[bool] = deque(maxlen=self.RECENT)  # True: served, False: stale
        self._paused_until = 0.0
        self._closed = False
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pushbase-read-ahead")

    @classmethod
    def for_store(cls, store: Store) -> ReadAhead | None:
        """One for a SQLite file or a PostgreSQL database; None for in-memory SQLite."""
        if store.dialect == "postgresql":
            return cls(_PgVersion(store))
        path = store.read_engine.url.database
        return cls(_SqliteVersion(path)) if path and path != ":memory:" else None

    def _versioned(self, read: Callable[[], JsonPage]) -> tuple[Any, JsonPage]:
        # The version is taken before the page's read begins: a commit after it, even one the read
        # still sees, makes the page stale (never the other way round).
        version = self.version()
        return version, read()

    def prepare(self, key: tuple[Any, ...], read: Callable[[], JsonPage]) -> None:
        """Start reading the page ``key``, unless it is already prepared or being read, read-ahead is
        paused or closed, or a read is already waiting for the reader (then the clients page faster
        than it reads: the queue would only grow, with pages read for nobody)."""
        now = time.monotonic()
        with self._lock:
            if self._closed or key in self._pages or now < self._paused_until:
                return
            if any(not p.future.running() and not p.future.done() for p in self._pages.values()):
                return
            while len(self._pages) >= self.MAX_PAGES:
                _key, evicted = self._pages.popitem(last=False)
                evicted.future.cancel()
                READ_AHEAD.labels("unused").inc()
            self._pages[key] = _Prepared(self._reader.submit(self._versioned, read), now)

    def take(self, key: tuple[Any, ...]) -> _Prepared | None:
        """The page prepared for ``key``, read or being read; None when there is none, it is too old,
        or its read has not started (queued behind others': the request reads it sooner itself)."""
        with self._lock:
            prepared = self._pages.pop(key, None)
        if prepared is None:
            return None
        if prepared.future.cancel() or time.monotonic() - prepared.since > self.TTL_SECONDS:
            READ_AHEAD.labels("unused").inc()
            return None
        return prepared

    def served(self, prepared: _Prepared) -> JsonPage | None:
        """The prepared page, if nothing was committed since its read began (call once it is done;
        asks the database, so not on the event loop)."""
        page: JsonPage | None
        try:
            version, page = prepared.future.result(timeout=0)
        except Exception:  # noqa: BLE001 - the request reads the page itself, and meets the error itself
            version, page = None, None
        if page is not None:
            try:
                if self.version() != version:
                    page = None
            except Exception:  # noqa: BLE001 - cannot tell: the request reads the page itself
                page = None
        READ_AHEAD.labels("served" if page is not None else "stale").inc()
        with self._lock:
            self._recent.append(page is not None)
            if len(self._recent) == self.RECENT and self._recent.count(False) >= self.STALE_OF_RECENT:
                self._paused_until = time.monotonic() + self.PAUSE_SECONDS
                self._recent.clear()
        return page

    @property
    def paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._pages.clear()
        self._reader.shutdown(wait=True, cancel_futures=True)
        self.version.close()
