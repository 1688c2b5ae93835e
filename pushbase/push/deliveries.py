"""The database side of delivering a push: leases, cutting batches, recording attempts, stamping.

Everything here is blocking database work that the engine runs in threads. The order that makes a
push safe across crashes:

1. ``claim``: lease the push (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) so one worker works it, and
   in the same transaction take its oldest pending delivery or, when none is pending and the rate
   limit allows, ``cut`` the view.
2. ``cut``: read the view's rows in view order with each row's raw ``_modified`` marker, cut them into
   batches and store each as a *pending* delivery (webhook id, body, ``[[_id, marker], ...]``), and
   commit — before anything is sent. The deliveries just stored are handed to the engine as they are
   (up to ``_KEEP_BYTES``), so it need not read them back.
3. The engine sends the oldest pending delivery; ``record`` stores the attempt. On a 2xx, in one
   transaction: the delivery becomes *succeeded* and the log-time field is set on the rows it carried
   whose ``_modified`` still equals the marker (a row changed in flight is left to be pushed again;
   rows that joined later are not in the list). Only the log-time column is updated, so
   ``last modified [auto]`` does not move. On a failure nothing is stamped and the same delivery waits
   for its retry time. The lease is given up in that transaction when nothing else is pending.

So a call costs two write transactions (claim + cut, record + stamp + release) when rows arrive
slower than calls go out; rows that arrive while a call is in flight go out together in the next one.
A push's view and dataset are turned into a ``Target`` (its compiled queries and stamping statement)
once, and reused while their definitions stay the same.
"""
from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import sqlalchemy as sa

from ..columns import utc_now
from ..datasets import Dataset, get_dataset_by_id
from ..errors import Invalid, NotFound
from ..leases import owner_is_dead, owner_is_local
from ..outbound import Attempt
from ..rows import RowEncoder, decode_cursor, encode_cursor
from ..storage import NeedsConnection, Store, codecs
from ..storage.schema import datasets as datasets_table
from ..storage.schema import deliveries as deliveries_table
from ..storage.schema import pushes as pushes_table
from ..subscriptions import CHANNEL as VIEW_EVENTS
from ..subscriptions import publish_in
from ..storage.schema import views as views_table
from ..views.query import ViewQuery
from .definitions import Push, get_push, next_allowed_at, push_from_parts, utc_day
from .formats import Batch, BatchCutter, content_type
from ..storage.prepared import PreparedStatement
from .retry import Decision, Disable, RetryAt, Success
from .signing import new_webhook_id

__all__ = [
    "LEASE_SECONDS",
    "Delivery",
    "Recorded",
    "Claimed",
    "Cut",
    "NotYet",
    "Target",
    "TargetCache",
    "claim",
    "renew",
    "release",
    "release_all",
    "free_dead_leases",
    "next_pending",
    "view_has_rows",
    "cut",
    "record",
    "list_deliveries",
    "delivery_json",
    "deliveries_by_id",
    "LeaseLost",
]

LEASE_SECONDS = float(os.environ.get("PUSHBASE_PUSH_LEASE_SECONDS", "30"))
_LOCAL_HOLDER_RECHECK = dt.timedelta(seconds=1)
MAX_ATTEMPTS_KEPT = 100
_FLUSH_BYTES = 8 * 1024 * 1024
_KEEP_BYTES = 8 * 1024 * 1024  # pending deliveries handed to the engine in memory after a cut
_STAMP_CHUNK = 10_000  # rows per stamping statement
_PROBE_ROWS = 2000


