"""Pushes across real processes: kill -9 during a call, and several workers sharing pushes on PostgreSQL."""
from __future__ import annotations

import json
import random
import time
from collections import defaultdict

import httpx

from tests.conftest import Api, admin_key, pg_schema_url
from tests.receivers import Receiver
from tests.test_push_support import eventually, orders

FAST = {"PUSHBASE_SWEEP_SECONDS": "0.5", "PUSHBASE_PUSH_LEASE_SECONDS": "3", "PUSHBASE_RETRY_SCHEDULE": "0.2s,0.5s"}


def client_for(server, key: str) -> Api:
    return Api(httpx.Client(base_url=server.url, timeout=30), key)


def test_kill_9_during_a_held_call_resends_the_same_delivery(db_url, server_factory):
    with Receiver() as receiver:
        receiver.gate()
        server = server_factory(db_url, env=FAST)
        api = client_for(server, admin_key(db_url))
        api.post("/api/datasets", json={"name": "orders", "columns": [
            {"name": "order_id", "type": "integer"}, {"name": "last pushed", "type": "datetime"}], "unique_id": ["order_id"]})
        api.post("/api/views", json={"name": "to_push", "dataset": "orders", "filters": [{"field": "last pushed", "op": "is_empty"}]})
        r = api.post("/api/pushes", json={"name": "out", "view": "to_push", "url": receiver.url + "/hook",
                                          "log_time_field": "last pushed", "format": "json", "min_interval": 0})
        assert r.status_code == 201, r.text
        api.load("orders", [{"order_id": i} for i in (1, 2, 3)])
        assert receiver.wait_for(1, timeout=20), server.log()
        first = receiver.requests[0]

        server.kill()  # kill -9 while the call is held open
        restarted = server_factory(db_url, env=FAST)
        api = client_for(restarted, api.key)
        assert receiver.wait_for(2, timeout=20), restarted.log()
        second = receiver.requests[1]
        assert second.headers["webhook-id"] == first.headers["webhook-id"]
        assert second.body == first.body
        # Held again: nothing is stamped before the 2xx.
        assert all(row["last pushed"] is None for row in api.all_rows("/api/datasets/orders/rows"))

        receiver.respond(200)
        receiver.release()
        eventually(lambda: all(row["last pushed"] for row in api.all_rows("/api/datasets/orders/rows")), timeout=20)
        log = api.get("/api/pushes/out/deliveries").json()["deliveries"]
        assert len(log) == 1 and log[0]["status"] == "succeeded" and log[0]["webhook_id"] == first.headers["webhook-id"]
        assert len(receiver.requests) == 2


