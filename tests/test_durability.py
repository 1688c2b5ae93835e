"""Accepted jobs survive kill -9; old databases upgrade; the CLI's key contract."""
from __future__ import annotations

import time

import httpx
import sqlalchemy as sa

from pushbase.storage import Store, open_store, schema

from .conftest import admin_key, pushbase_cli


def test_keys_create_prints_the_key_alone_on_the_last_line(db_url):
    out = pushbase_cli("keys", "create", "--name", "erp", "--scope", "ingest:orders", "--scope", "read:orders_view", db=db_url)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("pb_") and " " not in key
    listed = pushbase_cli("keys", "list", db=db_url).stdout
    assert "erp" in listed and key not in listed
    bad = pushbase_cli("keys", "create", "--name", "x", "--scope", "superuser", db=db_url)
    assert bad.returncode != 0 and "scope" in bad.stderr


def test_accepted_jobs_survive_kill_9(db_url, server_factory):
    key = admin_key(db_url)
    headers = {"x-api-key": key}
    # The failpoint holds each load transaction open after writing its rows, so the kill lands mid-load;
    # every job goes to the background worker (small loads are otherwise loaded before the 202).
    server = server_factory(db_url, env={"PUSHBASE_FAILPOINT_LOAD_PAUSE": "1.5", "PUSHBASE_INLINE_LOAD_ROWS": "0"})
    cols = [{"name": "id", "type": "integer"}, {"name": "payload", "type": "string"}]
    assert httpx.post(server.url + "/api/datasets", json={"name": "big", "columns": cols, "unique_id": ["id"]}, headers=headers).status_code == 201
    job_ids = []
    for batch in range(10):
        rows = [{"id": batch * 2000 + i, "payload": "x" * 50} for i in range(2000)]
        if batch == 7:
            rows[5]["id"] = "broken"  # one job must end ErrorExit, and load nothing
        r = httpx.post(server.url + "/api/datasets/big/data", json=rows, headers=headers, timeout=60)
        assert r.status_code == 202
        job_ids.append(r.json()["jobId"])
    loading = None
    deadline = time.monotonic() + 60
    while loading is None and time.monotonic() < deadline:
        for job_id in job_ids:
            status = httpx.get(f"{server.url}/api/datasets/big/data/{job_id}/status", headers=headers).json()["status"]
            if status == "Loading":
                loading = job_id
                break
        time.sleep(0.02)
    assert loading is not None, "no job was caught mid-load"
    server.kill()

    restarted = server_factory(db_url)
    deadline = time.monotonic() + 120
    statuses: dict[str, dict] = {}
    while time.monotonic() < deadline:
        statuses = {j: httpx.get(f"{restarted.url}/api/datasets/big/data/{j}/status", headers=headers).json() for j in job_ids}
        if all(s["status"] in ("Complete", "ErrorExit", "TerminatedExit") for s in statuses.values()):
            break
        time.sleep(0.2)
    assert all(s["status"] in ("Complete", "ErrorExit", "TerminatedExit") for s in statuses.values()), statuses
    assert statuses[job_ids[7]]["status"] == "ErrorExit"
    complete = [j for j in job_ids if statuses[j]["status"] == "Complete"]
    assert len(complete) == 9
    for status in statuses.values():
        if status["status"] != "Complete":
            assert status["reason"]
    count = httpx.get(restarted.url + "/api/datasets/big", headers=headers).json()["row_count"]
    # Never half-loaded: the row count is exactly the complete jobs' rows.
    assert count == 2000 * len(complete)


def test_a_version_1_database_upgrades_in_place(db_url):
    store = Store(db_url)
    try:
        with store.write() as conn:
            schema.upgrade(conn, target=1)
            # Version 1 databases were made without the (dataset, status) index of version 3.
            conn.exec_driver_sql("DROP INDEX IF EXISTS pb_jobs_dataset_status")
        with store.read() as conn:
            assert schema.current_version(conn) == 1
            assert not sa.inspect(conn).has_table("pb_views")
    finally:
        store.close()
    key = admin_key(db_url)  # opening through the CLI upgrades
    assert key
    upgraded = open_store(db_url)
    try:
        with upgraded.read() as conn:
            assert schema.current_version(conn) == schema.SCHEMA_VERSION
            assert sa.inspect(conn).has_table("pb_views") and sa.inspect(conn).has_table("pb_pushes")
            assert "pb_jobs_dataset_status" in {i["name"] for i in sa.inspect(conn).get_indexes("pb_jobs")}
            assert conn.execute(sa.select(sa.func.count()).select_from(schema.keys)).scalar() == 1
    finally:
        upgraded.close()
