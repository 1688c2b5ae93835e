"""The metadata schema (keys, datasets, jobs, views, pushes, deliveries, actions, tasks) and its versions.

Every change to these tables is a new entry in ``MIGRATIONS``; ``upgrade`` applies the missing ones in
order inside one transaction each and records ``schema_version`` in the ``meta`` table, so a database
made by an older Pushbase upgrades in place when a newer one starts.
"""
from __future__ import annotations

import datetime as dt
from typing import Callable

import sqlalchemy as sa

__all__ = ["metadata", "tables", "SCHEMA_VERSION", "MIGRATIONS", "upgrade", "current_version"]

metadata = sa.MetaData()


class UtcDateTime(sa.types.TypeDecorator):
    """Aware UTC datetimes in and out on both engines (SQLite's DateTime alone hands back naive ones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def _ts(name: str, nullable: bool = True) -> sa.Column:
    # Metadata times only; user-facing row times use pushbase.storage.codecs instead.
    return sa.Column(name, UtcDateTime(), nullable=nullable)


meta = sa.Table("pb_meta", metadata, sa.Column("key", sa.String(100), primary_key=True), sa.Column("value", sa.Text, nullable=False))

keys = sa.Table(
    "pb_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(20), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("scopes", sa.JSON, nullable=False),
    _ts("created_at", False),
    _ts("revoked_at"),
)

datasets = sa.Table(
    "pb_datasets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(63), nullable=False, unique=True),
    # [{"name", "type", "col"}]: col is the physical column name (c1, c2 ...), so user names never reach SQL.
    sa.Column("columns", sa.JSON, nullable=False),
    sa.Column("unique_id", sa.JSON, nullable=False),
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("next_col", sa.Integer, nullable=False),
    _ts("created_at", False),
    _ts("updated_at", False),
)

jobs = sa.Table(
    "pb_jobs",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("id", sa.String(40), nullable=False, unique=True),
    sa.Column("dataset_id", sa.Integer, nullable=False, index=True),
    sa.Column("dataset_name", sa.String(63), nullable=False),
    sa.Column("operation", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("content_type", sa.String(40), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=True),
    sa.Column("source", sa.String(40), nullable=False),
    sa.Column("rows_received", sa.Integer, nullable=False, default=0),
    sa.Column("rows_inserted", sa.Integer, nullable=False, default=0),
    sa.Column("rows_updated", sa.Integer, nullable=False, default=0),
    sa.Column("rows_unchanged", sa.Integer, nullable=False, default=0),
    sa.Column("rows_deleted", sa.Integer, nullable=False, default=0),
    sa.Column("errors", sa.JSON, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("lease_owner", sa.String(80), nullable=True),
    _ts("lease_expires_at"),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    _ts("created_at", False),
    _ts("started_at"),
    _ts("finished_at"),
    # "Is a job of this dataset still waiting?", asked by every small load under the write lock: the
    # index on dataset_id alone walked every job the dataset ever had (45 ms with 300,000).
    sa.Index("pb_jobs_dataset_status", "dataset_id", "status"),
)

views = sa.Table(
    "pb_views",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(63), nullable=False, unique=True),
    sa.Column("dataset_id", sa.Integer, nullable=False, index=True),
    sa.Column("definition", sa.JSON, nullable=False),
    _ts("created_at", False),
    _ts("updated_at", False),
)

pushes = sa.Table(
    "pb_pushes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(63), nullable=False, unique=True),
    sa.Column("view_id", sa.Integer, nullable=False, index=True),
    sa.Column("definition", sa.JSON, nullable=False),
    # secret and header values live apart from the definition so that no API answer can carry them.
    sa.Column("secret", sa.Text, nullable=True),
    sa.Column("header_values", sa.JSON, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, default=0),
    _ts("last_run_at"),
    _ts("last_success_at"),
    _ts("next_due_at"),
    _ts("retry_at"),
    sa.Column("calls_day", sa.String(10), nullable=True),
    sa.Column("calls_today", sa.Integer, nullable=False, default=0),
    sa.Column("lease_owner", sa.String(80), nullable=True),
    _ts("lease_expires_at"),
    sa.Column("disabled_reason", sa.Text, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    _ts("created_at", False),
    _ts("updated_at", False),
)

deliveries = sa.Table(
    "pb_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("push_id", sa.Integer, nullable=False, index=True),
    sa.Column("webhook_id", sa.String(60), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("row_count", sa.Integer, nullable=False),
    # [[row_id, modified_marker], ...]: what the call carried, to stamp exactly those rows on a 2xx.
    sa.Column("row_keys", sa.JSON, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("content_type", sa.String(60), nullable=False),
    sa.Column("attempts", sa.JSON, nullable=False),
    # How many of the carried rows got the log-time field (rows changed in flight do not).
    sa.Column("rows_stamped", sa.Integer, nullable=True),
    sa.Column("trigger", sa.String(20), nullable=False, default="auto"),
    _ts("created_at", False),
    _ts("finished_at"),
    sa.Index("pb_deliveries_push_status", "push_id", "status", "id"),
)

actions = sa.Table(
    "pb_actions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("view_id", sa.Integer, nullable=False, index=True),
    sa.Column("name", sa.String(63), nullable=False),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.Column("header_values", sa.JSON, nullable=False),
    _ts("created_at", False),
    sa.UniqueConstraint("view_id", "name"),
)

tasks = sa.Table(
    "pb_tasks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(63), nullable=False, unique=True),
    sa.Column("definition", sa.JSON, nullable=False),
    _ts("next_run_at"),
    sa.Column("lease_owner", sa.String(80), nullable=True),
    _ts("lease_expires_at"),
    _ts("created_at", False),
    _ts("updated_at", False),
)

task_runs = sa.Table(
    "pb_task_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("task_id", sa.Integer, nullable=False, index=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("trigger", sa.String(20), nullable=False),
    sa.Column("result", sa.JSON, nullable=False),
    _ts("started_at", False),
    _ts("finished_at"),
    # A scheduled run records its due time so that several workers run it once.
    sa.Column("due_key", sa.String(80), nullable=True, unique=True),
    _ts("due_at"),
    # Who runs it, renewed while it runs: a "running" run whose owner died or whose lease
    # expired is recorded as failed (interrupted).
    sa.Column("owner", sa.String(80), nullable=True),
    _ts("lease_expires_at"),
)

tables = {t.name: t for t in metadata.sorted_tables}

# Version 1 was the foundation (meta, keys, datasets, jobs); version 2 adds views, pushes and tasks.
_V1 = ("pb_meta", "pb_keys", "pb_datasets", "pb_jobs")
_V2 = ("pb_views", "pb_pushes", "pb_deliveries", "pb_actions", "pb_tasks", "pb_task_runs")


def _create(names: tuple[str, ...]) -> Callable[[sa.Connection], None]:
    def step(conn: sa.Connection) -> None:
        metadata.create_all(conn, tables=[tables[n] for n in names])

    return step


def _index_jobs_by_dataset_and_status(conn: sa.Connection) -> None:
    # A database made at version 1 or 2 lacks it; one made since has it from create_all.
    next(i for i in jobs.indexes if i.name == "pb_jobs_dataset_status").create(conn, checkfirst=True)


# Version 3 indexes jobs by (dataset, status).
MIGRATIONS: list[Callable[[sa.Connection], None]] = [_create(_V1), _create(_V2), _index_jobs_by_dataset_and_status]
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(conn: sa.Connection) -> int:
    if not sa.inspect(conn).has_table("pb_meta"):
        return 0
    value = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    return int(value) if value is not None else 0


def upgrade(conn: sa.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply missing migrations up to ``target``; returns the version before upgrading."""
    before = current_version(conn)
    for version in range(before + 1, target + 1):
        MIGRATIONS[version - 1](conn)
        if conn.execute(sa.select(meta.c.key).where(meta.c.key == "schema_version")).first():
            conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version)))
        else:
            conn.execute(meta.insert().values(key="schema_version", value=str(version)))
    return before
