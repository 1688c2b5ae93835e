"""Pushes: create, read, change, delete — checked in full when saved, shown with secrets redacted.

A push is stored in ``pb_pushes``: the checked definition (JSON), and apart from it the values no
answer may carry (the signing secret, custom header values). ``Push.to_json`` shows a header's name
with ``"***"`` for its value and ``"secret_set"`` instead of the secret; a PATCH may send ``"***"``
back for a header to keep its stored value.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa

from ..columns import utc_now, validate_object_name
from ..datasets import Dataset, get_dataset_by_id
from ..durations import format_duration, parse_duration
from ..errors import Conflict, Invalid, NotFound
from ..netguard import check_url
from ..outbound import custom_header_problem
from ..storage import Store
from ..storage.schema import deliveries as deliveries_table
from ..storage.schema import pushes as pushes_table
from ..storage.schema import views as views_table
from ..views.store import View, get_view, get_view_by_id
from .formats import FORMATS
from .retry import DEFAULT_SCHEDULE, RetryPolicy
from .signing import validate_secret

__all__ = [
    "Push",
    "PUSH_CHANNEL",
    "REDACTED",
    "create_push",
    "get_push",
    "get_push_by_id",
    "list_pushes",
    "update_push",
    "delete_push",
    "default_retry_schedule",
    "next_allowed_at",
]

PUSH_CHANNEL = "pushbase_pushes"
REDACTED = "***"
RETRY_SCHEDULE_ENV = "PUSHBASE_RETRY_SCHEDULE"

DEFAULTS: dict[str, Any] = {
    "format": "form",
    "min_interval": 0.0,
    "max_calls_per_day": None,
    "max_batch_rows": 1000,
    "max_batch_bytes": 1_000_000,
    "timeout": 10.0,
    "retry_schedule": None,
    "failing_after": 3,
    "description": None,
}
_FIELDS = ("view", "url", "log_time_field", "headers", "secret", "enabled", *DEFAULTS)
MAX_INTERVAL = 86400.0
MAX_TIMEOUT = 300.0
MAX_BATCH_ROWS = 100_000
MAX_BATCH_BYTES = 50 * 1024 * 1024
MIN_BATCH_BYTES = 1024


@dataclass(frozen=True)
class Push:
    id: int
    name: str
    view_id: int
    view_name: str
    dataset_id: int
    definition: dict[str, Any]
    secret: str | None
    header_values: dict[str, str]
    enabled: bool
    consecutive_failures: int
    last_run_at: dt.datetime | None
    last_success_at: dt.datetime | None
    retry_at: dt.datetime | None
    calls_day: str | None
    calls_today: int
    lease_owner: str | None
    lease_expires_at: dt.datetime | None
    disabled_reason: str | None
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def url(self) -> str:
        return str(self.definition["url"])

    @property
    def format(self) -> str:
        return str(self.definition["format"])

    @property
    def log_time_field(self) -> str:
        return str(self.definition["log_time_field"])

    @property
    def min_interval(self) -> float:
        return float(self.definition["min_interval"])

    @property
    def max_calls_per_day(self) -> int | None:
        value = self.definition.get("max_calls_per_day")
        return None if value is None else int(value)

    @property
    def max_batch_rows(self) -> int:
        return int(self.definition["max_batch_rows"])

    @property
    def max_batch_bytes(self) -> int:
        return int(self.definition["max_batch_bytes"])

    @property
    def timeout(self) -> float:
        return float(self.definition["timeout"])

    @property
    def retry_policy(self) -> RetryPolicy:
        schedule = self.definition.get("retry_schedule") or default_retry_schedule()
        return RetryPolicy(schedule=tuple(schedule), failing_after=int(self.definition.get("failing_after") or 3))

    @property
    def status(self) -> str:
        return self.retry_policy.status_for(self.consecutive_failures, self.enabled)

    def calls_on(self, day: str) -> int:
        return self.calls_today if self.calls_day == day else 0

    def to_json(self, *, pending: int = 0, now: dt.datetime | None = None) -> dict[str, Any]:
        d = self.definition
        due = next_allowed_at(self, now or utc_now(), pending=pending > 0) if self.enabled else None
        return {
            "name": self.name,
            "view": self.view_name,
            "url": redact_url(self.url),
            "log_time_field": self.log_time_field,
            "format": self.format,
            "min_interval": format_duration(self.min_interval),
            "max_calls_per_day": self.max_calls_per_day,
            "headers": {name: REDACTED for name in self.header_values},
            "secret_set": bool(self.secret),
            "max_batch_rows": self.max_batch_rows,
            "max_batch_bytes": self.max_batch_bytes,
            "timeout": format_duration(self.timeout),
            "retry_schedule": [format_duration(s) for s in d["retry_schedule"]] if d.get("retry_schedule") else None,
            "failing_after": int(d.get("failing_after") or 3),
            "description": d.get("description"),
            "enabled": self.enabled,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "state": {
                "status": self.status,
                "last_run_at": _iso(self.last_run_at),
                "last_success_at": _iso(self.last_success_at),
                "next_due_at": _iso(due),
                "retry_at": _iso(self.retry_at) if pending else None,
                "consecutive_failures": self.consecutive_failures,
                "last_error": self.last_error,
                "disabled_reason": self.disabled_reason,
                "pending_deliveries": pending,
                "calls_today": self.calls_on(utc_day(now or utc_now())),
            },
        }


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def utc_day(now: dt.datetime) -> str:
    return now.astimezone(dt.timezone.utc).strftime("%Y-%m-%d")


def next_allowed_at(push: Push, now: dt.datetime, *, pending: bool) -> dt.datetime | None:
    """The earliest time the rate limit lets this push call again; None means at once.

    With a delivery ``pending`` (a batch not yet delivered), its retry time counts; otherwise new
    data waits ``min_interval`` after the last run. Either way a day whose ``max_calls_per_day`` is
    used up waits for the next UTC day.
    """
    due: dt.datetime | None = None
    if pending:
        due = push.retry_at
    elif push.last_run_at is not None and push.min_interval > 0:
        due = push.last_run_at + dt.timedelta(seconds=push.min_interval)
    cap = push.max_calls_per_day
    if cap is not None and push.calls_on(utc_day(now)) >= cap:
        tomorrow = (now.astimezone(dt.timezone.utc) + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        due = tomorrow if due is None else max(due, tomorrow)
    if due is not None and due <= now:
        return None
    return due


def default_retry_schedule() -> tuple[float, ...]:
    """``PUSHBASE_RETRY_SCHEDULE`` (durations separated by commas, e.g. ``1s,2s,5s``) or Svix's schedule."""
    raw = os.environ.get(RETRY_SCHEDULE_ENV, "").strip()
    if not raw:
        return DEFAULT_SCHEDULE
    return tuple(parse_duration(part, field=RETRY_SCHEDULE_ENV) for part in raw.split(","))


