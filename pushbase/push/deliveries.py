"""The database side of delivering a push: leases, cutting batches, recording attempts, stamping.

Everything here is blocking database work that the engine runs in threads. The order that makes a
push safe across crashes:

1. ``claim``: lease the push (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) so one worker works it.
2. ``cut``: read the view's rows in view order with each row's raw ``_modified`` marker, cut them into
   batches and store each as a *pending* delivery (webhook id, body, ``[[_id, marker], ...]``), and
   commit — before anything is sent.
3. The engine sends the oldest pending delivery; ``record`` stores the attempt. On a 2xx, in one
   transaction: the delivery becomes *succeeded* and the log-time field is set on the rows it carried
   whose ``_modified`` still equals the marker (a row changed in flight is left to be pushed again;
   rows that joined later are not in the list). Only the log-time column is updated, so
   ``last modified [auto]`` does not move. On a failure nothing is stamped and the same delivery waits
   for its retry time.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..columns import utc_now
from ..datasets import get_dataset_by_id
from ..errors import Invalid
from ..leases import owner_is_dead
from ..outbound import Attempt
from ..rows import decode_cursor, encode_cursor
from ..storage import Store, codecs
from ..storage.schema import deliveries as deliveries_table
from ..storage.schema import pushes as pushes_table
from ..subscriptions import publish_in
from ..views.store import get_view_by_id, view_query
from .definitions import Push, get_push, get_push_by_id, utc_day
from .formats import Batch, BatchCutter, content_type
from .retry import Decision, Disable, RetryAt, Success
from .signing import new_webhook_id

__all__ = [
    "LEASE_SECONDS",
    "Delivery",
    "Recorded",
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
MAX_ATTEMPTS_KEPT = 100
_FLUSH_BYTES = 8 * 1024 * 1024
_STAMP_CHUNK = 500


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
    """What ``record`` did: the delivery's new status and how many rows were stamped."""

    status: str  # succeeded | pending | disabled | gone
    rows_stamped: int = 0
    at: dt.datetime | None = None
    released: bool = False  # the lease was given up in the same transaction


# ---------------------------------------------------------------------------------------------
# Leases


def claim(store: Store, push_id: int, owner: str, *, manual: bool = False) -> Push | None | dt.datetime:
    """Lease the push. Returns the push, None when it is gone or disabled, or — when another worker
    holds it — the time its lease expires."""
    now = utc_now()
    with store.write() as conn:
        query = sa.select(pushes_table.c.id, pushes_table.c.lease_owner, pushes_table.c.lease_expires_at, pushes_table.c.enabled).where(
            pushes_table.c.id == push_id
        )
        row = conn.execute(store.skip_locked(query)).first()
        if row is None:
            # Gone, or locked this instant by another worker claiming it (PostgreSQL).
            exists = conn.execute(sa.select(pushes_table.c.id).where(pushes_table.c.id == push_id)).first()
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
            return row.lease_expires_at  # type: ignore[no-any-return]
        conn.execute(
            pushes_table.update()
            .where(pushes_table.c.id == push_id)
            .values(lease_owner=owner, lease_expires_at=now + dt.timedelta(seconds=LEASE_SECONDS))
        )
        return get_push_by_id(store, push_id, conn)


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


def _marker(store: Store, value: Any) -> int:
    """A row's ``_modified`` as an exact integer (microseconds), whatever the engine stores."""
    return int(value) if store.dialect == "sqlite" else codecs.datetime_to_micros(value)


def _marker_value(store: Store, marker: int) -> Any:
    return marker if store.dialect == "sqlite" else codecs.micros_to_datetime(marker)


def view_has_rows(store: Store, push: Push) -> bool:
    with store.read() as conn:
        query = view_query(store, get_view_by_id(store, push.view_id, conn), conn)
        return conn.execute(query.select(with_order=False).limit(1)).first() is not None


def cut(store: Store, push: Push, owner: str, *, trigger: str = "auto") -> int:
    """Store the view's current rows as pending deliveries, in view order; returns how many."""
    made = 0
    pending: list[Batch] = []
    size = 0
    now = utc_now()

    def flush() -> None:
        nonlocal made, pending, size
        with store.write() as wconn:
            _check_lease(wconn, push.id, owner)
            if made == 0:
                wconn.execute(pushes_table.update().where(pushes_table.c.id == push.id).values(last_run_at=now))
            wconn.execute(
                deliveries_table.insert(),
                [
                    {
                        "push_id": push.id,
                        "webhook_id": new_webhook_id(),
                        "status": "pending",
                        "row_count": b.rows,
                        "row_keys": b.keys,
                        "body": b.body,
                        "content_type": content_type(push.format),
                        "attempts": [],
                        "trigger": trigger,
                        "created_at": utc_now(),
                    }
                    for b in pending
                ],
            )
        made += len(pending)
        pending, size = [], 0

    with store.read() as conn:
        query = view_query(store, get_view_by_id(store, push.view_id, conn), conn)
        select = query.select(extra=[query.table.c._modified.label("_pb_marker")])
        if query.limit is not None:
            select = select.limit(int(query.limit))
        width = len(query.output) + 1
        cutter = BatchCutter(push.format, push.max_batch_rows, push.max_batch_bytes)
        result = conn.execution_options(stream_results=True, yield_per=1000).execute(select)
        for part in result.partitions(1000):
            for raw in part:
                batch = cutter.add(query.decoder(raw[:width]), _marker(store, raw[width]))
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
    return made


