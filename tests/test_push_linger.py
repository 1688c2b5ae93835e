"""A ``min_interval: 0`` push lingers longer while write transactions queue (SQLite and PostgreSQL):
its calls then carry several loads each, and the rows still all go out."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from pushbase.settings import Settings
from pushbase.storage import Store
from tests.test_push_support import delivered_ids, eventually, make_push, orders, setup_orders, stamped

LOADS = 10
SPACING = 0.3  # seconds between loads: more than the base linger, so a quiet engine sends each alone


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(db=db_url, allow_private_targets=True, sweep_seconds=600.0, linger_seconds=0.2, linger_max_seconds=60.0)


@pytest.fixture
def busy_writers(store: Store) -> Iterator[None]:
    """Six threads that each keep a write transaction open most of the time (sleeping in it, so that a
    busy machine, as in a full parallel test run, does not thin them out): writes queue. Each pauses
    between its transactions, so that the others (and the push's) get the writer too."""
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.is_set():
            with store.write():
                time.sleep(0.03)
            time.sleep(0.005)

    threads = [threading.Thread(target=keep_writing, daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def test_the_write_pressure_follows_the_queued_transactions(store: Store) -> None:
    pressure = store.write_pressure
    eventually(lambda: pressure.level() < 0.5, message="idle store: about no transaction open")
    release = threading.Event()

    def write_until_released() -> None:
        with store.write():
            release.wait(timeout=30)

    # Four write transactions: on SQLite one holds the writer and three wait for it; on PostgreSQL all
    # four are open.
    writers = [threading.Thread(target=write_until_released, daemon=True) for _ in range(4)]
    for thread in writers:
        thread.start()
    try:
        eventually(lambda: pressure.level() > 3.5, message="four write transactions open or queued")
    finally:
        release.set()
        for thread in writers:
            thread.join(timeout=30)
    eventually(lambda: pressure.level() < 0.5, message="the level falls back once they are done")


def test_a_push_batches_a_stream_of_loads_while_writes_queue(api, receiver, store: Store, busy_writers: None) -> None:
    setup_orders(api)
    make_push(api, receiver.url + "/hook")
    eventually(lambda: store.write_pressure.level() > 3, message="the busy writers make writes queue")
    for i in range(1, LOADS + 1):
        api.load("orders", orders(i))
        time.sleep(SPACING)
    eventually(lambda: len(delivered_ids(receiver.requests)) == LOADS, message="every row delivered")
    assert sorted(delivered_ids(receiver.requests)) == list(range(1, LOADS + 1))
    # 0.2 s of linger for each of the ~6 queued transactions: a call every second or so, not one per load.
    assert len(receiver.requests) <= LOADS // 2, [len(r.json()) for r in receiver.requests]
    eventually(lambda: all(stamped(api).values()), message="every row stamped")