# The statements of every call, built once and run as ``PreparedStatement`` (compiled once per dialect, run on
# the DBAPI cursor): SQLAlchemy's per-execution work costs more than running them on SQLite.
# Parameters are bound by name at each execution.
_P = sa.bindparam
_VIEW_OF_PUSH = sa.select(views_table.c.name, views_table.c.dataset_id, views_table.c.definition).where(views_table.c.id == _P("view_id"))
# What tells whether a cached target is still current: a changed view or dataset has a new updated_at.
_TARGET_VERSION = PreparedStatement(
    sa.select(views_table.c.name, views_table.c.dataset_id, views_table.c.updated_at, datasets_table.c.updated_at.label("dataset_updated_at"))
    .select_from(views_table.join(datasets_table, datasets_table.c.id == views_table.c.dataset_id))
    .where(views_table.c.id == _P("view_id"))
)
_PENDING_ID = (
    sa.select(sa.func.min(deliveries_table.c.id))
    .where(deliveries_table.c.push_id == pushes_table.c.id, deliveries_table.c.status == "pending")
    .scalar_subquery()
)
# The push, and its oldest pending delivery's id (usually none) in the same read.
# ... and what tells whether its cached target is current (see ``TargetCache.load``), in the same read.
_PUSH_ROW_SELECT = (
    sa.select(
        pushes_table,
        _PENDING_ID.label("pb_pending_id"),
        views_table.c.name.label("pb_view_name"),
        views_table.c.dataset_id.label("pb_dataset_id"),
        views_table.c.updated_at.label("pb_view_updated_at"),
        datasets_table.c.updated_at.label("pb_dataset_updated_at"),
    )
    .select_from(
        pushes_table.outerjoin(views_table, views_table.c.id == pushes_table.c.view_id).outerjoin(
            datasets_table, datasets_table.c.id == views_table.c.dataset_id
        )
    )
    .where(pushes_table.c.id == _P("push_id"))
)
_PUSH_ROW = PreparedStatement(_PUSH_ROW_SELECT)
_PUSH_ROW_LOCKED = PreparedStatement(_PUSH_ROW_SELECT.with_for_update(skip_locked=True, of=pushes_table))
_PUSH_EXISTS = PreparedStatement(sa.select(pushes_table.c.id).where(pushes_table.c.id == _P("push_id")))
_FIRST_PENDING = (
    sa.select(deliveries_table)
    .where(deliveries_table.c.push_id == _P("push_id"), deliveries_table.c.status == "pending")
    .order_by(deliveries_table.c.id)
    .limit(1)
)
_INSERT_DELIVERIES = deliveries_table.insert().returning(deliveries_table.c.id, sort_by_parameter_order=True)
# One delivery (a cut usually makes one): a single-row INSERT run on the cursor.
_INSERT_DELIVERY_STMT = (
    deliveries_table.insert()
    .values({name: _P(name) for name in ("push_id", "webhook_id", "status", "row_count", "row_keys", "body", "content_type", "attempts", "trigger", "created_at")})
    .returning(deliveries_table.c.id)
)
_INSERT_DELIVERY = PreparedStatement(_INSERT_DELIVERY_STMT)
_LEASE_STMT = pushes_table.update().where(pushes_table.c.id == _P("push_id")).values(lease_owner=_P("owner"), lease_expires_at=_P("expires"))
_LEASE = PreparedStatement(_LEASE_STMT)
_LEASE_AND_RUN_STMT = _LEASE_STMT.values(last_run_at=_P("run_at"))
_LEASE_AND_RUN = PreparedStatement(_LEASE_AND_RUN_STMT)
# PostgreSQL, a claim that cut one batch: the lease and the delivery in one statement (one round trip).
_INSERT_DELIVERY_AND_LEASE = PreparedStatement(_INSERT_DELIVERY_STMT.add_cte(_LEASE_AND_RUN_STMT.cte("pb_lease")))
# What ``record`` needs to know: the push's counters and lease holder, and the delivery's state.
_STATE = PreparedStatement(
    sa.select(
        pushes_table.c.enabled,
        pushes_table.c.consecutive_failures,
        pushes_table.c.calls_day,
        pushes_table.c.calls_today,
        pushes_table.c.lease_owner,
        deliveries_table.c.status,
        deliveries_table.c.attempts,
    )
    .select_from(pushes_table.join(deliveries_table, deliveries_table.c.push_id == pushes_table.c.id))
    .where(pushes_table.c.id == _P("push_id"), deliveries_table.c.id == _P("delivery_id"))
)
_DELIVERY_BY_ID = PreparedStatement(sa.select(deliveries_table).where(deliveries_table.c.id == _P("delivery_id")))
_DELIVERED = PreparedStatement(
    deliveries_table.update()
    .where(deliveries_table.c.id == _P("delivery_id"))
    .values(status="succeeded", attempts=_P("attempts"), finished_at=_P("at"), rows_stamped=_P("stamped"))
)
_SUCCEEDED = (
    pushes_table.update()
    .where(pushes_table.c.id == _P("push_id"))
    .values(
        calls_day=_P("day"),
        calls_today=_P("calls"),
        last_success_at=_P("at"),
        consecutive_failures=0,
        retry_at=None,
        last_error=None,
        status=_P("status"),
    )
)
_SUCCEEDED_AND_RELEASED = PreparedStatement(_SUCCEEDED.values(lease_owner=None, lease_expires_at=None))
_SUCCEEDED_ONLY = PreparedStatement(_SUCCEEDED)


class LeaseLost(Exception):
    """Another worker holds the push now (our lease expired); stop working it."""


@dataclass(frozen=True)
class Delivery:
    id: int
    push_id: int
    webhook_id: str
    row_count: int
    row_keys: list[list[int]]
    body: bytes
    content_type: str
    attempts: list[dict[str, Any]]


@dataclass(frozen=True)
class Recorded:
    """What ``record`` did: the delivery's new status, how many rows were stamped, and the push as the
    record left it (so the engine goes on without reading it back)."""

    status: str  # succeeded | pending | disabled | gone
    rows_stamped: int = 0
    at: dt.datetime | None = None
    released: bool = False  # the lease was given up in the same transaction
    push: Push | None = None