def redact_url(url: str) -> str:
    """The URL with any password in it replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}:{REDACTED}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# ---------------------------------------------------------------------------------------------
# Checking a definition


def _int(body: dict[str, Any], name: str, low: int, high: int, *, nullable: bool = False) -> int | None:
    value = body.get(name)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"{name}: expected a whole number from {low} to {high}" + (" (or null)" if nullable else ""), code="invalid_push", details={"field": name, "value": value})
    return value


def _duration(body: dict[str, Any], name: str, low: float, high: float, *, low_inclusive: bool = True) -> float:
    seconds = parse_duration(body.get(name), field=name)
    if seconds > high or seconds < low or (not low_inclusive and seconds == low):
        raise Invalid(
            f"{name}: must be {'from' if low_inclusive else 'more than'} {format_duration(low)} up to {format_duration(high)}",
            code="invalid_push",
            details={"field": name, "value": body.get(name)},
        )
    return seconds


def _headers(raw: Any, stored: dict[str, str]) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise Invalid("headers: expected an object of header names and text values", code="invalid_push", details={"field": "headers"})
    values: dict[str, str] = {}
    stored_lower = {k.lower(): v for k, v in stored.items()}
    for name, value in raw.items():
        if any(name.lower() == other.lower() for other in values):
            raise Invalid(f"headers: {name} is given twice", code="invalid_push", details={"field": "headers", "header": name})
        if value == REDACTED:
            # The redacted value as GET shows it: keep what is stored.
            if name.lower() not in stored_lower:
                raise Invalid(f"headers: {name} has no stored value to keep; send its value", code="invalid_push", details={"field": "headers", "header": name})
            value = stored_lower[name.lower()]
        problem = custom_header_problem(name, value)
        if problem is not None:
            raise Invalid(f"headers: {problem}", code="invalid_push", details={"field": "headers", "header": name})
        values[name] = value
    return values


def _check_log_time_field(dataset: Dataset, view: View, name: Any) -> str:
    if not isinstance(name, str):
        raise Invalid("log_time_field: name the datetime column of the view's dataset that records when rows were pushed", code="invalid_push", details={"field": "log_time_field"})
    try:
        column = dataset.column(name)
    except Invalid as exc:
        raise Invalid(
            f"log_time_field: {exc.message}; add a datetime column to dataset {dataset.name!r} for it",
            code="invalid_log_time_field",
            details={"field": "log_time_field", "dataset": dataset.name, "view": view.name, **(exc.details or {})},
        ) from None
    if column.type != "datetime":
        raise Invalid(
            f"log_time_field: column {name!r} of dataset {dataset.name!r} is {column.type}; the log-time field must be a datetime column",
            code="invalid_log_time_field",
            details={"field": "log_time_field", "column": name, "type": column.type},
        )
    return name


def _definition(body: dict[str, Any], *, allow_private: bool, stored_headers: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The checked definition (without view and secrets) and the header values."""
    url = body.get("url")
    if not isinstance(url, str) or not url.strip():
        raise Invalid("url: the address to POST the rows to is required", code="invalid_push", details={"field": "url"})
    url = url.strip()
    check_url(url, allow_private=allow_private)
    fmt = body.get("format")
    if fmt not in FORMATS:
        raise Invalid(f"format: expected one of {', '.join(FORMATS)}", code="invalid_push", details={"field": "format", "value": fmt})
    schedule = body.get("retry_schedule")
    if schedule is not None:
        if not isinstance(schedule, list) or not 1 <= len(schedule) <= 20:
            raise Invalid("retry_schedule: expected a list of 1 to 20 durations, e.g. ['5s', '5m', '30m']", code="invalid_push", details={"field": "retry_schedule"})
        schedule = [parse_duration(s, field="retry_schedule") for s in schedule]
        if any(s > 7 * 86400 for s in schedule):
            raise Invalid("retry_schedule: each delay must be at most 7d", code="invalid_push", details={"field": "retry_schedule"})
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise Invalid("description must be text", code="invalid_push", details={"field": "description"})
    definition = {
        "url": url,
        "log_time_field": body.get("log_time_field"),
        "format": fmt,
        "min_interval": _duration(body, "min_interval", 0, MAX_INTERVAL),
        "max_calls_per_day": _int(body, "max_calls_per_day", 1, 10_000_000, nullable=True),
        "max_batch_rows": _int(body, "max_batch_rows", 1, MAX_BATCH_ROWS),
        "max_batch_bytes": _int(body, "max_batch_bytes", MIN_BATCH_BYTES, MAX_BATCH_BYTES),
        "timeout": _duration(body, "timeout", 0, MAX_TIMEOUT, low_inclusive=False),
        "retry_schedule": schedule,
        "failing_after": _int(body, "failing_after", 1, 1000),
        "description": description,
    }
    return definition, _headers(body.get("headers"), stored_headers)


