"""Scheduled tasks: claims (once per due time, missed times coalesced), stale runs, the scheduler
in-process on both engines, and two real worker processes sharing one PostgreSQL."""
from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import sqlalchemy as sa

from pushbase.columns import utc_now
from pushbase.settings import Settings
from pushbase.storage import Store, open_store
from pushbase.storage.schema import task_runs as runs_table
from pushbase.storage.schema import tasks as tasks_table
from pushbase.tasks.schedule import TaskScheduler, claim_due, latest_due, seconds_until_due
from pushbase.tasks.store import create_task, fail_stale_runs, get_task, list_runs, next_due, release_task_lease, start_run, update_task
from tests.conftest import PUSHBASE_BIN, pg_schema_url
from tests.receivers import Receiver

EVERY_SECOND = "* * * * * *"


def task(name: str, url: str, schedule: str | None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "steps": [{"name": "ping", "method": "POST", "url": url, "json": {"task": name}, "expect_json": False}], "schedule": schedule, **extra}


def set_next_run(store: Store, name: str, when: dt.datetime | None) -> None:
    with store.write() as conn:
        conn.execute(tasks_table.update().where(tasks_table.c.name == name).values(next_run_at=when))


def all_runs(store: Store) -> list[Any]:
    with store.read() as conn:
        return conn.execute(sa.select(runs_table).order_by(runs_table.c.id)).all()