@dataclass(frozen=True)
class Target:
    """A push's view and dataset as ready-made statements. Built once per (view definition, dataset
    columns, log-time field) and shared read-only between threads; ``now()`` in a formula is a
    parameter computed at each execution, so reusing the statements is safe."""

    query: ViewQuery
    rows: sa.Select  # the view's rows in view order, each with its raw ``_modified`` marker last
    first_rows: sa.Select  # the same, at most ``_PROBE_ROWS + 1`` of them
    width: int  # columns of a row before the marker
    any_row: sa.Select  # does the view select anything? (no order, one row)
    log_col: str  # the log-time field's physical column, stamped where ``_id`` and ``_modified`` still match
    encoder: RowEncoder  # the rows of ``rows`` as the pull API writes them (``ViewQuery.encoder("json")``)
    first_rows_raw: PreparedStatement | None = None  # ``first_rows`` run on the cursor
    _compiled: dict[str, str] = field(default_factory=dict, compare=False)

    def succeed_sql(self, conn: sa.Connection, released: bool) -> str:
        """PostgreSQL: the stamp, the delivery's success and the push's counters as one statement
        (data-modifying CTEs); parameters ``v``, ``ids``, ``ms``, ``delivery_id``, ``attempts``, ``at``,
        ``push_id``, ``day``, ``calls``, ``status``, and the view event's NOTIFY (``channel``, and the
        payload around the count: ``head``, ``tail``). Returns one row: the count of rows stamped."""
        key = f"succeed:{released}"
        found = self._compiled.get(key)
        if found is None:
            stamp = self.stamp_sql(conn)
            quote = conn.dialect.identifier_preparer.quote
            release = ", lease_owner = NULL, lease_expires_at = NULL" if released else ""
            sql = (
                f"WITH s AS ({stamp} RETURNING 1), n AS (SELECT count(*) AS c FROM s), "
                f"d AS (UPDATE {quote(deliveries_table.name)} SET status = 'succeeded', attempts = %(attempts)s, finished_at = %(at)s, "
                "rows_stamped = (SELECT c FROM n) WHERE id = %(delivery_id)s) "
                f"UPDATE {quote(pushes_table.name)} SET calls_day = %(day)s, calls_today = %(calls)s, last_success_at = %(at)s, "
                f"consecutive_failures = 0, retry_at = NULL, last_error = NULL, status = %(status)s{release} "
                "WHERE id = %(push_id)s RETURNING (SELECT c FROM n), pg_notify(%(channel)s, %(head)s || (SELECT c FROM n) || %(tail)s)"
            )
            found = self._compiled[key] = sql
        return found

    def stamp_sql(self, conn: sa.Connection) -> str:
        """The stamp as one statement for a whole chunk of rows, for ``exec_driver_sql``-style use on
        the DBAPI cursor. SQLite: an UPDATE joined to ``json_each`` of the ``[_id, marker]`` pairs, one
        parameter ``k`` (their JSON) after the value ``v`` (qmark style: ``v`` then ``k``); an
        executemany stepped once per row and gave up the GIL each time, and a thread that takes the
        GIL back behind a busy event loop waits up to its switch interval (5 ms) per row, holding the
        database's one writer meanwhile. PostgreSQL: an UPDATE joined to ``unnest`` of the ids and
        markers, one round trip; parameters ``v``, ``ids``, ``ms``."""
        found = self._compiled.get(conn.dialect.name)
        if found is None:
            quote = conn.dialect.identifier_preparer.quote
            table, log_col = quote(self.query.table.name), quote(self.log_col)
            if conn.dialect.name == "postgresql":
                found = (
                    f"UPDATE {table} AS t SET {log_col} = %(v)s "
                    "FROM unnest(%(ids)s::bigint[], %(ms)s::bigint[]) AS k(id, m) WHERE t._id = k.id "
                    # The marker in microseconds, made a timestamp exactly (whole seconds, then the rest).
                    "AND t._modified = timestamptz 'epoch' + (k.m / 1000000) * interval '1 second' + mod(k.m, 1000000) * interval '1 microsecond'"
                )
            else:
                # Only the log-time column: `_modified` stays, and a row changed in flight no longer matches.
                found = (
                    f"UPDATE {table} SET {log_col} = ? FROM json_each(?) AS k "
                    f"WHERE {table}._id = json_extract(k.value, '$[0]') AND {table}._modified = json_extract(k.value, '$[1]')"
                )
            self._compiled[conn.dialect.name] = found
        return found