def test_postgresql_workers_share_pushes_and_survive_kills(pg_schema, server_factory):
    db = pg_schema_url(pg_schema)
    # A killed worker may hold an ingest job too: let its lease expire quickly.
    env = {**FAST, "PUSHBASE_LOG_LEVEL": "WARNING", "PUSHBASE_JOB_LEASE_SECONDS": "3"}
    api_server = server_factory(db, "--no-worker", env=env)
    workers = [server_factory(db, command="worker", env=env) for _ in range(3)]
    api = client_for(api_server, admin_key(db))
    names = ["a", "b", "c"]
    columns = [{"name": "order_id", "type": "integer"}, {"name": "customer", "type": "string"}, {"name": "total", "type": "number"}]
    columns += [{"name": f"pushed {n}", "type": "datetime"} for n in names]
    assert api.post("/api/datasets", json={"name": "orders", "columns": columns, "unique_id": ["order_id"]}).status_code == 201
    with Receiver() as receiver:
        for n in names:
            view = {"name": f"v_{n}", "dataset": "orders", "filters": [{"field": f"pushed {n}", "op": "is_empty"}],
                    "sort": [{"field": "order_id", "direction": "asc"}]}
            assert api.post("/api/views", json=view).status_code == 201
            push = {"name": f"p_{n}", "view": f"v_{n}", "url": f"{receiver.url}/{n}", "log_time_field": f"pushed {n}",
                    "format": "json", "min_interval": 0, "max_batch_rows": 7}
            assert api.post("/api/pushes", json=push).status_code == 201

        rng = random.Random(7)
        total = 0
        for round_ in range(12):
            batch = orders(*range(total + 1, total + 1 + rng.randint(5, 25)))
            total += len(batch)
            api.load("orders", batch)
            if round_ == 3:
                # Hold calls open, then kill two workers while they may be in the middle of them.
                receiver.gate()
                receiver.wait_for(len(receiver.requests) + 1, timeout=20)
                workers[0].kill()
                workers[1].kill()
                receiver.respond(200)
                receiver.release()
            if round_ == 7:
                workers.append(server_factory(db, command="worker", env=env))
                workers[2].kill()

        def complete() -> bool:
            rows = api.all_rows("/api/datasets/orders/rows")
            return len(rows) == total and all(row[f"pushed {n}"] for row in rows for n in names)

        eventually(complete, timeout=60, interval=0.2, message="every row stamped for every push")
        for n in names:
            calls = [r for r in receiver.requests if r.path == f"/{n}"]
            bodies: dict[str, set[bytes]] = defaultdict(set)
            for call in calls:
                bodies[call.headers["webhook-id"]].add(call.body)
            # A delivery re-sent after a kill is the same delivery: same id, same body.
            assert all(len(b) == 1 for b in bodies.values())
            by_delivery = [json.loads(next(iter(b))) for b in bodies.values()]
            ids = [row["order_id"] for rows in by_delivery for row in rows]
            # Every row went out, in exactly one delivery: batches were cut by one worker at a time.
            assert sorted(ids) == list(range(1, total + 1)), n
            assert all(len(rows) <= 7 for rows in by_delivery)
        for n in names:
            state = api.get(f"/api/pushes/p_{n}").json()["state"]
            assert state["status"] == "ok" and state["pending_deliveries"] == 0


def test_a_killed_workers_push_is_taken_over_by_another_on_the_host_before_its_lease_expires(pg_schema, server_factory):
    import psycopg

    db = pg_schema_url(pg_schema)
    # A long lease and a rare sweep: only noticing the dead holder can explain a prompt take-over.
    env = {"PUSHBASE_PUSH_LEASE_SECONDS": "300", "PUSHBASE_SWEEP_SECONDS": "300", "PUSHBASE_LOG_LEVEL": "WARNING"}
    api_server = server_factory(db, "--no-worker", env=env)
    workers = [server_factory(db, command="worker", env=env) for _ in range(2)]
    api = client_for(api_server, admin_key(db))
    api.post("/api/datasets", json={"name": "orders", "columns": [
        {"name": "order_id", "type": "integer"}, {"name": "last pushed", "type": "datetime"}], "unique_id": ["order_id"]})
    api.post("/api/views", json={"name": "to_push", "dataset": "orders", "filters": [{"field": "last pushed", "op": "is_empty"}]})
    with Receiver() as receiver:
        receiver.gate()
        r = api.post("/api/pushes", json={"name": "out", "view": "to_push", "url": receiver.url + "/hook",
                                          "log_time_field": "last pushed", "format": "json", "min_interval": 0})
        assert r.status_code == 201, r.text
        api.load("orders", [{"order_id": i} for i in (1, 2, 3)])
        assert receiver.wait_for(1, timeout=20)
        first = receiver.requests[0]
        with psycopg.connect(db.split("?")[0], options=f"-csearch_path={pg_schema}") as conn:
            holder = conn.execute("select lease_owner from pb_pushes where name = 'out'").fetchone()[0]
        holding = next(w for w in workers if f":{w.proc.pid}:" in holder)
        # Let the other worker find the push leased (it retries a claim that met the row lock within
        # a second) and settle into waiting for the holder before the holder dies.
        time.sleep(3)
        holding.kill()
        receiver.respond(200)
        receiver.release()
        # Re-sent by the other worker long before the 300 s lease would have let it.
        assert receiver.wait_for(2, timeout=30), [w.log() for w in workers]
        assert receiver.requests[1].headers["webhook-id"] == first.headers["webhook-id"]
        eventually(lambda: all(row["last pushed"] for row in api.all_rows("/api/datasets/orders/rows")), timeout=20)