def eventually(check: Callable[[], Any], timeout: float = 60.0, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting: {message}")


# --- claims ---------------------------------------------------------------------------------------


def test_cron_helpers() -> None:
    at = dt.datetime(2024, 1, 1, 10, 7, 30, 500, tzinfo=dt.timezone.utc)
    assert next_due("*/15 * * * *", at) == dt.datetime(2024, 1, 1, 10, 15, tzinfo=dt.timezone.utc)
    assert latest_due("*/15 * * * *", at) == dt.datetime(2024, 1, 1, 10, 0, tzinfo=dt.timezone.utc)
    # Six fields: seconds are the sixth.
    assert next_due("* * * * * */10", at) == dt.datetime(2024, 1, 1, 10, 7, 40, tzinfo=dt.timezone.utc)
    assert next_due(EVERY_SECOND, at) == dt.datetime(2024, 1, 1, 10, 7, 31, tzinfo=dt.timezone.utc)


def test_a_due_time_is_claimed_once_and_missed_ones_coalesce(store: Store) -> None:
    schedule = "* * * * * */10"  # every ten seconds
    created = create_task(store, task("sync", "http://x.example/", schedule), allow_private=False)
    first = dt.datetime.fromisoformat(created["state"]["next_run_at"].replace("Z", "+00:00"))
    now = utc_now()
    assert now < first <= now + dt.timedelta(seconds=10)
    early = first - dt.timedelta(seconds=1)
    assert claim_due(store, "owner-a", now=early) == []
    until = seconds_until_due(store, now=early)
    assert until is not None and 0 < until <= 1

    # No worker ran for an hour: 360 due times passed. One run, for the latest of them.
    set_next_run(store, "sync", now - dt.timedelta(hours=1))
    (claim,) = claim_due(store, "owner-a", now=now)
    assert claim.due_at == latest_due(schedule, now) and claim.task.name == "sync"
    following = get_task(store, "sync").next_run_at
    assert following == next_due(schedule, now) and following > now
    (run,) = all_runs(store)
    assert (run.id, run.status, run.trigger, run.owner) == (claim.run_id, "running", "schedule", "owner-a")
    assert run.due_key == f"{claim.task.id}:{claim.due_at.isoformat()}"

    # While that run holds the task, a later due time is not claimed by anyone...
    later = now + dt.timedelta(seconds=30)  # within the run's lease
    assert claim_due(store, "owner-b", now=later) == []
    # ... and once it is over, the task runs once more, for the latest due time.
    release_task_lease(store, claim.task.id, "owner-a")
    assert claim_due(store, "owner-b", now=now) == []
    (again,) = claim_due(store, "owner-b", now=later)
    assert again.due_at == latest_due(schedule, later) and again.due_at > claim.due_at
    release_task_lease(store, claim.task.id, "owner-b")

    # A due time that already has its run is never run again (the unique due_key).
    set_next_run(store, "sync", claim.due_at)
    assert claim_due(store, "owner-c", now=now) == []
    assert get_task(store, "sync").next_run_at > now
    assert len(all_runs(store)) == 2


def test_disabled_and_unscheduled_tasks_are_not_claimed(store: Store) -> None:
    shown = create_task(store, task("off", "http://x.example/", "* * * * *", enabled=False), allow_private=False)
    assert shown["state"]["next_run_at"] is None
    create_task(store, task("manual", "http://x.example/", None), allow_private=False)
    assert get_task(store, "manual").next_run_at is None
    assert seconds_until_due(store) is None
    # A schedule turned off behind the claim's back (the next_run_at is stale) is cleared, not run.
    set_next_run(store, "off", utc_now() - dt.timedelta(minutes=1))
    assert claim_due(store, "w") == [] and get_task(store, "off").next_run_at is None
    assert update_task(store, "off", {"enabled": True}, allow_private=False)["state"]["next_run_at"] is not None
    assert update_task(store, "off", {"schedule": None}, allow_private=False)["state"]["next_run_at"] is None
    assert all_runs(store) == []


def test_concurrent_claims_run_each_due_time_once(db_url: str, store: Store) -> None:
    create_task(store, task("busy", "http://x.example/", "* * * * *"), allow_private=False)
    stores = [open_store(db_url) for _ in range(4)]
    try:
        for round_ in range(5):
            set_next_run(store, "busy", utc_now() - dt.timedelta(minutes=round_ + 1))
            with store.write() as conn:
                conn.execute(tasks_table.update().values(lease_owner=None, lease_expires_at=None))
                conn.execute(runs_table.delete())
            barrier = threading.Barrier(len(stores))
            claimed: list[Any] = []

            def claim(own: Store, n: int) -> None:
                barrier.wait()
                claimed.extend(claim_due(own, f"worker-{n}"))

            threads = [threading.Thread(target=claim, args=(own, n)) for n, own in enumerate(stores)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert len(claimed) == 1, claimed
            assert len(all_runs(store)) == 1
    finally:
        for own in stores:
            own.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_of_dead_processes_are_recorded_as_interrupted(store: Store) -> None:
    create_task(store, task("t", "http://x.example/", None), allow_private=False)
    task_id = get_task(store, "t").id
    dead = start_run(store, task_id, trigger="api", owner=f"{socket.gethostname()}:{_dead_pid()}:task-x")
    alive = start_run(store, task_id, trigger="api", owner=f"{socket.gethostname()}:{os.getpid()}:task-y")
    elsewhere = start_run(store, task_id, trigger="api", owner="other-host:1:task-z")
    with store.write() as conn:
        conn.execute(runs_table.update().where(runs_table.c.id == elsewhere).values(lease_expires_at=utc_now() - dt.timedelta(seconds=1)))
    assert fail_stale_runs(store) == 2
    runs = {r["run_id"]: r for r in list_runs(store, "t")["runs"]}
    assert runs[alive]["status"] == "running"
    for run_id in (dead, elsewhere):
        assert runs[run_id]["status"] == "failed" and "interrupted" in runs[run_id]["error"]["reason"]
    assert fail_stale_runs(store) == 0


# --- the scheduler in-process ---------------------------------------------------------------------


async def test_scheduler_runs_a_seconds_schedule(store: Store, settings: Settings) -> None:
    with Receiver() as receiver:
        await asyncio.to_thread(create_task, store, task("tick", f"{receiver.url}/tick", EVERY_SECOND), allow_private=True)
        scheduler = TaskScheduler(store, settings)
        await scheduler.start()
        try:
            async def enough() -> None:
                while len([r for r in await asyncio.to_thread(all_runs, store) if r.status == "succeeded"]) < 3:
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(enough(), 60)
        finally:
            await scheduler.stop()
        runs = await asyncio.to_thread(all_runs, store)
        assert runs and all(r.status == "succeeded" and r.trigger == "schedule" for r in runs), [(r.status, r.result.get("error")) for r in runs]
        dues = [r.due_at for r in runs]
        assert len(set(dues)) == len(dues) and dues == sorted(dues)
        assert all(d.microsecond == 0 for d in dues)
        assert len(receiver.requests) == len(runs)
        assert all(req.json() == {"task": "tick"} for req in receiver.requests)
        state = (await asyncio.to_thread(get_task, store, "tick"))
        assert state.lease_owner is None


async def test_scheduler_records_failed_scheduled_runs(store: Store, settings: Settings) -> None:
    with Receiver() as receiver:
        receiver.respond(503)
        await asyncio.to_thread(create_task, store, task("down", f"{receiver.url}/down", EVERY_SECOND), allow_private=True)
        scheduler = TaskScheduler(store, settings)
        await scheduler.start()
        try:
            async def one() -> None:
                while not [r for r in await asyncio.to_thread(all_runs, store) if r.status == "failed"]:
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(one(), 60)
        finally:
            await scheduler.stop()
        failed = [r for r in await asyncio.to_thread(all_runs, store) if r.status == "failed"]
        assert "HTTP 503" in failed[0].result["error"]["reason"]


# --- real worker processes ------------------------------------------------------------------------

_LAUNCHER = """
import asyncio, signal, sys
from pushbase.settings import Settings
from pushbase.storage import open_store
from pushbase.tasks.schedule import TaskScheduler

async def main():
    settings = Settings.from_env(db=sys.argv[1])
    store = open_store(settings.db)
    scheduler = TaskScheduler(store, settings)
    await scheduler.start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await scheduler.stop()
    store.close()

asyncio.run(main())
"""


def _worker_has_scheduler() -> bool:
    try:
        import pushbase.worker
    except ImportError:
        return False
    return "TaskScheduler" in inspect.getsource(pushbase.worker)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """``pushbase worker`` processes (or, until the worker runs the scheduler, a process running
    the scheduler alone)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(db: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker-{len(started)}.log", "ab")
        env = {**os.environ, "PUSHBASE_ALLOW_PRIVATE_TARGETS": "1"}
        if _worker_has_scheduler():
            cmd = [PUSHBASE_BIN, "worker", "--db", db]
        else:
            cmd = [sys.executable, "-c", _LAUNCHER, db]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_two_workers_on_postgresql_run_each_due_time_once(pg_schema: str, workers: Any, tmp_path: Path) -> None:
    db = pg_schema_url(pg_schema)
    store = open_store(db)
    try:
        with Receiver() as receiver:
            create_task(store, task("tick", f"{receiver.url}/tick", EVERY_SECOND), allow_private=True)
            procs = [workers(db), workers(db)]
            eventually(lambda: len([r for r in all_runs(store) if r.status != "running"]) >= 8, message="8 scheduled runs")
            for proc in procs:
                proc.terminate()
            for proc in procs:
                assert proc.wait(30) == 0, (tmp_path / "worker-0.log").read_text()
            runs = all_runs(store)
            logs = "\n".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
            assert all(r.status == "succeeded" for r in runs), ([(r.status, r.result.get("error")) for r in runs], logs)
            dues = [r.due_at for r in runs]
            assert len(set(dues)) == len(dues)
            # Each due time reached the endpoint exactly once.
            assert len(receiver.requests) == len(runs)
    finally:
        store.close()


@pytest.mark.skipif(not _worker_has_scheduler(), reason="pushbase/worker.py does not run the TaskScheduler yet")
def test_serve_runs_schedules_defined_through_the_api(db_url: str, server_factory: Any) -> None:
    import httpx

    from tests.conftest import admin_key

    server = server_factory(db_url)
    headers = {"x-api-key": admin_key(db_url)}
    with Receiver() as receiver:
        r = httpx.post(f"{server.url}/api/tasks", json=task("tick", f"{receiver.url}/tick", EVERY_SECOND), headers=headers)
        assert r.status_code == 201, r.text
        runs = eventually(
            lambda: [x for x in httpx.get(f"{server.url}/api/tasks/tick/runs", headers=headers).json()["runs"] if x["status"] == "succeeded"],
            message="a scheduled run",
        )
        assert runs[0]["trigger"] == "schedule" and runs[0]["due_at"] and runs[0]["steps"][0]["status"] == 200
        assert httpx.patch(f"{server.url}/api/tasks/tick", json={"enabled": False}, headers=headers).json()["state"]["next_run_at"] is None