class TargetCache:
    """``Target`` objects by definition; a changed view or dataset gives a new key, so nothing is stale."""

    def __init__(self, size: int = 256) -> None:
        self._items: dict[Any, Target] = {}
        # By (view, its updated_at, dataset, its updated_at, log-time field): found with one small read.
        self._current: dict[Any, Target] = {}
        self._size = size
        self._lock = threading.Lock()

    def get(self, store: Store, conn: sa.Connection, push: Push) -> Target:
        return self.load(store, conn, push)[1]

    def load(self, store: Store, conn: sa.Connection, row: Any) -> tuple[Push, Target]:
        """The push of a ``pb_pushes`` row (or a ``Push``) and its target. One small read (the view's and
        its dataset's ``updated_at``) when the target is cached; the view and dataset otherwise."""
        if getattr(row, "pb_view_updated_at", None) is not None:  # a claim's read brought the versions
            name, dataset_id, view_at, dataset_at = row.pb_view_name, row.pb_dataset_id, row.pb_view_updated_at, row.pb_dataset_updated_at
        else:
            version = _TARGET_VERSION.first(conn, {"view_id": row.view_id})
            if version is None:
                raise NotFound(f"view #{row.view_id} does not exist")
            name, dataset_id, view_at, dataset_at = version.name, version.dataset_id, version.updated_at, version.dataset_updated_at
        push = row if isinstance(row, Push) else push_from_parts(row, name, dataset_id)
        current = (store.url, push.view_id, view_at, dataset_id, dataset_at, push.log_time_field)
        with self._lock:
            found = self._current.get(current)
        if found is not None:
            return push, found
        view = conn.execute(_VIEW_OF_PUSH, {"view_id": row.view_id}).first()
        if view is None:
            raise NotFound(f"view #{row.view_id} does not exist")
        dataset = get_dataset_by_id(store, view.dataset_id, conn)
        key = (store.url, push.view_id, orjson.dumps(view.definition, option=orjson.OPT_SORT_KEYS), dataset, push.log_time_field)
        with self._lock:
            found = self._items.get(key)
        if found is not None:
            with self._lock:
                if len(self._current) >= self._size:
                    self._current.clear()
                self._current[current] = found
            return push, found
        target = _build_target(store, dataset, dict(view.definition), push.log_time_field)
        with self._lock:
            if len(self._items) >= self._size:
                self._items.clear()
            self._items[key] = target
            if len(self._current) >= self._size:
                self._current.clear()
            self._current[current] = target
        return push, target


def _build_target(store: Store, dataset: Dataset, definition: dict[str, Any], log_time_field: str) -> Target:
    query = ViewQuery(store, dataset, definition)
    # Fields in the pull API's JSON form where SQL can make it (datetimes on both engines, dates on
    # PostgreSQL): a push carries rows exactly as a pull of the view gives them.
    rows = query.select(extra=[query.table.c._modified.label("_pb_marker")], output="json")
    if query.limit is not None:
        rows = rows.limit(int(query.limit))
    first_rows = rows.limit(_PROBE_ROWS + 1 if query.limit is None else min(int(query.limit), _PROBE_ROWS + 1))
    log_col = dataset.column(log_time_field).col
    return Target(
        query, rows, first_rows, len(query.output) + 1, query.select(with_order=False).limit(1), log_col,
        query.encoder("json"), PreparedStatement(first_rows),
    )


# ---------------------------------------------------------------------------------------------
# Leases


@dataclass
class Claimed:
    """A leased push and the pending deliveries to send, oldest first."""

    push: Push
    target: Target
    deliveries: list[Delivery]  # held in memory, oldest first
    more: bool  # more deliveries may be pending in the database than ``deliveries``
    cut: bool  # the view was cut in this claim
    leased: bool = True  # False: nothing to send, so no lease was taken


@dataclass(frozen=True)
class NotYet:
    """The rate limit (or a retry time) does not allow a call before ``at``; no lease was taken."""

    at: dt.datetime


def claim(
    store: Store, push_id: int, owner: str, targets: TargetCache, *, manual: bool = False, trigger: str = "auto"
) -> Claimed | NotYet | None | dt.datetime:
    """Lease the push and, in the same transaction, take its oldest pending delivery or — when none is
    pending — cut the view into new ones. Returns None when the push is gone or disabled; when another
    worker holds it, the time to look again (its lease's expiry, or within a second for a holder on
    this host); ``NotYet`` when the rate limit says wait (a run by hand
    ignores it)."""
    # Usually every statement is a prepared one (a cached target, one batch): a light transaction.
    try:
        with store.light_write() as conn:
            return _claim(store, conn, push_id, owner, targets, manual, trigger)
    except NeedsConnection:
        pass
    with store.write() as conn:
        return _claim(store, conn, push_id, owner, targets, manual, trigger)


