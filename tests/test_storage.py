"""Store wake-ups: listeners hear a notification once, and only after its transaction committed."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from pushbase.storage import NeedsConnection, Store
from pushbase.storage.prepared import PreparedStatement
from pushbase.storage.schema import meta
from pushbase.storage.listen import PgListener


def _count_meta(store: Store, key: str) -> int:
    with store.read() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM pb_meta WHERE key = :k"), {"k": key}).scalar_one()


_INSERT_META = PreparedStatement(meta.insert().values(key=sa.bindparam("k"), value=sa.bindparam("v")))


@pytest.mark.parametrize("light", [False, True], ids=["write", "light_write"])
def test_listener_sees_the_committed_rows(store: Store, light: bool) -> None:
    seen: list[int] = []

    def on_notify(channel: str, payload: str) -> None:
        if channel == "pushbase_data" and payload == "probe":
            # A woken worker reads at once: the row must already be visible to another connection.
            seen.append(_count_meta(store, "probe"))

    store.add_listener(on_notify)
    try:
        with (store.light_write() if light else store.write()) as conn:
            _INSERT_META.run(conn, {"k": "probe", "v": "1"})
            store.notify(conn, "pushbase_data", "probe")
            assert seen == []  # not before the commit
    finally:
        store.remove_listener(on_notify)
    assert seen == [1]


def test_rolled_back_transaction_wakes_nobody(store: Store) -> None:
    heard: list[str] = []
    store.add_listener(lambda channel, payload: heard.append(payload))
    with pytest.raises(RuntimeError):
        with store.write() as conn:
            store.notify(conn, "pushbase_data", "never")
            raise RuntimeError("roll back")
    assert "never" not in heard


def test_a_light_write_that_needs_sqlalchemy_is_rolled_back_and_the_writer_goes_on(store: Store) -> None:
    heard: list[str] = []
    store.add_listener(lambda channel, payload: heard.append(payload))
    with pytest.raises(NeedsConnection):
        with store.light_write() as conn:
            _INSERT_META.run(conn, {"k": "half", "v": "1"})
            store.notify(conn, "pushbase_data", "half")
            conn.execute(sa.text("SELECT 1"))
    assert _count_meta(store, "half") == 0 and "half" not in heard
    # The connection went back to the pool without a transaction open: the next writers work.
    with store.write() as conn:
        conn.execute(sa.text("INSERT INTO pb_meta (key, value) VALUES ('after', '1')"))
    with store.light_write() as conn:
        _INSERT_META.run(conn, {"k": "after-light", "v": "1"})
    assert _count_meta(store, "after") == 1 and _count_meta(store, "after-light") == 1


@contextlib.contextmanager
def _hearing(store: Store, prefix: str) -> Iterator[list[str]]:
    """A running PgListener of ``store``; yields the list of ``pushbase_data`` payloads starting with
    ``prefix`` that reach the local listeners, and on leaving waits for ``{prefix}end`` to arrive."""
    heard: list[str] = []
    arrived = threading.Event()

    def on_notify(channel: str, payload: str) -> None:
        if channel == "pushbase_data" and payload.startswith(prefix):
            heard.append(payload)
            if payload == f"{prefix}end":
                arrived.set()

    store.add_listener(on_notify)
    listener = PgListener(store)
    listener.start()
    try:
        for _ in range(200):
            if store.hears_own_notifications:
                break
            threading.Event().wait(0.05)
        assert store.hears_own_notifications
        yield heard
        assert arrived.wait(10)
    finally:
        listener.stop()
        store.remove_listener(on_notify)


def test_postgresql_listener_delivers_own_notifications_once(pg_store: Store) -> None:
    store = pg_store
    with _hearing(store, "once-") as heard:
        with store.write() as conn:
            store.notify(conn, "pushbase_data", "once-1")
        with store.write() as conn:
            store.notify(conn, "pushbase_data", "once-end")
    assert heard == ["once-1", "once-end"]


def test_postgresql_sends_every_notification_of_a_transaction_at_its_commit(pg_store: Store) -> None:
    """A transaction's NOTIFYs go out together before its commit (in statements of 500): all of them
    arrive, in order, from write() and light_write(); a rolled-back transaction's never do."""
    store = pg_store
    with _hearing(store, "many-") as heard:
        with store.write() as conn:
            for i in range(1201):
                store.notify(conn, "pushbase_data", f"many-{i}")
        with pytest.raises(RuntimeError):
            with store.write() as conn:
                store.notify(conn, "pushbase_data", "many-rolled-back")
                raise RuntimeError("roll back")
        with store.light_write() as light:
            store.notify(light, "pushbase_data", "many-light")
            store.notify(light, "pushbase_data", "many-end")
    assert heard == [f"many-{i}" for i in range(1201)] + ["many-light", "many-end"]


def _backend_pid(store: Store) -> int:
    with store.read() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


