"""Stored tasks and their runs: create, read, change, delete; start, renew and finish runs.

A task's definition is stored as the JSON of its validated ``TaskSpec``. Secrets are never stored:
a definition names them (``{{ secrets.API_PW }}``) and a run reads them from the settings. Literal
credential-like values a definition carries anyway (an ``Authorization`` header, a ``password``
field) are shown as ``***`` in every answer; sending ``***`` back in a PATCH keeps the stored value.

Runs are rows of ``pb_task_runs``: ``running`` while they run (their owner renews a short lease),
then ``succeeded`` or ``failed`` with the redacted record of the run as ``result``. A run whose
owner died or whose lease expired is recorded as failed (``interrupted``) by the scheduler.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from croniter import croniter
from pydantic import ValidationError

from ..columns import refuse_long_integers, utc_now
from ..errors import Conflict, Invalid, NotFound
from ..exact_json import same_json
from ..leases import owner_is_dead
from ..netguard import check_url
from ..rows import decode_cursor, encode_cursor
from ..storage import Store
from ..storage.schema import task_runs as runs_table
from ..storage.schema import tasks as tasks_table
from .models import TaskSpec
from .runner import REDACTED, is_sensitive_name
from .templates import is_template

__all__ = [
    "Task",
    "TASK_CHANNEL",
    "RUN_LEASE",
    "create_task",
    "get_task",
    "list_tasks",
    "update_task",
    "delete_task",
    "show_task",
    "parse_spec",
    "next_due",
    "start_run",
    "renew_run",
    "release_task_lease",
    "release_dead_leases",
    "finish_run",
    "list_runs",
    "get_run",
    "fail_stale_runs",
]

TASK_CHANNEL = "pushbase_tasks"
#: How long a run's lease lasts; its owner renews it every third of that while the run goes on.
RUN_LEASE = dt.timedelta(seconds=60)
_FIELDS = ("description", "steps", "load", "schedule", "params", "enabled")
_INTERRUPTED = "interrupted: the process running it stopped before it finished"


@dataclass(frozen=True)
class Task:
    id: int
    name: str
    definition: dict[str, Any]
    next_run_at: dt.datetime | None
    lease_owner: str | None
    lease_expires_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def spec(self) -> TaskSpec:
        return parse_spec({**self.definition, "name": self.name})


def _from_row(row: Any) -> Task:
    return Task(row.id, row.name, dict(row.definition), row.next_run_at, row.lease_owner, row.lease_expires_at, row.created_at, row.updated_at)


# --- validation ----------------------------------------------------------------------------------


def _message(error: Any) -> str:
    text = str(error.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text


def parse_spec(body: dict[str, Any]) -> TaskSpec:
    """The ``TaskSpec`` of ``body``; pydantic's errors become one 422 with every error in details."""
    refuse_long_integers(body, code="invalid_task")
    try:
        spec = TaskSpec.model_validate(body)
    except ValidationError as exc:
        details = [
            {"loc": [str(part) for part in error.get("loc", ())], "message": _message(error)}
            for error in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        first = details[0] if details else {"loc": [], "message": "invalid task"}
        where = ".".join(first["loc"])
        message = f"{where}: {first['message']}" if where else first["message"]
        raise Invalid(message, code="invalid_task", details=details) from None
    problems = spec.name_problems()
    if problems:
        raise Invalid(problems[0]["message"], code="invalid_task", details=problems)
    return spec


def _literal_host_part(url: str) -> str | None:
    """The part of a URL up to its path when scheme and host hold no template, else None."""
    if not is_template(url):
        return url
    cut = min(i for i in (url.find("{{"), url.find("{%"), url.find("{#")) if i >= 0)
    prefix = url[:cut]
    scheme, sep, rest = prefix.partition("://")
    if not sep or "/" not in rest:
        return None  # the host itself is templated: checked when the run connects
    return prefix


def check_targets(spec: TaskSpec, *, allow_private: bool) -> None:
    """Literal URLs (and URLs whose scheme and host are literal) obey the private-address rule."""
    for step in spec.steps:
        url = _literal_host_part(step.url)
        if url is not None:
            check_url(url, allow_private=allow_private)
        if step.paginate is not None and step.paginate.next_url is not None:
            following = _literal_host_part(step.paginate.next_url)
            if following is not None:
                check_url(following, allow_private=allow_private)


def _dump(spec: TaskSpec) -> dict[str, Any]:
    """The stored definition: every top-level field; in steps, unset optional parts are left out."""
    definition = spec.model_dump(mode="json", by_alias=True)
    definition.pop("name", None)
    steps = []
    for step in definition["steps"]:
        if step.get("paginate"):
            step["paginate"] = {k: v for k, v in step["paginate"].items() if v is not None}
        steps.append({k: v for k, v in step.items() if v is not None})
    definition["steps"] = steps
    return definition


def next_due(schedule: str, after: dt.datetime) -> dt.datetime:
    """The first due time of ``schedule`` (UTC) strictly after ``after``."""
    value = croniter(schedule, after.astimezone(dt.timezone.utc)).get_next(dt.datetime)
    return value.astimezone(dt.timezone.utc)


def _first_run(spec: TaskSpec, now: dt.datetime) -> dt.datetime | None:
    return next_due(spec.schedule, now) if spec.schedule and spec.enabled else None


# --- redaction of literal credentials in definitions ---------------------------------------------


def redact_fields(value: Any) -> Any:
    """Literal (non-template) text under credential-like keys, as ``***``."""
    if isinstance(value, dict):
        return {
            key: REDACTED if isinstance(key, str) and is_sensitive_name(key) and isinstance(sub, str) and not is_template(sub) else redact_fields(sub)
            for key, sub in value.items()
        }
    if isinstance(value, list):
        return [redact_fields(sub) for sub in value]
    return value


def _redact_url(url: str) -> str:
    if is_template(url):
        return url
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(is_sensitive_name(k) for k, _ in pairs):
        return url
    query = urlencode([(k, REDACTED if is_sensitive_name(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def redact_definition(definition: dict[str, Any]) -> dict[str, Any]:
    """A definition as answers show it: literal credential-like values as ``***``."""
    out = dict(definition)
    out["params"] = redact_fields(definition.get("params") or {})
    steps = []
    for step in definition.get("steps") or []:
        shown = dict(step)
        for key in ("headers", "params", "json", "form"):
            if shown.get(key) is not None:
                shown[key] = redact_fields(shown[key])
        shown["url"] = _redact_url(shown.get("url", ""))
        steps.append(shown)
    out["steps"] = steps
    if isinstance(definition.get("load"), dict):
        out["load"] = {**definition["load"], "rows": redact_fields(definition["load"].get("rows"))}
    return out


def _restore(new: Any, old: Any) -> Any:
    """Put stored values back where a client sent ``***`` (a definition it read from us)."""
    if new == REDACTED and isinstance(old, str):
        return old
    if isinstance(new, dict) and isinstance(old, dict):
        return {key: _restore(sub, old.get(key)) for key, sub in new.items()}
    if isinstance(new, list) and isinstance(old, list):
        return [_restore(sub, old[i]) if i < len(old) else sub for i, sub in enumerate(new)]
    return new


def _restore_definition(body: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    out = dict(body)
    if "params" in out:
        out["params"] = _restore(out["params"], stored.get("params"))
    if "load" in out and isinstance(out["load"], dict) and isinstance(stored.get("load"), dict):
        out["load"] = _restore(out["load"], stored["load"])
    if isinstance(out.get("steps"), list):
        old_steps = {s.get("name"): s for s in stored.get("steps") or [] if isinstance(s, dict)}
        steps = []
        for step in out["steps"]:
            old = old_steps.get(step.get("name")) if isinstance(step, dict) else None
            if old is None:
                steps.append(step)
                continue
            restored = _restore(step, old)
            if isinstance(step.get("url"), str) and step["url"] == _redact_url(old.get("url", "")):
                restored["url"] = old["url"]
            steps.append(restored)
        out["steps"] = steps
    return out


# --- tasks ---------------------------------------------------------------------------------------


def _notify(store: Store, conn: sa.Connection, name: str) -> None:
    store.notify(conn, TASK_CHANNEL, name)


def create_task(store: Store, body: dict[str, Any], *, allow_private: bool) -> dict[str, Any]:
    spec = parse_spec(body)
    check_targets(spec, allow_private=allow_private)
    now = utc_now()
    with store.write() as conn:
        if conn.execute(sa.select(tasks_table.c.id).where(tasks_table.c.name == spec.name)).first():
            raise Conflict(f"task {spec.name!r} already exists", code="exists", details={"task": spec.name})
        conn.execute(
            tasks_table.insert().values(
                name=spec.name, definition=_dump(spec), next_run_at=_first_run(spec, now), created_at=now, updated_at=now
            )
        )
        _notify(store, conn, spec.name)
        return _show(conn, get_task(store, spec.name, conn))


def get_task(store: Store, name: str, conn: sa.Connection | None = None) -> Task:
    if conn is None:
        with store.read() as own:
            return get_task(store, name, own)
    row = conn.execute(sa.select(tasks_table).where(tasks_table.c.name == name)).first()
    if row is None:
        raise NotFound(f"task {name!r} does not exist", details={"task": name})
    return _from_row(row)


def get_task_by_id(conn: sa.Connection, task_id: int) -> Task | None:
    row = conn.execute(sa.select(tasks_table).where(tasks_table.c.id == task_id)).first()
    return _from_row(row) if row is not None else None


def _last_run(conn: sa.Connection, task_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(runs_table.c.id, runs_table.c.status, runs_table.c.trigger, runs_table.c.started_at, runs_table.c.finished_at)
        .where(runs_table.c.task_id == task_id)
        .order_by(runs_table.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return {
        "run_id": row.id,
        "status": row.status,
        "trigger": row.trigger,
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
    }


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _show(conn: sa.Connection, task: Task) -> dict[str, Any]:
    now = utc_now()
    running = task.lease_owner is not None and task.lease_expires_at is not None and task.lease_expires_at > now
    return {
        "name": task.name,
        **redact_definition(task.definition),
        "state": {"next_run_at": _iso(task.next_run_at), "schedule_running": running, "last_run": _last_run(conn, task.id)},
        "created_at": _iso(task.created_at),
        "updated_at": _iso(task.updated_at),
    }


def show_task(store: Store, name: str) -> dict[str, Any]:
    with store.read() as conn:
        return _show(conn, get_task(store, name, conn))


def list_tasks(store: Store) -> list[dict[str, Any]]:
    with store.read() as conn:
        rows = conn.execute(sa.select(tasks_table).order_by(tasks_table.c.name)).all()
        return [_show(conn, _from_row(row)) for row in rows]


def update_task(store: Store, name: str, body: dict[str, Any], *, allow_private: bool) -> dict[str, Any]:
    """Change some fields of a task (the others stay). The name cannot change."""
    if "name" in body and body["name"] != name:
        raise Invalid("a task cannot be renamed; create a new task and delete this one", code="invalid_task")
    unknown = set(body) - set(_FIELDS) - {"name"}
    if unknown:
        raise Invalid(
            f"unknown task fields: {', '.join(sorted(unknown))} (PATCH accepts {', '.join(_FIELDS)})",
            code="invalid_task",
            details=[{"loc": [field], "message": "unknown field"} for field in sorted(unknown)],
        )
    with store.write() as conn:
        task = get_task(store, name, conn)
        merged = {**task.definition, **_restore_definition(body, task.definition), "name": name}
        spec = parse_spec(merged)
        check_targets(spec, allow_private=allow_private)
        definition = _dump(spec)
        now = utc_now()
        values: dict[str, Any] = {"definition": definition, "updated_at": now}
        before = task.spec
        if (before.schedule, before.enabled) != (spec.schedule, spec.enabled) or task.next_run_at is None:
            values["next_run_at"] = _first_run(spec, now)
        # same_json: a step body's true replacing 1 is a change, which == would not see
        if same_json(definition, task.definition) and values.get("next_run_at", task.next_run_at) == task.next_run_at:
            return _show(conn, task)  # nothing changes: no write, and updated_at stays (see update_push)
        conn.execute(tasks_table.update().where(tasks_table.c.id == task.id).values(**values))
        _notify(store, conn, name)
        return _show(conn, get_task(store, name, conn))


def delete_task(store: Store, name: str) -> None:
    """Delete a task and its runs (a run in flight finishes without a record)."""
    with store.write() as conn:
        task = get_task(store, name, conn)
        conn.execute(runs_table.delete().where(runs_table.c.task_id == task.id))
        conn.execute(tasks_table.delete().where(tasks_table.c.id == task.id))
        _notify(store, conn, name)


# --- runs ----------------------------------------------------------------------------------------


def start_run(
    store: Store,
    task_id: int,
    *,
    trigger: str,
    owner: str,
    params: dict[str, Any] | None = None,
    conn: sa.Connection | None = None,
    due_key: str | None = None,
    due_at: dt.datetime | None = None,
) -> int:
    """Record a run as ``running``; returns its id. Inside ``conn`` when given (the scheduler's claim)."""
    if conn is None:
        with store.write() as own:
            return start_run(store, task_id, trigger=trigger, owner=owner, params=params, conn=own, due_key=due_key, due_at=due_at)
    now = utc_now()
    return int(
        conn.execute(
            runs_table.insert().values(
                task_id=task_id,
                status="running",
                trigger=trigger,
                result={"params": params or {}},
                started_at=now,
                due_key=due_key,
                due_at=due_at,
                owner=owner,
                lease_expires_at=now + RUN_LEASE,
            )
        ).inserted_primary_key[0]
    )


def renew_run(store: Store, run_id: int, owner: str, *, task_id: int | None = None) -> None:
    """Extend the run's lease (and the task's schedule lease, for a scheduled run)."""
    expires = utc_now() + RUN_LEASE
    with store.write() as conn:
        conn.execute(
            runs_table.update()
            .where(runs_table.c.id == run_id, runs_table.c.owner == owner, runs_table.c.status == "running")
            .values(lease_expires_at=expires)
        )
        if task_id is not None:
            conn.execute(
                tasks_table.update().where(tasks_table.c.id == task_id, tasks_table.c.lease_owner == owner).values(lease_expires_at=expires)
            )


def release_task_lease(store: Store, task_id: int, owner: str) -> None:
    """The scheduled run is over: the task may be claimed again (a due time missed meanwhile runs now)."""
    with store.write() as conn:
        done = conn.execute(
            tasks_table.update()
            .where(tasks_table.c.id == task_id, tasks_table.c.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
        ).rowcount
        if done:
            store.notify(conn, TASK_CHANNEL, "")


def release_dead_leases(store: Store) -> int:
    """Free the schedule leases of processes on this host that no longer exist."""
    with store.read() as conn:
        held = conn.execute(sa.select(tasks_table.c.id, tasks_table.c.lease_owner).where(tasks_table.c.lease_owner.is_not(None))).all()
    dead = [(row.id, row.lease_owner) for row in held if owner_is_dead(row.lease_owner)]
    if not dead:
        return 0
    with store.write() as conn:
        for task_id, owner in dead:
            conn.execute(
                tasks_table.update()
                .where(tasks_table.c.id == task_id, tasks_table.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )
    return len(dead)


def finish_run(store: Store, run_id: int, status: str, result: dict[str, Any]) -> None:
    with store.write() as conn:
        conn.execute(
            runs_table.update()
            .where(runs_table.c.id == run_id)
            .values(status=status, result=result, finished_at=utc_now(), lease_expires_at=None)
        )


def _run_json(row: Any, task_name: str) -> dict[str, Any]:
    result = dict(row.result or {})
    return {
        "run_id": row.id,
        "task": task_name,
        "status": row.status,
        "trigger": row.trigger,
        "due_at": _iso(row.due_at),
        "error": result.get("error"),
        "steps": result.get("steps", []),
        "load": result.get("load"),
        "params": result.get("params", {}),
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
        "duration_ms": result.get("duration_ms"),
    }


def get_run(store: Store, name: str, run_id: int) -> dict[str, Any]:
    with store.read() as conn:
        task = get_task(store, name, conn)
        row = conn.execute(sa.select(runs_table).where(runs_table.c.id == run_id, runs_table.c.task_id == task.id)).first()
        if row is None:
            raise NotFound(f"task {name!r} has no run {run_id}", details={"task": name, "run_id": run_id})
        return _run_json(row, task.name)


def list_runs(store: Store, name: str, *, limit: int | None = None, after: str | None = None) -> dict[str, Any]:
    """Newest first, ``limit`` (default 20, at most 100) per page; ``next`` is the next page's cursor."""
    size = 20 if limit is None else limit
    if not 1 <= size <= 100:
        raise Invalid("limit must be between 1 and 100", code="invalid_limit")
    with store.read() as conn:
        task = get_task(store, name, conn)
        query = sa.select(runs_table).where(runs_table.c.task_id == task.id)
        if after:
            values = decode_cursor(after)
            if len(values) != 1 or not isinstance(values[0], int):
                raise Invalid("the 'after' cursor does not belong to this run log", code="invalid_cursor")
            query = query.where(runs_table.c.id < values[0])
        rows = conn.execute(query.order_by(runs_table.c.id.desc()).limit(size + 1)).all()
    page = rows[:size]
    return {
        "runs": [_run_json(row, task.name) for row in page],
        "next": encode_cursor([page[-1].id]) if len(rows) > size and page else None,
    }


def _stale(rows: list[Any], now: dt.datetime) -> Iterator[Any]:
    for row in rows:
        expired = row.lease_expires_at is None or row.lease_expires_at < now
        if expired or owner_is_dead(row.owner):
            yield row


def fail_stale_runs(store: Store) -> int:
    """Record runs left ``running`` by a dead process (or with an expired lease) as failed."""
    now = utc_now()
    with store.read() as conn:
        rows = conn.execute(
            sa.select(runs_table.c.id, runs_table.c.owner, runs_table.c.lease_expires_at).where(runs_table.c.status == "running")
        ).all()
    stale = [row.id for row in _stale(rows, now)]
    if not stale:
        return 0
    with store.write() as conn:
        count = 0
        for run_id in stale:
            row = conn.execute(sa.select(runs_table).where(runs_table.c.id == run_id, runs_table.c.status == "running")).first()
            if row is None or not list(_stale([row], now)):
                continue
            result = dict(row.result or {})
            result["error"] = {"at": "run", "step": None, "reason": _INTERRUPTED}
            conn.execute(
                runs_table.update().where(runs_table.c.id == run_id).values(status="failed", result=result, finished_at=now, lease_expires_at=None)
            )
            count += 1
        return count