def _claim(
    store: Store, conn: Any, push_id: int, owner: str, targets: TargetCache, manual: bool, trigger: str
) -> Claimed | NotYet | None | dt.datetime:
    now = utc_now()
    locked = _PUSH_ROW_LOCKED if store.dialect == "postgresql" else _PUSH_ROW
    row = locked.first(conn, {"push_id": push_id})
    if row is None:
        # Gone, or locked this instant by another worker claiming it (PostgreSQL).
        exists = _PUSH_EXISTS.first(conn, {"push_id": push_id})
        return now + dt.timedelta(seconds=1) if exists else None
    if not row.enabled and not manual:
        return None
    held = (
        row.lease_owner is not None
        and row.lease_owner != owner
        and row.lease_expires_at is not None
        and row.lease_expires_at > now
        and not owner_is_dead(row.lease_owner)  # a process on this host that is gone (kill -9)
    )
    if held:
        if owner_is_local(row.lease_owner):
            # Looked at again within a second: a holder on this host that dies (kill -9) is then
            # seen gone above, and its push taken over at once rather than when its lease expires.
            return min(row.lease_expires_at, now + _LOCAL_HOLDER_RECHECK)  # type: ignore[no-any-return]
        return row.lease_expires_at  # type: ignore[no-any-return]
    push, target = targets.load(store, conn, row)
    first = None if row.pb_pending_id is None else _delivery(_DELIVERY_BY_ID.first(conn, {"delivery_id": row.pb_pending_id}))
    if not manual:
        due = next_allowed_at(push, now, pending=first is not None)
        if due is not None:
            return NotYet(due)
    lease = {"push_id": push_id, "owner": owner, "expires": now + dt.timedelta(seconds=LEASE_SECONDS)}
    if first is not None:
        _LEASE.run(conn, lease)
        return Claimed(push, target, [first], more=True, cut=False)
    # Cut first: the row lock (PostgreSQL) or the write lock (SQLite) keeps other workers out
    # meanwhile, and when the view selects nothing no lease is taken (no write at all).
    made = _cut(store, conn, push, target, trigger, {**lease, "run_at": now})
    if not made.made:
        return Claimed(push, target, [], more=False, cut=True, leased=False)
    if not made.leased:
        _LEASE_AND_RUN.run(conn, {**lease, "run_at": now})
    return Claimed(replace(push, last_run_at=now), target, made.deliveries, more=made.more, cut=True)


def renew(store: Store, push_id: int, owner: str) -> bool:
    with store.write() as conn:
        result = conn.execute(
            pushes_table.update()
            .where(pushes_table.c.id == push_id, pushes_table.c.lease_owner == owner)
            .values(lease_expires_at=utc_now() + dt.timedelta(seconds=LEASE_SECONDS))
        )
        return bool(result.rowcount)


def release(store: Store, push_id: int, owner: str) -> None:
    with store.write() as conn:
        conn.execute(
            pushes_table.update().where(pushes_table.c.id == push_id, pushes_table.c.lease_owner == owner).values(lease_owner=None, lease_expires_at=None)
        )


def release_all(store: Store, owner: str) -> None:
    with store.write() as conn:
        conn.execute(pushes_table.update().where(pushes_table.c.lease_owner == owner).values(lease_owner=None, lease_expires_at=None))


def free_dead_leases(store: Store) -> int:
    """Free at once the leases held by processes on this host that no longer exist (kill -9)."""
    with store.write() as conn:
        rows = conn.execute(sa.select(pushes_table.c.id, pushes_table.c.lease_owner).where(pushes_table.c.lease_owner.is_not(None))).all()
        dead = [r.id for r in rows if owner_is_dead(r.lease_owner)]
        if dead:
            conn.execute(pushes_table.update().where(pushes_table.c.id.in_(dead)).values(lease_owner=None, lease_expires_at=None))
    return len(dead)


def _check_lease(conn: sa.Connection, push_id: int, owner: str) -> None:
    held = conn.execute(sa.select(pushes_table.c.lease_owner).where(pushes_table.c.id == push_id)).scalar()
    if held != owner:
        raise LeaseLost(push_id)


# ---------------------------------------------------------------------------------------------
# Reading the view and cutting batches


def _row_keys(store: Store, rows: Any, width: int) -> list[list[int]]:
    """Each row's ``[_id, marker]``, the marker being its ``_modified`` (at ``width``) as an exact
    integer of microseconds, whatever the engine stores (SQLite: that integer already)."""
    if store.dialect == "sqlite":
        return [[row[0], row[width]] for row in rows]
    return [[row[0], codecs.datetime_to_micros(row[width])] for row in rows]


def _marker_value(store: Store, marker: int) -> Any:
    return marker if store.dialect == "sqlite" else codecs.micros_to_datetime(marker)


def view_has_rows(conn: sa.Connection, target: Target) -> bool:
    return conn.execute(target.any_row).first() is not None


@dataclass
class Cut:
    """What a cut stored: the first deliveries (kept in memory) and whether more were stored."""

    deliveries: list[Delivery] = field(default_factory=list)
    more: bool = False
    made: int = 0
    leased: bool = False  # the lease was taken with the deliveries (``lease`` given, PostgreSQL)


