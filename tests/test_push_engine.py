"""How the push engine schedules and batches, on SQLite and PostgreSQL: who wakes a push, when a
``min_interval: 0`` push lingers, and what one claim reads and writes. The sweep is made slow here, so
only the wake-ups under test can deliver anything within the tests' deadlines."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from pushbase.datasets import create_dataset
from pushbase.ingest import load_rows_now
from pushbase.push import deliveries as db
from pushbase.push.definitions import create_push
from pushbase.settings import Settings
from pushbase.storage.schema import deliveries as deliveries_table
from pushbase.storage.schema import pushes as pushes_table
from pushbase.views.store import create_view
from tests.test_push_support import COLUMNS, delivered_ids, deliveries, eventually, make_push, orders, setup_orders, stamped


@pytest.fixture
def settings(db_url: str) -> Settings:
    # No sweep and a long linger: a delivery within the deadlines below can only come from a data
    # wake-up of a quiet push (which does not linger) or from a run by hand.
    return Settings(db=db_url, allow_private_targets=True, max_body_bytes=2 * 1024 * 1024, sweep_seconds=600.0, linger_seconds=600.0)


def test_a_quiet_push_calls_at_once_and_data_right_after_a_call_lingers(api, receiver):
    setup_orders(api)
    make_push(api, receiver.url + "/hook")
    api.load("orders", orders(1))
    assert receiver.wait_for(1, timeout=15), "a quiet push must not wait for the linger"
    eventually(lambda: stamped(api)[1], message="row 1 stamped")
    # Right after that call, new data waits for the linger (600 s here) to be batched ...
    api.load("orders", orders(2))
    api.load("orders", orders(3))
    assert len(receiver.requests) == 1
    # ... and goes out together when the push runs.
    r = api.post("/api/pushes/out/run")
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == 2
    assert delivered_ids(receiver.requests) == [1, 2, 3]
    assert [d["rows"] for d in deliveries(api)] == [2, 1]


def test_a_push_created_later_is_woken_by_data_in_its_dataset(api, receiver):
    setup_orders(api)
    make_push(api, receiver.url + "/first")
    api.load("orders", orders(1))  # the engine now knows which pushes read "orders"
    assert receiver.wait_for(1, timeout=15)
    setup_orders(api, dataset="returns", view="returns_to_push")
    make_push(api, receiver.url + "/second", name="second", view="returns_to_push")
    api.load("returns", orders(7))
    eventually(lambda: [r for r in receiver.requests if r.path == "/second"], message="the new push woken by data")
    assert delivered_ids([r for r in receiver.requests if r.path == "/second"]) == [7]


def test_a_large_view_is_streamed_and_read_back_in_order(api, receiver, monkeypatch):
    # Few rows, small limits: the cut streams the view (more rows than the first read takes) and
    # keeps only the first delivery in memory; the others are read back from the database in order.
    monkeypatch.setattr(db, "_PROBE_ROWS", 5)
    monkeypatch.setattr(db, "_KEEP_BYTES", 1)
    setup_orders(api)
    make_push(api, receiver.url + "/hook", enabled=False, max_batch_rows=4)
    api.load("orders", orders(*range(1, 12)))
    r = api.patch("/api/pushes/out", json={"enabled": True})
    assert r.status_code == 200, r.text
    assert receiver.wait_for(3, timeout=15)
    assert delivered_ids(receiver.requests) == list(range(1, 12))
    eventually(lambda: all(stamped(api).values()), message="all rows stamped")
    assert sorted(d["rows"] for d in deliveries(api)) == [3, 4, 4]


def _one_push(store, url: str = "http://127.0.0.1:9/hook") -> int:
    create_dataset(store, {"name": "orders", "columns": COLUMNS, "unique_id": ["order_id"]})
    create_view(store, {"name": "to_push", "dataset": "orders", "filters": [{"field": "last pushed", "op": "is_empty"}], "sort": ["order_id"]})
    push = create_push(store, {"name": "out", "view": "to_push", "url": url, "log_time_field": "last pushed", "format": "json"}, allow_private=True)
    with store.read() as conn:
        return int(conn.execute(sa.select(pushes_table.c.id).where(pushes_table.c.name == push["name"])).scalar_one())


def _push_row(store, push_id: int):
    with store.read() as conn:
        return conn.execute(sa.select(pushes_table).where(pushes_table.c.id == push_id)).one()


def test_a_claim_that_finds_nothing_takes_no_lease(store):
    push_id = _one_push(store)
    claimed = db.claim(store, push_id, "worker-a", db.TargetCache())
    assert isinstance(claimed, db.Claimed) and not claimed.leased and claimed.deliveries == []
    row = _push_row(store, push_id)
    assert row.lease_owner is None and row.last_run_at is None


def test_a_claim_cuts_and_leases_in_one_go_and_the_record_gives_the_lease_up(store):
    push_id = _one_push(store)
    load_rows_now(store, "orders", orders(1, 2, 3), source="test")
    targets = db.TargetCache()
    claimed = db.claim(store, push_id, "worker-a", targets)
    assert isinstance(claimed, db.Claimed) and claimed.leased and claimed.cut and not claimed.more
    assert [d.row_count for d in claimed.deliveries] == [3]
    row = _push_row(store, push_id)
    assert row.lease_owner == "worker-a" and row.last_run_at is not None
    # Another worker is kept out while the lease holds.
    assert not isinstance(db.claim(store, push_id, "worker-b", targets), db.Claimed)
    with store.read() as conn:
        pending = conn.execute(sa.select(deliveries_table.c.id).where(deliveries_table.c.status == "pending")).scalars().all()
    assert pending == [claimed.deliveries[0].id]
    # The same view and dataset give the same compiled target.
    assert db.claim(store, push_id, "worker-a", targets).target is claimed.target  # type: ignore[union-attr]


def test_the_engine_database_threads_answer_results_and_errors_and_start_again_after_a_shutdown():
    import asyncio

    from pushbase.push.engine import _DbThreads

    async def main() -> None:
        threads = _DbThreads(2, "test-db")
        assert await threads.submit(lambda: 42) == 42
        with pytest.raises(ZeroDivisionError):
            await threads.submit(lambda: 1 / 0)
        threads.shutdown()
        assert await asyncio.wait_for(threads.submit(lambda: "again"), 10) == "again"
        threads.shutdown()

    asyncio.run(main())