@pytest.mark.parametrize("transaction", ["read", "write", "light_write"])
def test_a_pooled_connection_the_server_ended_is_replaced_not_used(pg_store: Store, transaction: str) -> None:
    """A restart or ``pg_terminate_backend`` ends the pool's connections; the next transaction must get
    a live one (the check at checkout), not fail on the dead one."""
    import psycopg

    from .conftest import PG_URL

    pid = _backend_pid(pg_store)
    assert _backend_pid(pg_store) == pid, "the pool hands out its one idle connection again"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0] is True
        for _ in range(500):  # until the backend has gone (its farewell is then on the socket)
            if admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0] == 0:
                break
            threading.Event().wait(0.01)
    if transaction == "read":
        assert _backend_pid(pg_store) != pid
    elif transaction == "write":
        with pg_store.write() as conn:
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != pid
    else:
        with pg_store.light_write() as light:
            cursor = light.connection.dbapi_connection.cursor()
            cursor.execute("SELECT pg_backend_pid()")
            assert cursor.fetchone()[0] != pid


def test_the_sqlite_wal_starts_over_while_writes_never_pause(tmp_path) -> None:
    """A PASSIVE checkpoint never reaches the end of a WAL that writers keep appending to, and SQLite
    only reuses the WAL file from its start after one that did: without the checkpointer finishing
    holding the writer, the file grew by everything written, without end."""
    store = Store(f"sqlite:///{tmp_path / 'wal.db'}")
    checkpointer = store._checkpointer
    assert checkpointer is not None
    checkpointer.RESTART_FRAMES = 64  # a 256 KB WAL counts as long, so that the test writes little
    wal = tmp_path / "wal.db-wal"
    blob = b"x" * 60_000
    written = 0
    try:
        with store.write() as conn:
            conn.exec_driver_sql("CREATE TABLE scratch (id INTEGER PRIMARY KEY, body BLOB)")
        rounds_at_start = checkpointer.rounds
        # Write without a pause until the checkpointer has had many rounds and 24 MB went through.
        while checkpointer.rounds < rounds_at_start + 8 or written < 24_000_000:
            with store.write() as conn:
                conn.exec_driver_sql("INSERT INTO scratch (body) VALUES (?)", (blob,))
                conn.exec_driver_sql("DELETE FROM scratch WHERE id < (SELECT max(id) FROM scratch) - 8")
            written += len(blob)
        assert wal.stat().st_size < written / 3
    finally:
        store.close()


def test_postgresql_sessions_plan_for_ssd_unless_told_otherwise(pg_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from pushbase.errors import DatabaseUnavailable
    from pushbase.storage import pg_random_page_cost

    with pg_store.read() as conn:
        assert conn.exec_driver_sql("SHOW random_page_cost").scalar() == "1.1"
    monkeypatch.setenv("PUSHBASE_PG_RANDOM_PAGE_COST", "4")
    other = Store(pg_store.url)
    try:
        with other.read() as conn:
            assert conn.exec_driver_sql("SHOW random_page_cost").scalar() == "4"
    finally:
        other.close()
    monkeypatch.setenv("PUSHBASE_PG_RANDOM_PAGE_COST", "1; DROP TABLE pb_keys")
    with pytest.raises(DatabaseUnavailable):
        pg_random_page_cost()


def test_sqlite_booleans_read_back_as_json_booleans() -> None:
    from pushbase.storage import codecs

    decode = codecs.decoder("sqlite", "boolean")
    assert [decode(v) for v in (0, 1, None, 2, -1)] == [False, True, None, True, True]
    assert all(type(decode(v)) is bool for v in (0, 1, 2))


def test_writers_take_turns_so_none_waits_forever(store: Store) -> None:
    """Threads that write back to back must not keep the writer among themselves: another thread's
    write gets its turn (before: on SQLite it waited the pool's 120 s and failed)."""
    stop = threading.Event()
    counts = [0] * 4

    def write_back_to_back(slot: int) -> None:
        while not stop.is_set():
            with store.write() as conn:
                _INSERT_META.run(conn, {"k": f"busy{slot}-{counts[slot]}", "v": "1"})
            counts[slot] += 1

    busy = [threading.Thread(target=write_back_to_back, args=(i,), daemon=True) for i in range(len(counts))]
    for thread in busy:
        thread.start()
    try:
        for i in range(20):
            with store.light_write() if i % 2 else store.write() as conn:
                _INSERT_META.run(conn, {"k": f"turn{i}", "v": "1"})
    finally:
        stop.set()
        for thread in busy:
            thread.join(timeout=30)
    assert _count_meta(store, "turn19") == 1
    assert all(counts), counts  # and the busy writers all wrote too


def test_a_writer_that_cannot_get_its_turn_gives_up_with_a_clear_error() -> None:
    from pushbase.errors import DatabaseUnavailable
    from pushbase.storage.writer import WriterTurns

    turns = WriterTurns(timeout=0.2)
    release = threading.Event()
    entered = threading.Event()

    def hold() -> None:
        with turns.turn():
            entered.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert entered.wait(timeout=30)
    with pytest.raises(DatabaseUnavailable, match="busy"):
        with turns.turn():
            pass
    release.set()
    holder.join(timeout=30)
    with turns.turn():  # the one that gave up left no place behind: the turn is free
        pass