def cut(store: Store, push: Push, target: Target, owner: str, *, trigger: str = "auto") -> Cut:
    """Store the view's current rows as pending deliveries, in view order (the lease must be held)."""
    now = utc_now()
    with store.write() as conn:
        _check_lease(conn, push.id, owner)
        conn.execute(pushes_table.update().where(pushes_table.c.id == push.id).values(last_run_at=now))
        return _cut(store, conn, push, target, trigger)


def _cut(store: Store, conn: sa.Connection, push: Push, target: Target, trigger: str, lease: dict[str, Any] | None = None) -> Cut:
    out = Cut()
    pending: list[Batch] = []
    size = 0
    ctype = content_type(push.format)

    def flush() -> None:
        nonlocal pending, size
        params = [
            {
                "push_id": push.id,
                "webhook_id": new_webhook_id(),
                "status": "pending",
                "row_count": b.rows,
                "row_keys": b.keys,
                "body": b.body,
                "content_type": ctype,
                "attempts": [],
                "trigger": trigger,
                "created_at": utc_now(),
            }
            for b in pending
        ]
        if len(params) == 1 and lease is not None and not out.made and store.dialect == "postgresql":
            ids = [_INSERT_DELIVERY_AND_LEASE.first(conn, {**params[0], **lease})[0]]
            out.leased = True
        elif len(params) == 1:
            ids = [_INSERT_DELIVERY.first(conn, params[0])[0]]
        else:
            ids = conn.execute(_INSERT_DELIVERIES, params).scalars().all()
        kept = sum(len(d.body) for d in out.deliveries)
        for ident, p in zip(ids, params):
            if not out.more and kept + len(p["body"]) <= _KEEP_BYTES:
                out.deliveries.append(Delivery(ident, push.id, p["webhook_id"], p["row_count"], p["row_keys"], p["body"], ctype, []))
                kept += len(p["body"])
            else:
                out.more = True  # read back, in order, once the kept ones are delivered
        out.made += len(params)
        pending, size = [], 0

    width = target.width
    encoder = target.encoder
    cutter = BatchCutter(push.format, push.max_batch_rows, push.max_batch_bytes)

    # Most cuts are small: read them at once. A large view is streamed (a server-side cursor on
    # PostgreSQL costs round trips that a small cut would notice).
    raw = target.first_rows_raw
    parts: Any = [raw.all(conn) if raw is not None and raw.usable(conn) else conn.execute(target.first_rows).all()]
    if len(parts[0]) > _PROBE_ROWS:
        parts = conn.execute(target.rows, execution_options={"yield_per": 1000}).partitions(1000)
    else:
        # The usual cut: every row is here. Each run of max_batch_rows rows is one batch, encoded in one
        # go; from the first run over max_batch_bytes on, row by row (add), which cuts where the bytes say.
        rows = parts[0]
        parts = [rows] if push.format == "ndjson" else []  # NDJSON, a line per row: row by row
        for start in range(0, 0 if parts else len(rows), push.max_batch_rows):
            chunk = rows[start:start + push.max_batch_rows]
            whole = cutter.whole(encoder.structs(chunk), _row_keys(store, chunk, width))
            if whole is None:
                parts = [rows[start:]]  # cut by bytes from here on
                break
            pending.append(whole)
    for part in parts:
        for row, (_, marker) in zip(encoder.objects(part), _row_keys(store, part, width)):
            batch = cutter.add(row, marker)
            if batch is not None:
                pending.append(batch)
                size += len(batch.body)
        if size >= _FLUSH_BYTES:
            flush()
    last = cutter.finish()
    if last is not None:
        pending.append(last)
    if pending:
        flush()
    return out


def _first_pending(conn: sa.Connection, push_id: int) -> Delivery | None:
    return _delivery(conn.execute(_FIRST_PENDING, {"push_id": push_id}).first())


def _delivery(row: Any) -> Delivery | None:
    if row is None:
        return None
    return Delivery(row.id, row.push_id, row.webhook_id, row.row_count, row.row_keys, bytes(row.body), row.content_type, list(row.attempts or []))


def next_pending(store: Store, push_id: int) -> Delivery | None:
    with store.read() as conn:
        return _first_pending(conn, push_id)


# ---------------------------------------------------------------------------------------------
# After a call


def _stamp_value(store: Store, keys: list[list[int]], at: dt.datetime) -> Any:
    # Never earlier than what it stamps, so `{last modified [auto]} > {last pushed}` is false after.
    latest = max((k[1] for k in keys), default=0)
    return max(at, codecs.micros_to_datetime(latest)) if store.dialect == "postgresql" else max(codecs.datetime_to_micros(at), latest)


_STAMPED_SLOT = -727400000017  # stands for the count of rows stamped in a view event's payload


