"""Ingest jobs: the Qrvey-style Push API's load, delete and delete-all requests.

A request is parsed and checked at once (malformed input is a 400; a payload that breaks a rule is
recorded ``ErrorExit`` with its errors). A load of up to ``INLINE_LOAD_ROWS`` rows, when no earlier job
of its dataset is still waiting, is loaded then and there: the job row and its rows are committed in
one transaction before the 202, which says ``Complete`` (no body is stored, no worker is involved).
Any other job is stored as a job row with its body and committed — only then is it answered 202, so
an accepted job survives a crash. The checked payload is handed to this process's worker in memory,
which claims the job, loads it and records ``Complete`` (dropping the body) in one transaction: a
job is all-or-nothing. A job without a handed-off payload (after a restart, or accepted by another
process) is claimed (``Validating``), its stored body read and checked, then loaded in one
transaction (``Loading``). A job found half-way after a crash is simply
run again: its load transaction never committed.

Rules (docs/push-api.md): a row that does not match the dataset's types, misses a unique-id value,
repeats a unique id given earlier in the same payload, or carries a field the dataset does not have
(unless the dataset ignores unknown fields) fails the whole job with ``ErrorExit``.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from .columns import utc_now
from .dataset_rows import DATA_CHANNEL
from .datasets import Dataset, get_dataset, get_dataset_by_id
from .errors import BadRequest, Invalid, NotFound, Unsupported
from . import loading
from .leases import new_owner, owner_is_dead
from .exact_json import dumps_exact, loads_exact
from .loading import JobFailed
from .storage import Store
from .storage.schema import jobs as jobs_table

__all__ = [
    "parse_payload",
    "accept_job",
    "job_status",
    "run_job",
    "run_next_job",
    "IngestWorker",
    "JOB_CHANNEL",
    "FINAL_STATUSES",
    "load_rows_now",
]

log = logging.getLogger("pushbase.ingest")

JOB_CHANNEL = "pushbase_jobs"
JOB_DONE_CHANNEL = "pushbase_job_done"
FINAL_STATUSES = ("Complete", "ErrorExit", "TerminatedExit")
PENDING = "Initializing"
MAX_ATTEMPTS = 3
# Loads of up to this many rows are written before the 202 (see the module's docstring); 0 sends every
# job to the background worker. 20,000 rows of ten columns are about 5 MB and load in about 0.1 s.
INLINE_LOAD_ROWS = int(os.environ.get("PUSHBASE_INLINE_LOAD_ROWS", "20000"))
UNFINISHED_STATUSES = (PENDING, "Validating", "Loading")
LEASE = dt.timedelta(seconds=float(os.environ.get("PUSHBASE_JOB_LEASE_SECONDS", "120")))
# Failpoint for crash tests: sleep inside the load transaction, after the rows are written and before
# the commit, so a test can kill -9 the process mid-load. Never set in production.
_FAILPOINT_LOAD_PAUSE = float(os.environ.get("PUSHBASE_FAILPOINT_LOAD_PAUSE", "0"))


# ------------------------------------------------------------------------------------------------
# Parsing


def parse_payload(body: bytes, content_type: str | None, *, operation: str = "load") -> list[Any]:
    """A JSON array, one JSON object, or NDJSON (``application/x-ndjson``) -> a list of items."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media in ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"):
        items = []
        for number, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(loads_exact(line))
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"NDJSON line {number} is not valid JSON: {exc}", code="malformed_json", details={"line": number}) from None
        return items
    # curl -d sends application/x-www-form-urlencoded unless told otherwise; read such a body as JSON.
    if media not in ("application/json", "text/json", "text/plain", "application/x-www-form-urlencoded", "") and not media.endswith("+json"):
        raise Unsupported(
            f"content type {media!r} is not read here; send application/json or application/x-ndjson",
            details={"content_type": media},
        )
    if not body.strip():
        raise BadRequest("the body is empty; send a JSON array, a JSON object or NDJSON", code="empty_body")
    try:
        value = loads_exact(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON (UTF-8): {exc}", code="malformed_json") from None
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    raise BadRequest("the body must be a JSON array of objects or one object", code="not_rows")


@dataclass
class Prepared:
    """A payload read and checked at request time, so the worker need not parse or check it again:
    load rows as stored values (``checked``), delete keys (``keys``), or the rule it broke (``failed``)."""

    count: int
    checked: loading.Checked | None = None
    keys: list[tuple[Any, ...]] | None = None
    failed: JobFailed | None = None
    dataset: Dataset | None = None


def prepare_payload(store: Store, dataset: Dataset, operation: str, body: bytes, content_type: str | None) -> Prepared:
    """Read and check a request body. Malformed input raises BadRequest/Unsupported (answered at once,
    nothing queued); a payload that breaks a rule comes back with ``failed`` (the job ends ErrorExit)."""
    if operation == "delete_all":
        return Prepared(0, dataset=dataset)
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if operation == "load" and media in ("application/json", "") and body.strip():
        try:
            checked = loading.check_typed(store, dataset, body)
        except Exception:  # noqa: BLE001 - not JSON after all: the general parser words the 400
            checked = None
        if checked is not None:
            loading.prepare_insert(store, checked)
            return Prepared(checked.count, checked=checked, dataset=dataset)
    items = parse_payload(body, content_type, operation=operation)
    return check_items(store, dataset, operation, items)


def check_items(store: Store, dataset: Dataset, operation: str, items: list[Any]) -> Prepared:
    """Check parsed items against the dataset (the general path: every problem named)."""
    prepared = Prepared(len(items), dataset=dataset)
    try:
        if operation == "load":
            prepared.checked = loading.check_rows(store, dataset, items)
            loading.prepare_insert(store, prepared.checked)
        elif operation == "delete":
            prepared.keys = loading.check_keys(store, dataset, items)
    except JobFailed as failed:
        prepared.failed = failed
    return prepared


# ------------------------------------------------------------------------------------------------
# Accepting


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


def accept_job(
    store: Store,
    dataset: Dataset,
    operation: str,
    payload: Prepared | list[Any],
    body: bytes,
    content_type: str,
    *,
    source: str = "api",
) -> tuple[str, str]:
    """Record the job durably; returns its id and status, after which the caller may answer 202.

    A payload that already broke a rule is recorded ended (``ErrorExit``, its errors listed) in the
    same one transaction: there is nothing to run. A small load is loaded at once (``Complete``).
    Otherwise the body is stored, so the job survives a crash, the checked payload is handed to this
    process's worker, which loads it without reading the body back, and the workers are woken."""
    if not isinstance(payload, Prepared):
        payload = check_items(store, dataset, operation, payload)
    job_id = new_job_id()
    now = utc_now()
    values: dict[str, Any] = dict(
        id=job_id,
        dataset_id=dataset.id,
        dataset_name=dataset.name,
        operation=operation,
        status=PENDING,
        content_type=content_type,
        body=body,
        source=source,
        rows_received=payload.count,
        rows_inserted=0,
        rows_updated=0,
        rows_unchanged=0,
        rows_deleted=0,
        errors=[],
        attempts=0,
        created_at=now,
    )
    if payload.failed is not None:
        # The body is not kept: a job that broke a rule is never run again.
        values.update(status="ErrorExit", body=None, errors=payload.failed.errors, reason=payload.failed.reason, started_at=now, finished_at=now)
    elif operation == "load" and payload.dataset is not None and 0 < payload.count <= INLINE_LOAD_ROWS:
        if _load_at_accept(store, job_id, values, payload):
            return job_id, "Complete"
        # A new id: the failed transaction may still have committed (a connection lost at its commit).
        job_id = values["id"] = new_job_id()
    handoff = _handoff(store)
    if payload.failed is None:
        # Handed over before the commit: the worker, woken by it, finds the payload already there (and
        # cannot see the job before the commit).
        handoff.put(job_id, payload)
    try:
        with store.write() as conn:
            if payload.failed is None:
                store.lock_dataset_acceptance(conn, dataset.id)  # see _load_at_accept
            # One statement object with its values as parameters: SQLAlchemy reuses its compiled form (a
            # fresh ``insert().values(...)`` per call costs about a millisecond more, in the write lock).
            conn.execute(_INSERT_JOB, values)
            store.notify(conn, JOB_DONE_CHANNEL if payload.failed is not None else JOB_CHANNEL, job_id)
    except BaseException:
        handoff.take(job_id)
        raise
    return job_id, str(values["status"])


_INSERT_JOB = jobs_table.insert()
_UNFINISHED_JOB_OF_DATASET = (
    sa.select(jobs_table.c.id)
    .where(jobs_table.c.status.in_(UNFINISHED_STATUSES), jobs_table.c.dataset_id == sa.bindparam("dataset_id"))
    .limit(1)
)


def _load_at_accept(store: Store, job_id: str, values: dict[str, Any], payload: Prepared) -> bool:
    """Record the job and load its rows in one transaction, before the 202. The body is never stored
    (nor written to the WAL, checkpointed and freed again) and no worker is woken: at a megabyte per
    request, the bench's ingest cost the server about a tenth less CPU. False, with nothing written,
    when an earlier job of the dataset has not ended (jobs load in the order they were accepted) or
    when the load failed: the background path then runs the job and records why it fails."""
    assert payload.dataset is not None
    try:
        with store.write() as conn:
            # Held to the commit, also by the background path's acceptance: a job accepted meanwhile
            # (PostgreSQL, another thread or process) is either seen below or accepted after this one.
            store.lock_dataset_acceptance(conn, payload.dataset.id)
            if conn.execute(_UNFINISHED_JOB_OF_DATASET, {"dataset_id": payload.dataset.id}).first() is not None:
                return False
            conn.execute(_INSERT_JOB, {**values, "body": None})
            _load_and_finish(store, conn, job_id, payload.dataset, "load", payload, started_at=values["created_at"], attempts=1)
        return True
    except _DatasetChanged:
        return False  # columns were added since the payload was checked: the worker checks it again
    except Exception:  # noqa: BLE001 - rolled back; the background path runs it again and records why it fails
        log.warning("loading job %s at acceptance failed; running it in the background", job_id, exc_info=True)
        return False


class _Handoff:
    """Checked payloads of just-accepted jobs, so this process's worker loads them without reading and
    parsing the stored body again. Bounded by rows (memory); a job that does not fit, or any job after
    a restart, is read from its stored body instead. An entry whose job another process ran (several
    workers on PostgreSQL) is dropped once it is old and room is needed."""

    STALE_SECONDS = 600.0

    def __init__(self, max_rows: int = 250_000, max_jobs: int = 256) -> None:
        self._items: dict[str, Prepared] = {}
        self._since: dict[str, float] = {}
        self._rows = 0
        self._lock = threading.Lock()
        self._max_rows = max_rows
        self._max_jobs = max_jobs
        # Jobs whose load transaction is open right now (their committed status is still Initializing).
        self.loading: set[str] = set()

    def _fits(self, count: int) -> bool:
        return len(self._items) < self._max_jobs and self._rows + count <= self._max_rows

    def put(self, job_id: str, payload: Prepared) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._fits(payload.count):
                for stale in [j for j, since in self._since.items() if now - since > self.STALE_SECONDS]:
                    self._drop(stale)
            if self._fits(payload.count):
                self._items[job_id] = payload
                self._since[job_id] = now
                self._rows += payload.count

    def _drop(self, job_id: str) -> Prepared | None:
        payload = self._items.pop(job_id, None)
        if payload is not None:
            del self._since[job_id]
            self._rows -= payload.count
        return payload

    def take(self, job_id: str) -> Prepared | None:
        with self._lock:
            return self._drop(job_id)


def _handoff(store: Store) -> _Handoff:
    handoff = getattr(store, "_ingest_handoff", None)
    if handoff is None:
        handoff = _Handoff()
        store._ingest_handoff = handoff  # type: ignore[attr-defined]
    return handoff


# ------------------------------------------------------------------------------------------------
# Status


def _status_doc(row: Any, status: str | None = None) -> dict[str, Any]:
    doc = {
        "jobId": row.id,
        "dataset": row.dataset_name,
        "status": status or row.status,
        "operation": row.operation,
        "rows_received": row.rows_received,
        "rows_inserted": row.rows_inserted,
        "rows_updated": row.rows_updated,
        "rows_unchanged": row.rows_unchanged,
        "rows_deleted": row.rows_deleted,
        "errors": row.errors or [],
        "reason": row.reason,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
    }
    return doc


_STATUS_COLUMNS = [c for c in jobs_table.c if c.name != "body"]
# Clients poll this: one statement, compiled once.
_STATUS_QUERY = sa.select(*_STATUS_COLUMNS).where(jobs_table.c.id == sa.bindparam("job_id"))


def job_status(store: Store, job_id: str, dataset_name: str | None = None) -> dict[str, Any]:
    with store.read() as conn:
        row = conn.execute(_STATUS_QUERY, {"job_id": job_id}).first()
    if row is None or (dataset_name is not None and row.dataset_name != dataset_name):
        raise NotFound(f"job {job_id!r} does not exist" + (f" for dataset {dataset_name!r}" if dataset_name else ""), details={"jobId": job_id})
    # A handed-off job is validated, claimed and loaded in one transaction, so its committed status
    # stays Initializing until it ends; this process knows it is loading.
    loading_now = row.status == PENDING and job_id in _handoff(store).loading
    return _status_doc(row, "Loading" if loading_now else None)


# ------------------------------------------------------------------------------------------------
# Running
#
# The worker takes the oldest waiting job (or one whose lease expired after a crash). A job accepted by
# this process still has its checked payload in the handoff: it is claimed, loaded and recorded
# Complete in one write transaction. Any other job (after a restart, or accepted by another process)
# is claimed in a transaction of its own, its stored body read and checked, then loaded in a second
# one. Either way the load and the final status commit together: a job is never half-loaded.


def _set_status(store: Store, job_id: str, **values: Any) -> None:
    with store.write() as conn:
        conn.execute(jobs_table.update().where(jobs_table.c.id == job_id).values(**values))


# Statements run for every job are built once, with their values as parameters, so SQLAlchemy reuses
# their compiled form instead of building and hashing a new statement inside the write lock.
_UPDATE_JOB = jobs_table.update().where(jobs_table.c.id == sa.bindparam("job_id"))


def _finish(store: Store, conn: sa.Connection, job_id: str, status: str, **values: Any) -> None:
    conn.execute(_UPDATE_JOB, {"job_id": job_id, "status": status, "finished_at": utc_now(), "lease_owner": None, **values})
    store.notify(conn, JOB_DONE_CHANNEL, job_id)


_NEXT_COLUMNS = [jobs_table.c.id, jobs_table.c.attempts, jobs_table.c.status, jobs_table.c.dataset_id, jobs_table.c.operation]


def _next_job_query(store: Store, one: bool) -> sa.Select[Any]:
    queries: dict[bool, sa.Select[Any]] = store.__dict__.setdefault("_ingest_next_job_queries", {})
    if one not in queries:
        query = sa.select(*_NEXT_COLUMNS).where(
            sa.or_(
                jobs_table.c.status == PENDING,
                sa.and_(jobs_table.c.status.in_(["Validating", "Loading"]), jobs_table.c.lease_expires_at < sa.bindparam("now", type_=jobs_table.c.lease_expires_at.type)),
            )
        )
        if one:
            query = query.where(jobs_table.c.id == sa.bindparam("job_id"))
        queries[one] = store.skip_locked(query.order_by(jobs_table.c.seq).limit(1))
    return queries[one]


def _next_job(store: Store, conn: sa.Connection, job_id: str | None) -> Any | None:
    params: dict[str, Any] = {"now": utc_now()}
    if job_id is not None:
        params["job_id"] = job_id
    return conn.execute(_next_job_query(store, job_id is not None), params).first()


def _claim(conn: sa.Connection, row: Any, owner: str) -> Any:
    now = utc_now()
    conn.execute(
        jobs_table.update()
        .where(jobs_table.c.id == row.id)
        .values(status="Validating", lease_owner=owner, lease_expires_at=now + LEASE, attempts=row.attempts + 1, started_at=now)
    )
    return conn.execute(_STATUS_QUERY, {"job_id": row.id}).first()


def claim_job(store: Store, owner: str, job_id: str | None = None) -> Any | None:
    """Lease the oldest waiting job (or one whose lease expired after a crash)."""
    while True:
        with store.write() as conn:
            row = _next_job(store, conn, job_id)
            if row is None:
                return None
            if row.attempts < MAX_ATTEMPTS:
                return _claim(conn, row, owner)
            _finish(store, conn, row.id, "TerminatedExit", reason=f"the job was interrupted {row.attempts} times; giving up")
        if job_id is not None:
            return None


class _DatasetChanged(Exception):
    """The dataset's columns changed after the payload was checked: check the stored body again."""


def _write(store: Store, conn: sa.Connection, dataset: Dataset, operation: str, payload: Prepared) -> loading.LoadCounts:
    counts = loading.LoadCounts()
    if operation == "load":
        assert payload.checked is not None
        counts = loading.write_rows(store, conn, dataset, payload.checked)
    elif operation == "delete":
        counts.deleted = loading.delete_keys(store, conn, dataset, payload.keys or [])
    else:
        table = store.dataset_table(dataset.physical)
        counts.deleted = conn.execute(table.delete()).rowcount or 0
    return counts


def _load_and_finish(store: Store, conn: sa.Connection, job_id: str, dataset: Dataset, operation: str, payload: Prepared, **extra: Any) -> None:
    """Inside the caller's write transaction: write the payload and record the job Complete."""
    store.lock_dataset(conn, dataset.id)
    # The dataset may have changed (columns added) since the payload was checked.
    current = get_dataset_by_id(store, dataset.id, conn)
    if current.columns != dataset.columns or current.unique_id != dataset.unique_id:
        raise _DatasetChanged()
    counts = _write(store, conn, current, operation, payload)
    if _FAILPOINT_LOAD_PAUSE:
        time.sleep(_FAILPOINT_LOAD_PAUSE)
    _finish(
        store,
        conn,
        job_id,
        "Complete",
        body=None,
        rows_inserted=counts.inserted,
        rows_updated=counts.updated,
        rows_unchanged=counts.unchanged,
        rows_deleted=counts.deleted,
        **extra,
    )
    if counts.inserted or counts.updated or counts.deleted:
        store.notify(conn, DATA_CHANNEL, str(dataset.id))


def _run_handed_off(store: Store, owner: str, job_id: str | None) -> tuple[str | None, Any | None]:
    """Take the next job; if it is a handed-off one, load it in this one transaction. Returns
    (id of the job finished here, None), (None, claimed job for the general path) or (None, None)."""
    handoff = _handoff(store)
    taken: str | None = None
    try:
        with store.write() as conn:
            row = _next_job(store, conn, job_id)
            if row is None:
                return None, None
            if row.attempts >= MAX_ATTEMPTS:
                _finish(store, conn, row.id, "TerminatedExit", reason=f"the job was interrupted {row.attempts} times; giving up")
                return row.id, None
            payload = handoff.take(row.id) if row.status == PENDING else None
            if payload is not None and payload.dataset is not None:
                taken = row.id
                handoff.loading.add(row.id)
                try:
                    _load_and_finish(store, conn, row.id, payload.dataset, row.operation, payload, started_at=utc_now(), attempts=row.attempts + 1)
                    return row.id, None
                except _DatasetChanged:
                    pass  # raised before anything was written: claim it and check the stored body again
            return None, _claim(conn, row, owner)
    finally:
        if taken is not None:
            handoff.loading.discard(taken)


def run_job(store: Store, job: Any) -> dict[str, Any]:
    """Validate and load one claimed job from its stored body; records and returns its final status."""
    job_id = job.id
    _handoff(store).take(job_id)  # a payload handed off for it (if any) is not used on this path
    try:
        with store.read() as conn:
            dataset = get_dataset_by_id(store, job.dataset_id, conn)
    except NotFound:
        with store.write() as conn:
            _finish(store, conn, job_id, "TerminatedExit", reason="the dataset was deleted before the job ran")
        return job_status(store, job_id)
    try:
        # Not accepted by this process (or after a restart): read and check the stored body.
        with store.read() as conn:
            body = conn.execute(sa.select(jobs_table.c.body).where(jobs_table.c.id == job_id)).scalar() or b""
        payload = prepare_payload(store, dataset, job.operation, body, job.content_type)
        if payload.failed is not None:
            raise payload.failed
        _set_status(store, job_id, status="Loading")
        with store.write() as conn:
            try:
                _load_and_finish(store, conn, job_id, dataset, job.operation, payload)
            except _DatasetChanged:
                raise JobFailed([], "the dataset's columns changed while the job waited; send it again") from None
    except JobFailed as failed:
        with store.write() as conn:
            _finish(store, conn, job_id, "ErrorExit", errors=failed.errors, reason=failed.reason)
    except (BadRequest, Invalid) as exc:
        with store.write() as conn:
            _finish(store, conn, job_id, "ErrorExit", errors=[], reason=exc.message)
    except Exception as exc:  # noqa: BLE001 - a job must end with a reason, never hang in Loading
        log.exception("job %s failed unexpectedly", job_id)
        with store.write() as conn:
            _finish(store, conn, job_id, "TerminatedExit", reason=f"internal error: {type(exc).__name__}")
    return job_status(store, job_id)


def _run_next(store: Store, owner: str, job_id: str | None = None) -> str | None:
    """Run the next waiting job (or ``job_id``); returns its id, or None when there was none."""
    try:
        done, claimed = _run_handed_off(store, owner, job_id)
    except Exception:  # noqa: BLE001 - rolled back; the general path runs the job again and records why it fails
        log.warning("loading a handed-off job failed; running it again from its stored body", exc_info=True)
        claimed = claim_job(store, owner, job_id)
        done = None
    if done is not None:
        return done
    if claimed is None:
        return None
    run_job(store, claimed)
    return str(claimed.id)


BODY_RETENTION = dt.timedelta(minutes=10)


def purge_bodies(store: Store) -> int:
    """Drop the stored bodies of jobs that ended a while ago without dropping their own (a job that
    completes drops its body in its final commit, which with ``secure_delete=FAST`` costs a few pages:
    the freed pages are reused by the next bodies and rows, so the file does not grow with them)."""
    with store.write() as conn:
        return conn.execute(
            jobs_table.update()
            .where(jobs_table.c.finished_at < utc_now() - BODY_RETENTION, jobs_table.c.body.is_not(None))
            .values(body=None)
        ).rowcount or 0


def recover_orphaned_jobs(store: Store) -> int:
    """Expire at once the leases of in-flight jobs whose process on this host is gone (kill -9)."""
    with store.write() as conn:
        rows = conn.execute(
            sa.select(jobs_table.c.id, jobs_table.c.lease_owner).where(jobs_table.c.status.in_(["Validating", "Loading"]))
        ).all()
        orphans = [r.id for r in rows if owner_is_dead(r.lease_owner)]
        if orphans:
            conn.execute(jobs_table.update().where(jobs_table.c.id.in_(orphans)).values(lease_expires_at=utc_now() - LEASE))
    return len(orphans)


def run_next_job(store: Store, owner: str, job_id: str | None = None) -> dict[str, Any] | None:
    """Run the next waiting job (or ``job_id``) and return its final status document."""
    done = _run_next(store, owner, job_id)
    return None if done is None else job_status(store, done)


def load_rows_now(store: Store, dataset_name: str, rows: list[Any], *, source: str) -> dict[str, Any]:
    """Load rows through a job and run it at once (tasks' ``load``): same checks, same status document."""
    dataset = get_dataset(store, dataset_name)
    body = dumps_exact(rows)  # integers beyond 64 bits reach the checks, which name them
    job_id, status = accept_job(store, dataset, "load", rows, body, "application/json", source=source)
    if status not in UNFINISHED_STATUSES:
        return job_status(store, job_id)
    result = run_next_job(store, f"inline-{os.getpid()}", job_id)
    if result is not None:
        return result
    # A background worker claimed the job first (or it failed at once): wait for it to end.
    deadline = time.monotonic() + 600
    while True:
        doc = job_status(store, job_id)
        if doc["status"] in FINAL_STATUSES or time.monotonic() > deadline:
            return doc
        time.sleep(0.05)


class IngestWorker:
    """Background threads that run waiting jobs; woken by accepted jobs, and polling as a fallback."""

    def __init__(self, store: Store, *, threads: int | None = None, poll_seconds: float = 1.0) -> None:
        self.store = store
        self.owner = new_owner("ingest")
        self.threads = threads or (1 if store.dialect == "sqlite" else 2)
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _on_notify(self, channel: str, _payload: str) -> None:
        if channel == JOB_CHANNEL:
            self._wake.set()

    def start(self) -> None:
        recover_orphaned_jobs(self.store)
        self.store.add_listener(self._on_notify)
        for i in range(self.threads):
            thread = threading.Thread(target=self._loop, name=f"pushbase-ingest-{i}", daemon=True)
            thread.start()
            self._workers.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.store.remove_listener(self._on_notify)
        for thread in self._workers:
            thread.join(timeout=10)

    def _loop(self) -> None:
        next_purge = time.monotonic() + 60
        while not self._stop.is_set():
            try:
                if time.monotonic() > next_purge:
                    next_purge = time.monotonic() + 60
                    purge_bodies(self.store)
                done = _run_next(self.store, self.owner)
            except Exception:  # noqa: BLE001 - keep the worker alive; the job's lease brings it back
                log.exception("ingest worker error")
                done = None
                self._stop.wait(1.0)
            if done is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
