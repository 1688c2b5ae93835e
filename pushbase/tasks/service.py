"""Running a stored task with the shared sender, and recording the run.

What a run can reach:

- ``views.NAME.rows``: every row of the view (at most :data:`MAX_VIEW_ROWS`; more is an error
  naming the view). Views named literally in the templates (``views.orders_to_push`` or
  ``views['orders_to_push']``) are read once, when the run starts, so every step sees the same
  rows and the event loop never waits on the database; a view named by an expression is read
  when first used.
- ``load``: the rows go through the Push API's ingest job (``load_rows_now``), in a thread; the
  run records the job's status document (``jobId``, ``status``, counts, errors).
- ``secrets``: ``Settings.secrets`` (``PUSHBASE_SECRET_<NAME>``); never stored.
- HTTP: the sender given (the worker's) or a fresh ``OutboundClient`` that obeys
  ``allow_private_targets``; answers up to :data:`MAX_ANSWER_BYTES` are read.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any, Mapping

from jinja2 import Environment, TemplateSyntaxError, nodes

from ..columns import refuse_long_integers
from ..errors import Invalid, PushbaseError
from ..ingest import FINAL_STATUSES, load_rows_now
from ..leases import new_owner
from ..outbound import Attempt, OutboundClient
from ..settings import Settings
from ..storage import Store
from .models import TaskSpec
from .runner import HttpSender, RunResult, run_task
from .store import RUN_LEASE, Task, finish_run, get_run, get_task, redact_fields, renew_run, start_run
from .templates import is_template

__all__ = ["TaskClient", "MAX_VIEW_ROWS", "MAX_ANSWER_BYTES", "read_view_rows", "view_names", "execute", "run_recorded", "run_now", "task_sender"]

log = logging.getLogger("pushbase.tasks")

MAX_VIEW_ROWS = 100_000
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: How long a run waits for its load job when another worker runs it (its status is then recorded as it is).
_PARSER = Environment()


class TaskClient(OutboundClient):
    """The shared outbound client, reading answers up to :data:`MAX_ANSWER_BYTES`; a larger answer
    fails the attempt instead of handing templates a cut-off body."""

    async def send(self, method: str, url: str, **kwargs: Any) -> Attempt:
        attempt = await super().send(method, url, **kwargs)
        if attempt.body_truncated:
            return dataclasses.replace(attempt, error=f"the answer is larger than {self.max_body} bytes", body=b"", body_truncated=False)
        return attempt


def task_sender(settings: Settings) -> OutboundClient:
    """The outbound client tasks use: the private-address rule of the settings, larger answers."""
    return TaskClient(allow_private=settings.allow_private_targets, max_body=MAX_ANSWER_BYTES)


def read_view_rows(store: Store, name: str, *, limit: int = MAX_VIEW_ROWS) -> list[dict[str, Any]]:
    from ..views.store import get_view, view_query  # views load their formula compiler: only when used

    rows: list[dict[str, Any]] = []
    with store.read() as conn:
        view = get_view(store, name, conn)
        for batch in view_query(store, view, conn).stream(conn):
            rows.extend(batch)
            if len(rows) > limit:
                raise Invalid(
                    f"view {name!r} has more than {limit} rows; a task reads at most {limit} (give the view a filter or a limit)",
                    code="view_too_large",
                    details={"view": name, "limit": limit},
                )
    return rows


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def view_names(spec: TaskSpec) -> set[str]:
    """Views the templates name literally: ``views.NAME`` and ``views['NAME']``."""
    texts = [text for step in spec.steps for text in _strings([step.request_templates(), step.page_templates()])]
    if spec.load is not None:
        texts += _strings(spec.load.rows)
    names: set[str] = set()
    for text in texts:
        if "views" not in text or not is_template(text):
            continue
        try:
            tree = _PARSER.parse(text)
        except TemplateSyntaxError:
            continue
        for node in tree.find_all(nodes.Getattr):
            if isinstance(node.node, nodes.Name) and node.node.name == "views":
                names.add(node.attr)
        for item in tree.find_all(nodes.Getitem):
            if isinstance(item.node, nodes.Name) and item.node.name == "views" and isinstance(item.arg, nodes.Const) and isinstance(item.arg.value, str):
                names.add(item.arg.value)
    return names


async def execute(
    store: Store,
    settings: Settings,
    spec: TaskSpec,
    *,
    sender: HttpSender,
    params: Mapping[str, Any] | None = None,
) -> RunResult:
    """Run ``spec`` against the store (views, load) and ``sender``; never raises for a failing step."""
    snapshot: dict[str, list[dict[str, Any]] | PushbaseError] = {}
    for name in sorted(view_names(spec)):
        try:
            snapshot[name] = await asyncio.to_thread(read_view_rows, store, name)
        except PushbaseError as exc:
            snapshot[name] = exc

    def view_rows(name: str) -> list[dict[str, Any]]:
        if name not in snapshot:
            snapshot[name] = read_view_rows(store, name)
        value = snapshot[name]
        if isinstance(value, PushbaseError):
            raise value
        return value

    async def load_rows(dataset: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return await asyncio.to_thread(load_and_wait, store, dataset, rows)

    return await run_task(spec, sender=sender, params=params, secrets=settings.secrets, view_rows=view_rows, load_rows=load_rows)


def load_and_wait(store: Store, dataset: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``load_rows_now`` (which waits for the job's end, whoever runs it); an unfinished job is an error."""
    status = load_rows_now(store, dataset, rows, source="task")
    if status.get("status") not in FINAL_STATUSES:
        raise Invalid(f"job {status['jobId']} is still {status.get('status')}", code="load_timeout", details={"jobId": status["jobId"]})
    return status