def _succeed_pg(
    store: Store, conn: Any, target: Target, keys: list[list[int]], value: dt.datetime, params: dict[str, Any], released: bool, view: str, event: dict[str, Any]
) -> int:
    """PostgreSQL, after a 2xx: stamp the rows, mark the delivery succeeded, update the push and
    publish the view's event in one statement (one round trip instead of four). The same statements
    as the general path: the stamp (``Target.stamp_sql``) matches ``_id`` and ``_modified``; the count
    of rows it stamped goes into the delivery and into the event (``publish_in``'s payload, the count
    spliced in by the database). Returns that count."""
    sql = target.succeed_sql(conn, released)
    payload = orjson.dumps({**event, "rows_stamped": _STAMPED_SLOT, "view": view}).decode()
    head, tail = payload.split(f'"rows_stamped":{_STAMPED_SLOT}')
    head += '"rows_stamped":'
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(
            sql,
            {
                **params,
                "v": value,
                **_pg_keys(keys),
                "attempts": orjson.dumps(params["attempts"]).decode(),
                "channel": VIEW_EVENTS,
                "head": head,
                "tail": tail,
            },
        )
        found = cursor.fetchone()
    finally:
        cursor.close()
    if found is None:
        raise LeaseLost(params["push_id"])  # the push is gone (cannot be: it was read in this transaction)
    stamped = int(found[0])
    # The NOTIFY is sent: only this process's own listeners are left (when it does not hear it back).
    store.notify(conn, VIEW_EVENTS, f"{head}{stamped}{tail}", sent=True)
    return stamped


def _pg_keys(keys: list[list[int]]) -> dict[str, str]:
    """The stamp's ``ids`` and ``ms`` (markers in microseconds) as PostgreSQL array literals: psycopg
    dumps a Python list element by element in Python, which cost the push engine a fifth of its
    database work; the literal is joined in C."""
    return {"ids": "{" + ",".join([str(k[0]) for k in keys]) + "}", "ms": "{" + ",".join([str(k[1]) for k in keys]) + "}"}


def _stamp(store: Store, conn: sa.Connection, target: Target, keys: list[list[int]], at: dt.datetime) -> int:
    value = _stamp_value(store, keys, at)
    sql = target.stamp_sql(conn)
    stamped = 0
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        for start in range(0, len(keys), _STAMP_CHUNK):
            chunk = keys[start : start + _STAMP_CHUNK]
            if store.dialect == "postgresql":
                cursor.execute(sql, {"v": value, **_pg_keys(chunk)})
            else:
                cursor.execute(sql, (value, orjson.dumps(chunk).decode()))
            stamped += max(cursor.rowcount, 0)
        return stamped
    finally:
        cursor.close()


def _attempt_json(attempt: Attempt, decision: Decision) -> dict[str, Any]:
    data = attempt.to_json()
    data["response"] = attempt.excerpt
    if isinstance(decision, Success):
        data["outcome"] = "succeeded"
    elif isinstance(decision, RetryAt):
        data.update(outcome="retry", retry_at=decision.at.isoformat(), reason=decision.reason)
    else:
        data.update(outcome="disabled", reason=decision.reason)
    return data


def record(
    store: Store, push: Push, target: Target, delivery: Delivery, attempt: Attempt, decision: Decision, owner: str, *, release_when_done: bool = False
) -> Recorded:
    """Store one attempt of ``delivery`` and act on ``decision`` — in one transaction.

    The lease is given up in the same transaction after a failure, and after a success when
    ``release_when_done`` (the engine knows nothing else of the push is pending).
    """
    if isinstance(decision, Success):
        # A success runs prepared statements only: a light transaction (failures are rare, and
        # written through SQLAlchemy).
        try:
            with store.light_write() as conn:
                return _record(store, conn, push, target, delivery, attempt, decision, owner, release_when_done)
        except NeedsConnection:
            pass
    with store.write() as conn:
        return _record(store, conn, push, target, delivery, attempt, decision, owner, release_when_done)