def next_pending(store: Store, push_id: int) -> Delivery | None:
    with store.read() as conn:
        row = conn.execute(
            sa.select(deliveries_table)
            .where(deliveries_table.c.push_id == push_id, deliveries_table.c.status == "pending")
            .order_by(deliveries_table.c.id)
            .limit(1)
        ).first()
    if row is None:
        return None
    return Delivery(row.id, row.push_id, row.webhook_id, row.row_count, row.row_keys, bytes(row.body), row.content_type, list(row.attempts or []))


# ---------------------------------------------------------------------------------------------
# After a call


def _stamp(store: Store, conn: sa.Connection, push: Push, keys: list[list[int]], at: dt.datetime) -> int:
    view = get_view_by_id(store, push.view_id, conn)
    dataset = get_dataset_by_id(store, view.dataset_id, conn)
    table = store.dataset_table(dataset.physical)
    column = dataset.column(push.log_time_field).col
    # Never earlier than what it stamps, so `{last modified [auto]} > {last pushed}` is false after.
    latest = max((k[1] for k in keys), default=0)
    value = max(at, codecs.micros_to_datetime(latest)) if store.dialect == "postgresql" else max(codecs.datetime_to_micros(at), latest)
    # Only the log-time column: `_modified` stays, and a row changed in flight no longer matches.
    stmt = (
        table.update()
        .where(table.c._id == sa.bindparam("k_id"), table.c._modified == sa.bindparam("k_marker"))
        .values({column: value})
    )
    stamped = 0
    for start in range(0, len(keys), _STAMP_CHUNK):
        params = [{"k_id": k[0], "k_marker": _marker_value(store, k[1])} for k in keys[start : start + _STAMP_CHUNK]]
        stamped += conn.execute(stmt, params).rowcount or 0
    return stamped


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


def record(store: Store, push: Push, delivery: Delivery, attempt: Attempt, decision: Decision, owner: str, *, release_when_done: bool = False) -> Recorded:
    """Store one attempt of ``delivery`` and act on ``decision`` — in one transaction.

    The lease is given up in the same transaction (one write less per call) after a failure, and after
    a success when ``release_when_done`` and no other delivery of the push is pending.
    """
    now = utc_now()
    with store.write() as conn:
        current = get_push_by_id(store, push.id, conn)
        row = conn.execute(
            sa.select(deliveries_table.c.status, deliveries_table.c.attempts).where(deliveries_table.c.id == delivery.id)
        ).first()
        if current is None or row is None:
            return Recorded("gone")
        if row.status != "pending":
            # Another worker finished it (our lease had expired): leave its result alone.
            return Recorded(row.status)
        attempts = [*(row.attempts or []), _attempt_json(attempt, decision)]
        if len(attempts) > MAX_ATTEMPTS_KEPT:
            attempts = attempts[:1] + attempts[-(MAX_ATTEMPTS_KEPT - 1) :]
        day = utc_day(now)
        calls = current.calls_on(day) + 1
        push_values: dict[str, Any] = {"calls_day": day, "calls_today": calls}
        policy = current.retry_policy
        if isinstance(decision, Success):
            stamped = _stamp(store, conn, current, delivery.row_keys, now)
            conn.execute(
                deliveries_table.update()
                .where(deliveries_table.c.id == delivery.id)
                .values(status="succeeded", attempts=attempts, finished_at=now, rows_stamped=stamped)
            )
            push_values.update(
                last_success_at=now, consecutive_failures=0, retry_at=None, last_error=None, status=policy.status_for(0, current.enabled)
            )
            released = release_when_done and not _more_pending(conn, push.id)
            if released:
                push_values.update(_released(conn, push.id, owner))
            conn.execute(pushes_table.update().where(pushes_table.c.id == push.id).values(**push_values))
            # The view's event stream hears of it once this commits (from any process, on PostgreSQL).
            publish_in(
                store,
                conn,
                current.view_name,
                {"push": current.name, "rows": delivery.row_count, "rows_stamped": stamped, "webhook_id": delivery.webhook_id, "delivery": delivery.id, "at": now.isoformat()},
            )
            return Recorded("succeeded", stamped, now, released=bool(released and push_values.get("lease_owner", owner) is None))
        failures = current.consecutive_failures + 1
        conn.execute(deliveries_table.update().where(deliveries_table.c.id == delivery.id).values(attempts=attempts))
        push_values.update(_released(conn, push.id, owner))  # the engine stops after a failure
        if isinstance(decision, Disable):
            push_values.update(
                enabled=False, status="disabled", disabled_reason=decision.reason, last_error=decision.reason, consecutive_failures=failures, retry_at=None
            )
            conn.execute(pushes_table.update().where(pushes_table.c.id == push.id).values(**push_values))
            return Recorded("disabled", released="lease_owner" in push_values)
        assert isinstance(decision, RetryAt)
        push_values.update(
            consecutive_failures=failures, retry_at=decision.at, last_error=decision.reason, status=policy.status_for(failures, current.enabled)
        )
        conn.execute(pushes_table.update().where(pushes_table.c.id == push.id).values(**push_values))
        return Recorded("pending", released="lease_owner" in push_values)


def _more_pending(conn: sa.Connection, push_id: int) -> bool:
    query = sa.select(deliveries_table.c.id).where(deliveries_table.c.push_id == push_id, deliveries_table.c.status == "pending").limit(1)
    return conn.execute(query).first() is not None


def _released(conn: sa.Connection, push_id: int, owner: str) -> dict[str, Any]:
    """Values that give up the lease, if ``owner`` still holds it."""
    held = conn.execute(sa.select(pushes_table.c.lease_owner).where(pushes_table.c.id == push_id)).scalar()
    return {"lease_owner": None, "lease_expires_at": None} if held == owner else {}


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

