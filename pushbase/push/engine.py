"""The push engine: a scheduler that wakes pushes, and one runner task per push that delivers.

- Wake-ups: new data in a dataset (``pushbase_data``, from this process or, on PostgreSQL, any process
  through LISTEN/NOTIFY) wakes the pushes of views on it; a created or changed push
  (``pushbase_pushes``) wakes itself; a sweep every ``sweep_seconds`` wakes every enabled push, which
  finds rows that match because of time alone (``now()`` in a formula) and pushes whose lease holder
  died; timers wake a push when its rate limit or retry time allows.
- A woken push first checks cheaply (reads only) whether it has anything to do and may do it now;
  then it leases itself (one worker at a time), finishes any pending delivery, cuts the view's rows
  into new pending deliveries (see ``deliveries``) and sends them in order, each stamped on a 2xx.
- Each push runs as its own asyncio task over one shared ``OutboundClient``, so a hanging or failing
  endpoint holds up only its own push. Database work runs in a small thread pool.
- ``min_interval`` 0 means as soon as data arrives. A quiet push calls at once; rows that arrive while
  a call is in flight go out together in the next call, and a data wake-up within ``linger_seconds``
  of the push's last call waits until that much time has passed, so a stream of small loads is
  batched instead of sent load by load. That linger grows with the store's write pressure (see
  ``PushEngine.linger_seconds``).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import sqlalchemy as sa

from ..columns import utc_now
from ..dataset_rows import DATA_CHANNEL
from ..errors import Conflict, NotFound
from ..leases import new_owner
from ..outbound import Attempt, OutboundClient
from ..settings import Settings
from ..storage import Store
from ..storage.schema import deliveries as deliveries_table
from . import deliveries as db
from .definitions import PUSH_CHANNEL, Push, enabled_push_ids, get_push, get_push_by_id, next_allowed_at, pushes_by_dataset
from .metrics import observe
from .retry import Disable, RetryAt, Success
from .signing import webhook_headers

__all__ = ["PushEngine", "RunReport"]

log = logging.getLogger("pushbase.push")

_RELEASED = ":released"
_ERROR_BACKOFF = 5.0
T = TypeVar("T")


@dataclass
class Work:
    """What one wake-up of a push came to, and when the push wants to be woken again."""

    wake_at: dt.datetime | None = None
    busy: bool = False
    gone: bool = False
    status: str = "idle"  # idle | succeeded | failed | disabled | nothing_to_send
    delivery_ids: list[int] = field(default_factory=list)
    rows: int = 0
    rows_stamped: int = 0
    released: bool = False


@dataclass
class RunReport:
    """The answer of ``POST /api/pushes/{push}/run``."""

    push: str
    status: str
    rows: int
    rows_stamped: int
    deliveries: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"push": self.push, "status": self.status, "rows": self.rows, "rows_stamped": self.rows_stamped, "deliveries": self.deliveries}


class _DbThreads:
    """The engine's database work, in a few threads. A job is one queue put and its answer one
    ``call_soon_threadsafe``: ``run_in_executor``'s concurrent future, its lock and its chained
    callbacks cost the event loop about twice as much, twice per call."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if len(self._threads) < self._size:
            self._start()
        self._jobs.put((loop, future, fn))
        return future

    def _start(self) -> None:
        with self._lock:
            while len(self._threads) < self._size:
                thread = threading.Thread(target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, future, fn = job
            if future.cancelled():  # its awaiter is gone (the engine is stopping): not started at all
                continue
            try:
                result, error = fn(), None
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiter, which must not hang
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(_settle_future, future, result, error)

    def shutdown(self) -> None:
        """The threads end once the jobs queued before are done; a later job starts new ones."""
        with self._lock:
            threads, self._threads = self._threads, []
            for _ in threads:
                self._jobs.put(None)


def _settle_future(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# Built once, so SQLAlchemy reuses its cache key (a pre-check runs at most wake-ups).
_ONE_PENDING = (
    sa.select(deliveries_table.c.id)
    .where(deliveries_table.c.push_id == sa.bindparam("push_id"), deliveries_table.c.status == "pending")
    .limit(1)
)


class _Runner:
    """One push's task: waits for a wake-up, lingers for more data if asked, then works the push."""

    def __init__(self, engine: PushEngine, push_id: int) -> None:
        self.engine = engine
        self.push_id = push_id
        self.event = asyncio.Event()
        self.linger = False
        self.missed = False  # woken while another worker held the lease
        self._last_call = -1e9  # loop time when a go at the push last made a call
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.task = asyncio.get_running_loop().create_task(self._loop(), name=f"pushbase-push-{push_id}")

    def wake(self, *, linger: bool = False) -> None:
        self.linger = self.linger or linger  # linger: woken by new data
        self.event.set()

    def wake_at(self, when: dt.datetime) -> None:
        delay = max(0.0, (when - utc_now()).total_seconds())
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        if self._timer is not None and not self._timer.cancelled() and self._timer_at <= at and self._timer_at > loop.time():
            return  # an earlier wake-up is already set
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self.wake)

    async def _loop(self) -> None:
        while True:
            await self.event.wait()
            if self.linger and self.engine.settings.linger_seconds > 0:
                # Data while the push is quiet goes out at once; data that keeps coming right after a
                # call waits until ``linger_seconds`` after it, so a stream of small loads is batched.
                hold = self._last_call + self.engine.linger_seconds() - asyncio.get_running_loop().time()
                if hold > 0:
                    await asyncio.sleep(hold)
            self.event.clear()
            data, self.linger = self.linger, False
            try:
                work = await self.engine.work(self.push_id, precheck=not data)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the runner; try again a little later
                log.exception("push #%s: unexpected error; trying again in %ss", self.push_id, _ERROR_BACKOFF)
                work = Work(wake_at=utc_now() + dt.timedelta(seconds=_ERROR_BACKOFF))
            log.debug("push #%s: %s", self.push_id, work)
            if work.delivery_ids:
                self._last_call = asyncio.get_running_loop().time()
            if work.gone:
                self.engine._forget(self)
                return
            self.missed = work.busy
            if work.wake_at is not None:
                self.wake_at(work.wake_at)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.task.cancel()


class PushEngine:
    """Delivers pushes. ``start()`` runs the scheduler (the worker does); without it, ``run_now`` still
    works (the API's "run now" in a process without a worker)."""

    def __init__(self, store: Store, settings: Settings, *, client: OutboundClient | None = None, threads: int = 8) -> None:
        self.store = store
        self.settings = settings
        self.owner = new_owner("push")
        self._client = client
        self._own_client = client is None
        self._threads = _DbThreads(threads, "pushbase-push")
        self._runners: dict[int, _Runner] = {}
        self._targets = db.TargetCache()
        # Enabled pushes by the dataset their view reads: data wake-ups look here, not in the database.
        self._by_dataset: dict[int, list[int]] | None = None
        self._by_dataset_gen = 0
        self._data_pending: set[int] = set()
        self._data_waking = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False

    # -- lifetime ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        freed = await self._db(db.free_dead_leases, self.store)
        if freed:
            log.info("freed %d push lease(s) of processes that are gone", freed)
        self.store.add_listener(self._on_notify)
        self._started = True
        self._sweeper = self._loop.create_task(self._sweep_loop(), name="pushbase-push-sweep")

    async def stop(self) -> None:
        self.store.remove_listener(self._on_notify)
        tasks: list[asyncio.Task[Any]] = []
        if self._sweeper is not None:
            self._sweeper.cancel()
            tasks.append(self._sweeper)
        for runner in list(self._runners.values()):
            runner.cancel()
            tasks.append(runner.task)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runners.clear()
        if self._started:
            # A call cut short stays pending and is sent again, with its webhook-id, by whoever comes next.
            with contextlib.suppress(Exception):
                await self._db(db.release_all, self.store, self.owner)
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
        self._threads.shutdown()

    def linger_seconds(self) -> float:
        """How long after its last call a push holds new data back: ``linger_seconds``, and as much
        again for each write transaction queued on average lately (up to ``linger_max_seconds``). A
        call costs the writer two transactions whatever it carries, so while the writer is busy,
        calls that carry more rows leave it to the loads, and the rows still go out within the cap."""
        base = self.settings.linger_seconds
        return min(max(base, self.settings.linger_max_seconds), base * max(1.0, self.store.write_pressure.level()))

    @property
    def client(self) -> OutboundClient:
        if self._client is None:
            self._client = OutboundClient(allow_private=self.settings.allow_private_targets)
        return self._client

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._threads.submit(functools.partial(fn, *args, **kwargs))

    # -- wake-ups ---------------------------------------------------------------------------------

    def _on_notify(self, channel: str, payload: str) -> None:
        """Called from any thread (after a commit, or by the PostgreSQL listener)."""
        if channel not in (DATA_CHANNEL, PUSH_CHANNEL) or self._loop is None or self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._dispatch, channel, payload)

    def _dispatch(self, channel: str, payload: str) -> None:
        log.debug("wake-up %s %s", channel, payload)
        if channel == PUSH_CHANNEL:
            self._by_dataset, self._by_dataset_gen = None, self._by_dataset_gen + 1  # pushes changed
            ident, _, what = payload.partition(":")
            if not ident.isdigit():
                return
            push_id = int(ident)
            if ":" + what == _RELEASED:
                runner = self._runners.get(push_id)
                if runner is not None and runner.missed:
                    runner.wake()
            else:
                # Notifications come after their commit (``Store.notify``): the push can look at once.
                self.wake(push_id)
        elif payload.isdigit():
            by_dataset = self._by_dataset
            if by_dataset is not None and not self._data_waking:
                for push_id in by_dataset.get(int(payload), ()):
                    self.wake(push_id, linger=True)
                return
            # The pushes of each dataset have to be read first: notifications that come meanwhile
            # are looked up together.
            self._data_pending.add(int(payload))
            if not self._data_waking:
                self._data_waking = True
                asyncio.get_running_loop().create_task(self._wake_datasets())

    async def _wake_datasets(self) -> None:
        datasets, self._data_pending = self._data_pending, set()
        self._data_waking = False
        try:
            by_dataset = self._by_dataset
            if by_dataset is None:
                generation = self._by_dataset_gen
                by_dataset = await self._db(self._read, pushes_by_dataset)
                if generation == self._by_dataset_gen:
                    self._by_dataset = by_dataset
        except Exception:  # noqa: BLE001 - the sweep will find them
            log.warning("could not look up the pushes of datasets %s", sorted(datasets), exc_info=True)
            return
        for dataset_id in datasets:
            for push_id in by_dataset.get(dataset_id, ()):
                self.wake(push_id, linger=True)

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        with self.store.read() as conn:
            return fn(conn, *args)

    def wake(self, push_id: int, *, linger: bool = False) -> None:
        if not self._started:
            return
        runner = self._runners.get(push_id)
        if runner is None:
            runner = self._runners[push_id] = _Runner(self, push_id)
        runner.wake(linger=linger)

    def _forget(self, runner: _Runner) -> None:
        if self._runners.get(runner.push_id) is runner:
            del self._runners[runner.push_id]

    async def _sweep_loop(self) -> None:
        while True:
            self._by_dataset, self._by_dataset_gen = None, self._by_dataset_gen + 1  # looked up afresh now and then
            try:
                for push_id in await self._db(self._read, enabled_push_ids):
                    self.wake(push_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.warning("push sweep failed; trying again", exc_info=True)
            await asyncio.sleep(self.settings.sweep_seconds)

    # -- working a push ---------------------------------------------------------------------------

    def _precheck(self, push_id: int) -> Work | None:
        """Reads only, one transaction: is there anything to do now? Saves a lease (a write) on most
        wake-ups that find nothing; returns None when the push should be claimed."""
        with self.store.read() as conn:
            push = get_push_by_id(self.store, push_id, conn)
            if push is None:
                return Work(gone=True)
            if not push.enabled:
                return Work()
            pending = conn.execute(_ONE_PENDING, {"push_id": push_id}).first()
            due = next_allowed_at(push, utc_now(), pending=pending is not None)
            if due is not None:
                return Work(wake_at=due)
            if pending is None and not db.view_has_rows(conn, self._targets.get(self.store, conn, push)):
                return Work()
        return None

    async def work(self, push_id: int, *, manual: bool = False, owner: str | None = None, precheck: bool = True) -> Work:
        """One go at a push: finish what is pending, then cut and send the view's rows (once).

        ``owner`` names the lease holder: the runners of this engine share ``self.owner`` (one runner per
        push), a run by hand brings its own so that the two exclude each other. ``precheck=False`` (new
        data: there is most likely something to send) goes straight to the claim, which takes no
        lease when it finds nothing."""
        owner = owner or self.owner
        if not manual and precheck:
            checked = await self._db(self._precheck, push_id)
            if checked is not None:
                return checked
        trigger = "manual" if manual else "auto"
        try:
            claimed = await self._db(db.claim, self.store, push_id, owner, self._targets, manual=manual, trigger=trigger)
        except db.LeaseLost:
            return Work()
        if claimed is None:
            # Gone (or, for a scheduled run, disabled meanwhile: the pre-check sees which next time).
            return Work(gone=manual)
        if isinstance(claimed, db.NotYet):
            return Work(wake_at=claimed.at)
        if isinstance(claimed, dt.datetime):
            return Work(wake_at=claimed + dt.timedelta(milliseconds=50), busy=True)
        if not claimed.leased:
            return Work(status="nothing_to_send")
        lost = asyncio.Event()
        # The lease is renewed every third of its time; most goes are over long before the first
        # renewal, so the renewing task is only started when that time comes.
        loop = asyncio.get_running_loop()
        renewer: list[asyncio.Task[None]] = []
        timer = loop.call_later(db.LEASE_SECONDS / 3, lambda: renewer.append(loop.create_task(self._renew(push_id, owner, lost, first=0.0))))
        work = Work()
        try:
            work = await self._deliver(claimed, manual, owner, lost)
            return work
        finally:
            timer.cancel()
            for task in renewer:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if not work.released:
                await self._db(db.release, self.store, push_id, owner)

    async def _renew(self, push_id: int, owner: str, lost: asyncio.Event, *, first: float | None = None) -> None:
        delay = db.LEASE_SECONDS / 3 if first is None else first
        while True:
            await asyncio.sleep(delay)
            delay = db.LEASE_SECONDS / 3
            try:
                if not await self._db(db.renew, self.store, push_id, owner):
                    log.warning("push #%s: lease lost to another worker", push_id)
                    lost.set()
                    return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - try again at the next tick; the lease has slack
                log.warning("push #%s: could not renew the lease", push_id, exc_info=True)

    async def _deliver(self, claimed: db.Claimed, manual: bool, owner: str, lost: asyncio.Event) -> Work:
        """Send the claimed deliveries in order, each recorded (and stamped on a 2xx) before the next.

        The claim holds the deliveries it cut in memory; ones left from before (a failure, a crash) are
        sent first, then the view is cut once more. Each ``record`` returns the push as it left it, so
        nothing is read back between calls."""
        push, target = claimed.push, claimed.target
        queue = collections.deque(claimed.deliveries)
        more, cut_done = claimed.more, claimed.cut
        work = Work(status="nothing_to_send")
        trigger = "manual" if manual else "auto"
        while not lost.is_set():
            if not queue and more:
                found = await self._db(db.next_pending, self.store, push.id)
                if found is None:
                    more = False
                else:
                    queue.append(found)
            if not queue:
                if cut_done:
                    break
                if not manual:
                    due = next_allowed_at(push, utc_now(), pending=False)
                    if due is not None:
                        work.wake_at = due
                        break
                try:
                    made = await self._db(db.cut, self.store, push, target, owner, trigger=trigger)
                except db.LeaseLost:
                    break
                cut_done = True
                queue.extend(made.deliveries)
                more = made.more
                continue
            delivery = queue[0]
            if not manual:
                due = next_allowed_at(push, utc_now(), pending=True)
                if due is not None:
                    work.wake_at = due
                    break
            attempt = await self._send(push, delivery)
            decision = push.retry_policy.decide(attempt, push.consecutive_failures, utc_now())
            last = cut_done and not more and len(queue) == 1  # nothing else of this push is pending
            recorded = await self._db(db.record, self.store, push, target, delivery, attempt, decision, owner, release_when_done=last)
            outcome = "succeeded" if isinstance(decision, Success) else "disabled" if isinstance(decision, Disable) else "retry"
            observe(outcome, attempt.duration_ms / 1000, delivery.row_count)
            work.delivery_ids.append(delivery.id)
            self._log(push, delivery, attempt, decision)
            if recorded.status == "gone":
                work.gone = True
                return work
            if recorded.push is None:
                break  # another worker finished this delivery (our lease had expired): stop here
            push = recorded.push
            work.released = recorded.released
            if recorded.status == "disabled":
                work.status = "disabled"
                return work
            if recorded.status == "pending":
                work.status = "failed"
                work.wake_at = recorded.at
                return work
            queue.popleft()
            work.status = "succeeded"
            work.rows += delivery.row_count
            work.rows_stamped += recorded.rows_stamped
            if recorded.released:
                # Given up with the record: nothing of this push may be touched any more.
                return work
        return work

    async def _send(self, push: Push, delivery: db.Delivery) -> Attempt:
        headers = dict(push.header_values)
        headers["Content-Type"] = delivery.content_type
        # A fresh timestamp and signature for every attempt; the id and body stay those of the batch.
        headers.update(webhook_headers(delivery.webhook_id, utc_now(), delivery.body, push.secret))
        return await self.client.send("POST", push.url, headers=headers, data=delivery.body, timeout=push.timeout)

    def _log(self, push: Push, delivery: db.Delivery, attempt: Attempt, decision: Any) -> None:
        # Never the URL, headers or body: they may carry credentials or personal data.
        if isinstance(decision, Success):
            log.info("push %s: delivered %s (%d rows, HTTP %s, %.0f ms)", push.name, delivery.webhook_id, delivery.row_count, attempt.status_code, attempt.duration_ms)
        elif isinstance(decision, RetryAt):
            log.warning("push %s: %s failed (%s); retry at %s", push.name, delivery.webhook_id, decision.reason, decision.at.isoformat())
        else:
            log.warning("push %s: disabled: %s", push.name, decision.reason)

    # -- run now ----------------------------------------------------------------------------------

    async def run_now(self, name: str, *, wait_seconds: float = 60.0) -> RunReport:
        """Push now, ignoring the rate limit (not the batch limits); waits for another worker's lease."""
        push = await self._db(get_push, self.store, name)
        if not push.enabled:
            raise Conflict(f"push {name!r} is disabled; enable it (PATCH enabled: true) to run it", code="disabled")
        deadline = time.monotonic() + wait_seconds
        owner = new_owner("push-run")
        while True:
            work = await self.work(push.id, manual=True, owner=owner)
            if not work.busy:
                break
            if time.monotonic() > deadline:
                raise Conflict(f"push {name!r} is busy in another worker; try again shortly", code="busy")
            await asyncio.sleep(0.05)
        if work.gone:
            raise NotFound(f"push {name!r} does not exist", details={"push": name})
        # Wake-ups that met our lease: let them look again now (here and in other processes).
        await self._db(self._notify_released, push.id)
        runner = self._runners.get(push.id)
        if runner is not None and work.wake_at is not None:
            runner.wake_at(work.wake_at)
        found = await self._db(db.deliveries_by_id, self.store, work.delivery_ids)
        return RunReport(name, work.status, work.rows, work.rows_stamped, found)

    def _notify_released(self, push_id: int) -> None:
        with self.store.write() as conn:
            self.store.notify(conn, PUSH_CHANNEL, f"{push_id}{_RELEASED}")