def _record(
    store: Store, conn: Any, push: Push, target: Target, delivery: Delivery, attempt: Attempt, decision: Decision, owner: str, release_when_done: bool
) -> Recorded:
    now = utc_now()
    current = row = _STATE.first(conn, {"push_id": push.id, "delivery_id": delivery.id})
    if current is None:
        return Recorded("gone")  # the push, or this delivery of it, was deleted
    if row.status != "pending":
        # Another worker finished it (our lease had expired): leave its result alone.
        return Recorded(row.status)
    attempts = [*(row.attempts or []), _attempt_json(attempt, decision)]
    if len(attempts) > MAX_ATTEMPTS_KEPT:
        attempts = attempts[:1] + attempts[-(MAX_ATTEMPTS_KEPT - 1) :]
    day = utc_day(now)
    calls = ((current.calls_today or 0) if current.calls_day == day else 0) + 1
    enabled = bool(current.enabled)
    holds = current.lease_owner == owner
    release = {"lease_owner": None, "lease_expires_at": None}
    push_values: dict[str, Any] = {"calls_day": day, "calls_today": calls}
    policy = push.retry_policy
    if isinstance(decision, Success):
        released = release_when_done and holds
        done = {"push_id": push.id, "day": day, "calls": calls, "at": now, "status": policy.status_for(0, enabled)}
        # The view's event stream hears of it once this commits (from any process, on PostgreSQL).
        event = {"push": push.name, "rows": delivery.row_count, "rows_stamped": 0, "webhook_id": delivery.webhook_id, "delivery": delivery.id, "at": now.isoformat()}
        if store.dialect == "postgresql" and len(delivery.row_keys) <= _STAMP_CHUNK:
            value = _stamp_value(store, delivery.row_keys, now)
            params = {**done, "delivery_id": delivery.id, "attempts": attempts}
            stamped = _succeed_pg(store, conn, target, delivery.row_keys, value, params, released, push.view_name, event)
        else:
            stamped = _stamp(store, conn, target, delivery.row_keys, now)
            _DELIVERED.run(conn, {"delivery_id": delivery.id, "attempts": attempts, "at": now, "stamped": stamped})
            (_SUCCEEDED_AND_RELEASED if released else _SUCCEEDED_ONLY).run(conn, done)
            publish_in(store, conn, push.view_name, {**event, "rows_stamped": stamped})
        after = replace(push, enabled=enabled, consecutive_failures=0, retry_at=None, last_error=None, last_success_at=now, calls_day=day, calls_today=calls)
        return Recorded("succeeded", stamped, now, released=released, push=after)
    failures = (current.consecutive_failures or 0) + 1
    conn.execute(deliveries_table.update().where(deliveries_table.c.id == delivery.id).values(attempts=attempts))
    if holds:
        push_values.update(release)  # the engine stops after a failure
    if isinstance(decision, Disable):
        push_values.update(
            enabled=False, status="disabled", disabled_reason=decision.reason, last_error=decision.reason, consecutive_failures=failures, retry_at=None
        )
        conn.execute(pushes_table.update().where(pushes_table.c.id == push.id).values(**push_values))
        after = replace(push, enabled=False, consecutive_failures=failures, retry_at=None, calls_day=day, calls_today=calls)
        return Recorded("disabled", released=holds, push=after)
    assert isinstance(decision, RetryAt)
    push_values.update(consecutive_failures=failures, retry_at=decision.at, last_error=decision.reason, status=policy.status_for(failures, enabled))
    conn.execute(pushes_table.update().where(pushes_table.c.id == push.id).values(**push_values))
    after = replace(push, enabled=enabled, consecutive_failures=failures, retry_at=decision.at, calls_day=day, calls_today=calls)
    return Recorded("pending", at=decision.at, released=holds, push=after)


# ---------------------------------------------------------------------------------------------
# The delivery log


def delivery_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "webhook_id": row.webhook_id,
        "rows": row.row_count,
        "rows_stamped": row.rows_stamped,
        "status": row.status,
        "trigger": row.trigger,
        "bytes": len(row.body) if row.body is not None else None,
        "content_type": row.content_type,
        "created_at": row.created_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "attempts": list(row.attempts or []),
    }


def list_deliveries(store: Store, name: str, *, limit: int | None = None, after: str | None = None, status: str | None = None) -> dict[str, Any]:
    """Newest first, ``limit`` (default 50, at most 500) per page; ``next`` is the cursor of the next page."""
    size = 50 if limit is None else limit
    if not 1 <= size <= 500:
        raise Invalid("limit must be between 1 and 500", code="invalid_limit")
    if status is not None and status not in ("pending", "succeeded", "failed"):
        raise Invalid("status must be pending, succeeded or failed", code="invalid_request")
    with store.read() as conn:
        push = get_push(store, name, conn)
        query = sa.select(deliveries_table).where(deliveries_table.c.push_id == push.id)
        if status is not None:
            query = query.where(deliveries_table.c.status == status)
        if after:
            values = decode_cursor(after)
            if len(values) != 1 or not isinstance(values[0], int):
                raise Invalid("the 'after' cursor does not belong to this delivery log", code="invalid_cursor")
            query = query.where(deliveries_table.c.id < values[0])
        rows = conn.execute(query.order_by(deliveries_table.c.id.desc()).limit(size + 1)).all()
    page = rows[:size]
    return {
        "deliveries": [delivery_json(r) for r in page],
        "next": encode_cursor([page[-1].id]) if len(rows) > size and page else None,
    }


def deliveries_by_id(store: Store, ids: list[int]) -> list[dict[str, Any]]:
    if not ids:
        return []
    with store.read() as conn:
        rows = conn.execute(sa.select(deliveries_table).where(deliveries_table.c.id.in_(ids)).order_by(deliveries_table.c.id)).all()
    return [delivery_json(r) for r in rows]