def _secret(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Invalid("secret: expected text such as 'whsec_...'", code="invalid_push", details={"field": "secret"})
    validate_secret(value)
    return value


def _enabled(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid("enabled: expected true or false", code="invalid_push", details={"field": "enabled"})
    return value


# ---------------------------------------------------------------------------------------------
# Storage


def _from_row(row: Any, view: View) -> Push:
    return push_from_parts(row, view.name, view.dataset_id)


def push_from_parts(row: Any, view_name: str, dataset_id: int) -> Push:
    """A ``Push`` from its ``pb_pushes`` row and its view's name and dataset."""
    return Push(
        id=row.id,
        name=row.name,
        view_id=row.view_id,
        view_name=view_name,
        dataset_id=dataset_id,
        definition=dict(row.definition),
        secret=row.secret,
        header_values=dict(row.header_values or {}),
        enabled=bool(row.enabled),
        consecutive_failures=row.consecutive_failures or 0,
        last_run_at=row.last_run_at,
        last_success_at=row.last_success_at,
        retry_at=row.retry_at,
        calls_day=row.calls_day,
        calls_today=row.calls_today or 0,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        disabled_reason=row.disabled_reason,
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def push_from_row(store: Store, conn: sa.Connection, row: Any) -> Push:
    return _from_row(row, get_view_by_id(store, row.view_id, conn))


def get_push(store: Store, name: str, conn: sa.Connection | None = None) -> Push:
    if conn is None:
        with store.read() as own:
            return get_push(store, name, own)
    row = conn.execute(sa.select(pushes_table).where(pushes_table.c.name == name)).first()
    if row is None:
        raise NotFound(f"push {name!r} does not exist", details={"push": name})
    return push_from_row(store, conn, row)


_PUSH_BY_ID = sa.select(pushes_table).where(pushes_table.c.id == sa.bindparam("id"))  # built once: a cached key


def get_push_by_id(store: Store, push_id: int, conn: sa.Connection) -> Push | None:
    row = conn.execute(_PUSH_BY_ID, {"id": push_id}).first()
    return None if row is None else push_from_row(store, conn, row)


def pending_count(conn: sa.Connection, push_id: int) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(deliveries_table).where(deliveries_table.c.push_id == push_id, deliveries_table.c.status == "pending")
        ).scalar()
        or 0
    )


def show_push(store: Store, name: str) -> dict[str, Any]:
    with store.read() as conn:
        push = get_push(store, name, conn)
        return push.to_json(pending=pending_count(conn, push.id))


def list_pushes(store: Store) -> list[dict[str, Any]]:
    with store.read() as conn:
        rows = conn.execute(sa.select(pushes_table).order_by(pushes_table.c.name)).all()
        return [(p := push_from_row(store, conn, r)).to_json(pending=pending_count(conn, p.id)) for r in rows]


def _prepare(store: Store, conn: sa.Connection, body: dict[str, Any], allow_private: bool, stored_headers: dict[str, str]) -> tuple[View, Dataset, dict[str, Any], dict[str, str]]:
    if not isinstance(body.get("view"), str):
        raise Invalid("view: the name of the view to push is required", code="invalid_push", details={"field": "view"})
    try:
        view = get_view(store, body["view"], conn)
    except NotFound:
        raise Invalid(f"view: there is no view {body['view']!r}; create it first (POST /api/views)", code="unknown_view", details={"field": "view", "view": body["view"]}) from None
    dataset = get_dataset_by_id(store, view.dataset_id, conn)
    definition, headers = _definition(body, allow_private=allow_private, stored_headers=stored_headers)
    definition["log_time_field"] = _check_log_time_field(dataset, view, body.get("log_time_field"))
    # Views select unpushed rows by this column, and stamping updates it by row id: index it.
    store.ensure_index(conn, dataset.physical, dataset.column(definition["log_time_field"]).col)
    return view, dataset, definition, headers


def create_push(store: Store, body: dict[str, Any], *, allow_private: bool) -> dict[str, Any]:
    name = validate_object_name(body.get("name"), "push")
    unknown = set(body) - {"name", *_FIELDS}
    if unknown:
        raise Invalid(f"unknown push fields: {', '.join(sorted(unknown))}; expected {', '.join(_FIELDS)}", code="invalid_push")
    full = {**DEFAULTS, **{k: v for k, v in body.items() if v is not None or k in ("max_calls_per_day",)}}
    secret = _secret(body.get("secret"))
    enabled = _enabled(body.get("enabled", True))
    now = utc_now()
    with store.write() as conn:
        if conn.execute(sa.select(pushes_table.c.id).where(pushes_table.c.name == name)).first():
            raise Conflict(f"push {name!r} already exists", code="exists")
        view, _dataset, definition, headers = _prepare(store, conn, full, allow_private, {})
        push_id = conn.execute(
            pushes_table.insert().values(
                name=name,
                view_id=view.id,
                definition=definition,
                secret=secret,
                header_values=headers,
                enabled=enabled,
                status="ok" if enabled else "disabled",
                consecutive_failures=0,
                calls_today=0,
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key[0]
        store.notify(conn, PUSH_CHANNEL, str(push_id))
        return get_push(store, name, conn).to_json()


def update_push(store: Store, name: str, body: dict[str, Any], *, allow_private: bool) -> dict[str, Any]:
    unknown = set(body) - set(_FIELDS)
    if unknown:
        raise Invalid(f"cannot change {', '.join(sorted(unknown))}; PATCH accepts {', '.join(_FIELDS)}", code="invalid_push")
    with store.write() as conn:
        push = get_push(store, name, conn)
        merged = {**push.definition, "view": push.view_name, **body}
        for key, default in DEFAULTS.items():
            if merged.get(key) is None and key != "max_calls_per_day":
                merged[key] = default
        if "headers" not in body:
            merged["headers"] = {k: REDACTED for k in push.header_values}
        view, _dataset, definition, headers = _prepare(store, conn, merged, allow_private, push.header_values)
        values: dict[str, Any] = {"definition": definition, "header_values": headers, "view_id": view.id, "updated_at": utc_now()}
        if "secret" in body:
            values["secret"] = _secret(body["secret"])
        if "enabled" in body:
            values["enabled"] = _enabled(body["enabled"])
            if values["enabled"] and not push.enabled:
                # Enabled again by a person: try at once, with the failure count kept for the status.
                values.update(disabled_reason=None, retry_at=None)
        if (view.id, definition, headers) == (push.view_id, push.definition, push.header_values) and all(
            values[k] == getattr(push, k) for k in ("secret", "enabled") if k in values
        ):
            # Nothing changes (a configuration file applied again): no write, no wake-up, and
            # ``updated_at`` stays, which tells `pushbase apply` that the push was unchanged.
            return push.to_json(pending=pending_count(conn, push.id))
        enabled = values.get("enabled", push.enabled)
        values["status"] = push.retry_policy.status_for(push.consecutive_failures, enabled)
        if view.id != push.view_id or definition["log_time_field"] != push.log_time_field:
            # Pending calls carry rows of the old view or stamp the old field: give them up; their
            # rows were not stamped, so the new definition selects them again if they still match.
            _cancel_pending(conn, push.id, "cancelled: the push's view or log-time field changed")
            values["retry_at"] = None
        conn.execute(pushes_table.update().where(pushes_table.c.id == push.id).values(**values))
        store.notify(conn, PUSH_CHANNEL, str(push.id))
        updated = get_push(store, name, conn)
        return updated.to_json(pending=pending_count(conn, push.id))


def _cancel_pending(conn: sa.Connection, push_id: int, reason: str) -> None:
    for row in conn.execute(
        sa.select(deliveries_table.c.id, deliveries_table.c.attempts).where(deliveries_table.c.push_id == push_id, deliveries_table.c.status == "pending")
    ).all():
        attempts = [*row.attempts, {"at": utc_now().isoformat(), "status_code": None, "error": reason, "duration_ms": 0, "response": ""}]
        conn.execute(
            deliveries_table.update().where(deliveries_table.c.id == row.id).values(status="failed", attempts=attempts, finished_at=utc_now())
        )


def delete_push(store: Store, name: str) -> None:
    with store.write() as conn:
        push = get_push(store, name, conn)
        conn.execute(deliveries_table.delete().where(deliveries_table.c.push_id == push.id))
        conn.execute(pushes_table.delete().where(pushes_table.c.id == push.id))
        store.notify(conn, PUSH_CHANNEL, str(push.id))


def pushes_of_dataset(conn: sa.Connection, dataset_id: int) -> list[int]:
    """Enabled pushes whose view reads ``dataset_id``: the ones new data there may concern."""
    query = (
        sa.select(pushes_table.c.id)
        .select_from(pushes_table.join(views_table, views_table.c.id == pushes_table.c.view_id))
        .where(views_table.c.dataset_id == dataset_id, pushes_table.c.enabled.is_(True))
    )
    return [r.id for r in conn.execute(query)]


def pushes_by_dataset(conn: sa.Connection) -> dict[int, list[int]]:
    """Enabled pushes by the dataset their view reads (a view never changes dataset)."""
    query = (
        sa.select(views_table.c.dataset_id, pushes_table.c.id)
        .select_from(pushes_table.join(views_table, views_table.c.id == pushes_table.c.view_id))
        .where(pushes_table.c.enabled.is_(True))
        .order_by(pushes_table.c.id)
    )
    found: dict[int, list[int]] = {}
    for row in conn.execute(query):
        found.setdefault(row.dataset_id, []).append(row.id)
    return found


def enabled_push_ids(conn: sa.Connection) -> list[int]:
    return [r.id for r in conn.execute(sa.select(pushes_table.c.id).where(pushes_table.c.enabled.is_(True)))]