def test_a_killed_process_not_yet_reaped_counts_as_gone():
    import signal
    import socket
    import subprocess

    from pushbase.leases import owner_is_dead, owner_is_local

    child = subprocess.Popen(["sleep", "60"])
    owner = f"{socket.gethostname()}:{child.pid}:push-test"
    try:
        assert owner_is_local(owner) and not owner_is_dead(owner)
        child.send_signal(signal.SIGKILL)
        # A zombie until its parent (this test) waits for it: the lease holder is gone all the same.
        eventually(lambda: owner_is_dead(owner), timeout=10)
    finally:
        child.wait(10)
    assert owner_is_dead(owner)
    assert not owner_is_local("elsewhere:1:push-x") and not owner_is_dead("elsewhere:1:push-x")


def _children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them."""
    import glob

    found = []
    for listing in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(listing) as f:
                found += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_serve_on_postgresql_runs_its_worker_as_a_child_that_comes_back_and_ends_with_it(pg_schema, server_factory):
    import os
    import signal

    db = pg_schema_url(pg_schema)
    server = server_factory(db, env={"PUSHBASE_LOG_LEVEL": "WARNING"})
    # The port opens once the worker works: nothing accepted waits for a worker still starting.
    assert "Pushbase worker running" in server.log()
    (worker,) = _children(server.proc.pid)
    with open(f"/proc/{worker}/cmdline", "rb") as f:
        cmdline = f.read()
    assert b"worker" in cmdline and b"postgresql://" not in cmdline  # the URL goes in the environment
    with Receiver() as receiver:  # the child does the pushing
        api = client_for(server, admin_key(db))
        api.post("/api/datasets", json={"name": "orders", "columns": [
            {"name": "order_id", "type": "integer"}, {"name": "last pushed", "type": "datetime"}], "unique_id": ["order_id"]})
        api.post("/api/views", json={"name": "to_push", "dataset": "orders", "filters": [{"field": "last pushed", "op": "is_empty"}]})
        api.post("/api/pushes", json={"name": "out", "view": "to_push", "url": receiver.url + "/hook", "log_time_field": "last pushed",
                                      "format": "json", "min_interval": 0})
        api.load("orders", [{"order_id": 1}])
        assert receiver.wait_for(1, timeout=20), server.log()

        os.kill(worker, signal.SIGKILL)
        eventually(lambda: [p for p in _children(server.proc.pid) if p != worker and _alive(p)], timeout=20,
                   message="a worker process that dies is started again")
        (again,) = [p for p in _children(server.proc.pid) if _alive(p)]
        api.load("orders", [{"order_id": 2}])
        assert receiver.wait_for(2, timeout=20), server.log()

        server.kill()  # kill -9: the kernel ends the child too
        eventually(lambda: not _alive(again), timeout=20, message="the worker process ends with the server")


def test_serve_on_postgresql_can_keep_its_worker_in_process(pg_schema, server_factory):
    server = server_factory(pg_schema_url(pg_schema), env={"PUSHBASE_WORKER_PROCESS": "0"})  # up: /healthz answered
    assert _children(server.proc.pid) == []


def test_a_worker_process_asked_to_stop_is_not_started_again(pg_schema, server_factory):
    import os
    import signal
    import time

    server = server_factory(pg_schema_url(pg_schema), env={"PUSHBASE_LOG_LEVEL": "WARNING"})
    (worker,) = _children(server.proc.pid)
    os.kill(worker, signal.SIGTERM)  # e.g. a service manager stopping the whole group
    eventually(lambda: "not starting it again" in server.log(), timeout=20, message="the server saw it stop")
    time.sleep(1.5)  # longer than the restart delay: a restart would have happened by now
    assert [p for p in _children(server.proc.pid) if _alive(p)] == []
