"""The task scheduler: runs tasks with a cron ``schedule``, once per due time, in the worker.

Rules (docs/tasks.md repeats them):

- Schedules are cron expressions in UTC, read by croniter: five fields (minute hour day month
  weekday, e.g. ``*/15 * * * *``), or six with **seconds as the sixth field**
  (``* * * * * */10`` = every ten seconds).
- ``pb_tasks.next_run_at`` holds a task's next due time. A worker *claims* a due task in one
  transaction: it selects it (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's writes are
  serialised anyway), inserts the run with ``due_key = "<task id>:<due time>"`` (unique, so a
  due time can never run twice, whatever the workers do), moves ``next_run_at`` to the first due
  time after now, and takes the task's schedule lease. Several workers therefore run each due
  time once.
- A task never runs twice at once from its schedule: while its scheduled run holds the lease
  (renewed every 20 s, 60 s long; freed at once when the holder's process on this host is gone),
  no other claim happens. Due times that pass meanwhile — or while no worker runs at all — are
  coalesced: the task then runs **once**, for the latest missed due time, never as a burst.
- Disabling a task or removing its schedule clears ``next_run_at``; runs by hand still work.
- A run left ``running`` by a dead process (or whose lease expired) is recorded as failed
  (``interrupted``).
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass

import sqlalchemy as sa
from croniter import croniter

from ..columns import utc_now
from ..errors import PushbaseError
from ..leases import new_owner
from ..settings import Settings
from ..storage import Store
from ..storage.schema import task_runs as runs_table
from ..storage.schema import tasks as tasks_table
from .runner import HttpSender
from .service import run_recorded, task_sender
from .store import RUN_LEASE, TASK_CHANNEL, Task, _from_row, fail_stale_runs, next_due, release_dead_leases, release_task_lease, start_run

__all__ = ["TaskScheduler", "Claim", "claim_due", "seconds_until_due", "latest_due"]

log = logging.getLogger("pushbase.tasks.schedule")

_MAINTENANCE_SECONDS = 30.0
_ERROR_BACKOFF = 5.0
_MIN_WAIT = 0.05


@dataclass(frozen=True)
class Claim:
    task: Task
    run_id: int
    due_at: dt.datetime


def latest_due(schedule: str, now: dt.datetime) -> dt.datetime:
    """The last due time of ``schedule`` at or before ``now``."""
    value = croniter(schedule, now.astimezone(dt.timezone.utc)).get_prev(dt.datetime)
    return value.astimezone(dt.timezone.utc)


def _due_key(task_id: int, due: dt.datetime) -> str:
    return f"{task_id}:{due.astimezone(dt.timezone.utc).isoformat()}"


def _claimable(now: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.and_(
        tasks_table.c.next_run_at.is_not(None),
        sa.or_(tasks_table.c.lease_owner.is_(None), tasks_table.c.lease_expires_at.is_(None), tasks_table.c.lease_expires_at < now),
    )


def claim_due(store: Store, owner: str, *, now: dt.datetime | None = None, limit: int = 20) -> list[Claim]:
    """Claim the tasks due at ``now``: one run each, recorded as ``running`` (see the module rules)."""
    claims: list[Claim] = []
    with store.write() as conn:
        now = now or utc_now()
        query = (
            sa.select(tasks_table)
            .where(_claimable(now), tasks_table.c.next_run_at <= now)
            .order_by(tasks_table.c.next_run_at, tasks_table.c.id)
            .limit(limit)
        )
        for row in conn.execute(store.skip_locked(query)).all():
            task = _from_row(row)
            try:
                spec = task.spec
            except PushbaseError as exc:
                log.error("task %s: stored definition is not valid (%s); its schedule stops", task.name, exc.message)
                conn.execute(tasks_table.update().where(tasks_table.c.id == task.id).values(next_run_at=None))
                continue
            if not spec.schedule or not spec.enabled:
                conn.execute(tasks_table.update().where(tasks_table.c.id == task.id).values(next_run_at=None))
                continue
            assert task.next_run_at is not None
            due = max(task.next_run_at, latest_due(spec.schedule, now))
            following = next_due(spec.schedule, now)
            key = _due_key(task.id, due)
            moved = {"next_run_at": following}
            if conn.execute(sa.select(runs_table.c.id).where(runs_table.c.due_key == key)).first() is not None:
                conn.execute(tasks_table.update().where(tasks_table.c.id == task.id).values(**moved))
                continue
            run_id = start_run(store, task.id, trigger="schedule", owner=owner, params=spec.params, conn=conn, due_key=key, due_at=due)
            conn.execute(
                tasks_table.update()
                .where(tasks_table.c.id == task.id)
                .values(**moved, lease_owner=owner, lease_expires_at=now + RUN_LEASE)
            )
            claims.append(Claim(task, run_id, due))
    return claims


def seconds_until_due(store: Store, *, now: dt.datetime | None = None) -> float | None:
    """Seconds until the next claimable due time (0 when one is due), or None when none is scheduled."""
    now = now or utc_now()
    with store.read() as conn:
        soonest = conn.execute(sa.select(sa.func.min(tasks_table.c.next_run_at)).where(_claimable(now))).scalar()
    if soonest is None:
        return None
    if soonest.tzinfo is None:
        soonest = soonest.replace(tzinfo=dt.timezone.utc)
    return max((soonest - now).total_seconds(), 0.0)


class TaskScheduler:
    """Runs scheduled tasks. ``start()``/``stop()`` from the worker, inside its event loop.

    ``sender`` is the HTTP client the runs use; by default the scheduler opens its own
    (``task_sender(settings)``) and closes it on ``stop()``."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        sender: HttpSender | None = None,
        *,
        poll_seconds: float = 5.0,
        stop_grace: float = 10.0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.owner = new_owner("tasks")
        self.poll_seconds = poll_seconds
        self.stop_grace = stop_grace
        self._sender = sender
        self._own_sender = None
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._runs: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- lifetime --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        if self._sender is None:
            self._own_sender = task_sender(self.settings)
            self._sender = self._own_sender
        self.store.add_listener(self._on_notify)
        self._main = self._loop.create_task(self._run(), name="pushbase-task-scheduler")

    async def stop(self) -> None:
        self.store.remove_listener(self._on_notify)
        self._stopping = True
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            self._main = None
        if self._runs:
            _, pending = await asyncio.wait(set(self._runs), timeout=self.stop_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._own_sender is not None:
            await self._own_sender.aclose()
            self._own_sender = None
            self._sender = None

    def _on_notify(self, channel: str, _payload: str) -> None:
        if channel != TASK_CHANNEL or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- the loop --------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        await asyncio.to_thread(release_dead_leases, self.store)
        await asyncio.to_thread(fail_stale_runs, self.store)

    async def _run(self) -> None:
        last_maintenance = float("-inf")
        while not self._stopping:
            wait = self.poll_seconds
            try:
                if time.monotonic() - last_maintenance >= _MAINTENANCE_SECONDS:
                    await self._maintain()
                    last_maintenance = time.monotonic()
                self._wake.clear()
                claims = await asyncio.to_thread(claim_due, self.store, self.owner)
                for claim in claims:
                    self._spawn(claim)
                if claims:
                    continue
                until = await asyncio.to_thread(seconds_until_due, self.store)
                if until is not None:
                    # Something due but not claimable here (another worker is claiming it): look again soon.
                    wait = min(max(until, _MIN_WAIT), self.poll_seconds)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep scheduling; try again a little later
                log.exception("task scheduler error; trying again in %ss", _ERROR_BACKOFF)
                wait = _ERROR_BACKOFF
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the cancel of stop()
            # when the wake-up comes in the same instant, and this loop would then never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _spawn(self, claim: Claim) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._run_claim(claim), name=f"pushbase-task-{claim.task.name}-{claim.run_id}")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _run_claim(self, claim: Claim) -> None:
        assert self._sender is not None
        try:
            status = await run_recorded(
                self.store,
                self.settings,
                claim.task,
                claim.run_id,
                owner=self.owner,
                sender=self._sender,
                params=None,
                holds_task_lease=True,
            )
            log.info("task %s: scheduled run %s (due %s) %s", claim.task.name, claim.run_id, claim.due_at.isoformat(), status)
        finally:
            try:
                await asyncio.shield(asyncio.to_thread(release_task_lease, self.store, claim.task.id, self.owner))
            except Exception:  # noqa: BLE001 - the lease expires on its own
                log.warning("task %s: could not release its schedule lease", claim.task.name, exc_info=True)