@contextlib.asynccontextmanager
async def _renewing(store: Store, run_id: int, owner: str, task_id: int | None) -> AsyncIterator[None]:
    async def renew() -> None:
        every = RUN_LEASE.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(renew_run, store, run_id, owner, task_id=task_id)
            except Exception:  # noqa: BLE001 - the next renewal tries again
                log.warning("task run %s: could not renew its lease", run_id, exc_info=True)

    renewer = asyncio.get_running_loop().create_task(renew(), name=f"pushbase-task-run-{run_id}-lease")
    try:
        yield
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer


def _failure(reason: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    shown = redact_fields(dict(params or {}))
    return {"status": "failed", "error": {"at": "run", "step": None, "reason": reason}, "steps": [], "load": None, "params": shown}


async def run_recorded(
    store: Store,
    settings: Settings,
    task: Task,
    run_id: int,
    *,
    owner: str,
    sender: HttpSender,
    params: Mapping[str, Any] | None = None,
    holds_task_lease: bool = False,
) -> str:
    """Run a task whose run is already recorded as ``running`` and record how it ended.

    Returns the run's status. A cancelled run (the worker stopping) is recorded as failed.
    ``holds_task_lease``: a scheduled run, which also renews the task's schedule lease."""
    async with _renewing(store, run_id, owner, task.id if holds_task_lease else None):
        try:
            spec = task.spec
            result = (await execute(store, settings, spec, sender=sender, params=params)).to_json()
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(finish_run, store, run_id, "failed", _failure("interrupted: the worker stopped", params)))
            raise
        except PushbaseError as exc:  # e.g. a stored definition that no longer validates
            result = _failure(exc.message, params)
        except Exception as exc:  # noqa: BLE001 - a bug must still end the run, not leave it running
            log.exception("task %s run %s: unexpected error", task.name, run_id)
            result = _failure(f"unexpected error: {type(exc).__name__}", params)
    status = "succeeded" if result.get("status") == "succeeded" else "failed"
    await asyncio.to_thread(finish_run, store, run_id, status, result)
    return status


def _check_params(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise Invalid("params must be a JSON object of run parameters", code="invalid_params")
    refuse_long_integers(params, code="invalid_params")
    return params


async def run_now(
    store: Store,
    settings: Settings,
    name: str,
    *,
    params: Any = None,
    trigger: str = "api",
    sender: HttpSender | None = None,
) -> dict[str, Any]:
    """Run a stored task now (API, CLI) and answer with the recorded run."""
    params = _check_params(params)
    owner = new_owner("task")
    task = await asyncio.to_thread(get_task, store, name)
    run_id = await asyncio.to_thread(start_run, store, task.id, trigger=trigger, owner=owner, params=params)
    if sender is None:
        async with task_sender(settings) as client:
            await run_recorded(store, settings, task, run_id, owner=owner, sender=client, params=params)
    else:
        await run_recorded(store, settings, task, run_id, owner=owner, sender=sender, params=params)
    return await asyncio.to_thread(get_run, store, name, run_id)
