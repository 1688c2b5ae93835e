"""The inbound Push API: jobs, statuses, all-or-nothing rules, bad input, concurrency, Qrvey shapes."""
from __future__ import annotations

import concurrent.futures
import time

import orjson
import pytest

from pushbase.keys import create_key

COLS = [
    {"name": "order_id", "type": "integer"},
    {"name": "customer", "type": "string"},
    {"name": "total", "type": "number"},
    {"name": "paid", "type": "boolean"},
    {"name": "day", "type": "date"},
    {"name": "at", "type": "datetime"},
    {"name": "meta", "type": "json"},
]


@pytest.fixture
def background_jobs(monkeypatch):
    """Every load goes through the background worker, as a payload over the inline limit would."""
    from pushbase import ingest

    monkeypatch.setattr(ingest, "INLINE_LOAD_ROWS", 0)


@pytest.fixture
def orders(api):
    r = api.post("/api/datasets", json={"name": "orders", "columns": COLS, "unique_id": ["order_id"]})
    assert r.status_code == 201, r.text
    return api


def wait_job(api, dataset: str, job_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        doc = api.get(f"/api/datasets/{dataset}/data/{job_id}/status").json()
        if doc["status"] in ("Complete", "ErrorExit", "TerminatedExit"):
            return doc
        time.sleep(0.05)
    raise AssertionError("job did not end")


def test_202_job_id_then_status_complete(orders):
    r = orders.post("/api/datasets/orders/data", json=[{"order_id": 1, "customer": "a"}, {"order_id": 2}])
    assert r.status_code == 202
    job_id = r.json()["jobId"]
    doc = wait_job(orders, "orders", job_id)
    assert doc["status"] == "Complete" and doc["operation"] == "load"
    assert (doc["rows_received"], doc["rows_inserted"], doc["rows_updated"]) == (2, 2, 0)


def test_an_upsert_of_many_rows_updates_each_with_its_own_values(orders):
    # Updates go many rows per statement: more than one statement's worth, and a remainder.
    orders.load("orders", [{"order_id": i, "customer": f"c{i}"} for i in range(1, 251)])
    before = {r["order_id"]: r for r in orders.all_rows("/api/datasets/orders/rows", limit=1000)}
    changed = [{"order_id": i, "customer": f"new {i}", "total": i / 3, "paid": i % 2 == 0, "day": "2026-02-28", "at": None,
                **({"customer": None} if i == 7 else {})} for i in range(2, 251)]
    doc = orders.load("orders", [{"order_id": 1, "customer": "c1"}, *changed])
    assert (doc["rows_inserted"], doc["rows_updated"], doc["rows_unchanged"]) == (0, 249, 1), doc
    after = {r["order_id"]: r for r in orders.all_rows("/api/datasets/orders/rows", limit=1000)}
    for row in changed:
        got = after[row["order_id"]]
        assert {k: got[k] for k in row} == row, got
        assert got["_id"] == before[row["order_id"]]["_id"] and got["last modified [auto]"] > before[row["order_id"]]["last modified [auto]"]
    assert after[1] == before[1]


def test_single_object_and_ndjson_bodies(orders):
    assert orders.load("orders", {"order_id": 1})["rows_inserted"] == 1
    body = b'{"order_id": 2}\n\n{"order_id": 3, "paid": true}\n'
    r = orders.post("/api/datasets/orders/data?wait=true", content=body, headers={"content-type": "application/x-ndjson"})
    assert r.json()["rows_inserted"] == 2
    assert len(orders.all_rows("/api/datasets/orders/rows")) == 3


def test_upsert_on_unique_id_and_unchanged_rows_keep_last_modified(orders):
    orders.load("orders", [{"order_id": 1, "customer": "a"}, {"order_id": 2, "customer": "b"}])
    before = {r["order_id"]: r for r in orders.all_rows("/api/datasets/orders/rows")}
    doc = orders.load("orders", [{"order_id": 1, "customer": "A"}, {"order_id": 2, "customer": "b"}, {"order_id": 3}])
    assert (doc["rows_inserted"], doc["rows_updated"], doc["rows_unchanged"]) == (1, 1, 1)
    after = {r["order_id"]: r for r in orders.all_rows("/api/datasets/orders/rows")}
    assert after[1]["customer"] == "A"
    assert after[1]["last modified [auto]"] > before[1]["last modified [auto]"]
    assert after[1]["created [auto]"] == before[1]["created [auto]"]
    assert after[2]["last modified [auto]"] == before[2]["last modified [auto]"]
    assert after[1]["_id"] == before[1]["_id"]


def test_upserts_compare_json_values_as_json(orders):
    # A stored JSON string sent again is unchanged (on PostgreSQL it failed the job); keys in another
    # order are the same value; true replacing 1 is a change (Python's == calls them equal).
    rows = [{"order_id": 1, "meta": "hello"}, {"order_id": 2, "meta": {"a": 1, "b": 2}}, {"order_id": 3, "meta": {"a": 1}}]
    assert orders.load("orders", rows)["status"] == "Complete"
    again = [{"order_id": 1, "meta": "hello"}, {"order_id": 2, "meta": {"b": 2, "a": 1}}, {"order_id": 3, "meta": {"a": True}}]
    doc = orders.load("orders", again)
    assert doc["status"] == "Complete", doc
    assert (doc["rows_inserted"], doc["rows_updated"], doc["rows_unchanged"]) == (0, 1, 2), doc
    assert {r["order_id"]: r["meta"] for r in orders.all_rows("/api/datasets/orders/rows")}[3]["a"] is True


def test_without_unique_id_rows_append(api):
    api.post("/api/datasets", json={"name": "log", "columns": [{"name": "msg", "type": "string"}]})
    api.load("log", [{"msg": "a"}])
    api.load("log", [{"msg": "a"}])
    assert len(api.all_rows("/api/datasets/log/rows")) == 2


def test_type_mismatch_fails_the_whole_job_with_named_errors(orders):
    orders.load("orders", [{"order_id": 1, "customer": "keep"}])
    doc = orders.load(
        "orders",
        [
            {"order_id": 2, "customer": "fine"},
            {"order_id": 3, "total": "12.5"},
            {"order_id": 4, "day": "01/02/2024"},
            {"order_id": 5, "paid": "yes"},
        ],
    )
    assert doc["status"] == "ErrorExit"
    errors = {(e["row"], e["column"]): e for e in doc["errors"]}
    assert errors[(1, "total")]["expected"] == "number" and errors[(1, "total")]["value"] == "12.5"
    assert (2, "day") in errors and (3, "paid") in errors
    rows = orders.all_rows("/api/datasets/orders/rows")
    assert [r["order_id"] for r in rows] == [1]


@pytest.mark.parametrize(
    "payload, column, fragment",
    [
        ([{"customer": "no id"}], "order_id", "unique-id value is required"),
        ([{"order_id": 1}, {"order_id": 1}], "order_id", "repeats row 0"),
        ([{"order_id": 1, "colour": "red"}], "colour", "no column"),
        ([{"order_id": 1.5}], "order_id", "integer"),
        ([{"order_id": True}], "order_id", "integer"),
        ([{"order_id": 1, "at": "yesterday"}], "at", "ISO 8601"),
        (["not an object"], None, "JSON object"),
    ],
)
def test_job_rules(orders, payload, column, fragment):
    doc = orders.load("orders", payload)
    assert doc["status"] == "ErrorExit", doc
    assert any(e["column"] == column and fragment in e["message"] for e in doc["errors"]), doc["errors"]
    assert orders.all_rows("/api/datasets/orders/rows") == []


def test_a_repeated_unique_id_is_named_among_other_problems(orders):
    doc = orders.load("orders", [{"order_id": 1}, {"order_id": 1}, {"order_id": 3, "total": "x"}, {"order_id": "y"}])
    assert doc["status"] == "ErrorExit"
    problems = {(e["row"], e["column"]) for e in doc["errors"]}
    assert problems == {(1, "order_id"), (2, "total"), (3, "order_id")}, doc["errors"]
    assert orders.all_rows("/api/datasets/orders/rows") == []


def test_accepted_coercions(orders):
    doc = orders.load("orders", [{"order_id": 1.0, "total": 3, "at": "2024-05-01T12:00:00+02:00", "day": "2024-05-01", "meta": {"a": [1]}}])
    assert doc["status"] == "Complete", doc
    row = orders.get("/api/datasets/orders/rows").json()["rows"][0]
    assert row["order_id"] == 1 and row["total"] == 3.0
    assert row["at"] == "2024-05-01T10:00:00.000000Z"
    assert row["meta"] == {"a": [1]}


def test_ignore_unknown_fields_option(orders):
    orders.patch("/api/datasets/orders", json={"ignore_unknown_fields": True})
    assert orders.load("orders", [{"order_id": 1, "colour": "red"}])["status"] == "Complete"


def test_delete_by_unique_id_and_delete_all(orders):
    orders.load("orders", [{"order_id": i} for i in range(1, 6)])
    r = orders.post("/api/datasets/orders/data/delete?wait=true", json=[{"order_id": 2}, {"order_id": 4}, {"order_id": 99}])
    doc = r.json()
    assert doc["status"] == "Complete" and doc["operation"] == "delete" and doc["rows_deleted"] == 2
    assert [r["order_id"] for r in orders.all_rows("/api/datasets/orders/rows")] == [1, 3, 5]
    bad = orders.post("/api/datasets/orders/data/delete?wait=true", json=[{"order_id": "x"}]).json()
    assert bad["status"] == "ErrorExit" and bad["errors"][0]["column"] == "order_id"
    doc = orders.post("/api/datasets/orders/data/delete-all?wait=true").json()
    assert doc["status"] == "Complete" and doc["rows_deleted"] == 3
    assert orders.get("/api/datasets/orders").json()["row_count"] == 0


def test_delete_needs_a_unique_id(api):
    api.post("/api/datasets", json={"name": "log", "columns": [{"name": "msg", "type": "string"}]})
    doc = api.post("/api/datasets/log/data/delete?wait=true", json=[{"msg": "a"}]).json()
    assert doc["status"] == "ErrorExit" and "unique id" in doc["reason"]


@pytest.mark.parametrize(
    "body, content_type, status, code",
    [
        (b'[{"order_id": 1,', "application/json", 400, "malformed_json"),
        (b"\xff\xfe[{}]", "application/json", 400, "malformed_json"),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400, "malformed_json"),
        (b"", "application/json", 400, "empty_body"),
        (b"42", "application/json", 400, "not_rows"),
        (b"<xml/>", "application/xml", 415, "unsupported_media_type"),
        (b'{"order_id": 1}\nnope\n', "application/x-ndjson", 400, "malformed_json"),
    ],
)
def test_bad_bodies_are_clear_4xx(orders, body, content_type, status, code):
    r = orders.post("/api/datasets/orders/data", content=body, headers={"content-type": content_type})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_body_over_the_limit_is_413_and_loses_nothing(orders):
    orders.load("orders", [{"order_id": 1}])
    big = orjson.dumps([{"order_id": i, "customer": "x" * 1000} for i in range(3000)])
    r = orders.post("/api/datasets/orders/data", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert len(orders.all_rows("/api/datasets/orders/rows")) == 1


def test_odd_unicode_and_huge_strings_round_trip(orders):
    odd = "naïve ☃ \u202e rtl \U0001f600 \ud7ff 'quote\" --"
    huge = "z" * 500_000
    doc = orders.load("orders", [{"order_id": 1, "customer": odd}, {"order_id": 2, "customer": huge}])
    assert doc["status"] == "Complete", doc
    rows = {r["order_id"]: r["customer"] for r in orders.all_rows("/api/datasets/orders/rows")}
    assert rows[1] == odd and rows[2] == huge
    # PostgreSQL cannot store U+0000: refused on both engines, with the row and column named.
    nul = orders.load("orders", [{"order_id": 3, "customer": "a\x00b"}, {"order_id": 4, "meta": {"k": "\x00"}}])
    assert nul["status"] == "ErrorExit"
    assert {(e["row"], e["column"]) for e in nul["errors"]} == {(0, "customer"), (1, "meta")}


def test_unknown_dataset_and_job(orders):
    assert orders.post("/api/datasets/nope/data", json=[{}]).status_code == 404
    r = orders.get("/api/datasets/orders/data/job_nope/status")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_hundred_concurrent_clients(orders):
    def push(n: int) -> str:
        rows = [{"order_id": n * 100 + i, "customer": f"c{n}"} for i in range(20)]
        r = orders.post("/api/datasets/orders/data", json=rows)
        assert r.status_code == 202, r.text
        return r.json()["jobId"]

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        job_ids = list(pool.map(push, range(100)))
    assert len(set(job_ids)) == 100
    for job_id in job_ids:
        assert wait_job(orders, "orders", job_id)["status"] == "Complete"
    assert orders.get("/api/datasets/orders").json()["row_count"] == 2000


def test_ingest_key_reads_status_but_not_other_datasets(orders, store):
    key, _ = create_key(store, "erp", ["ingest:orders"])
    scoped = orders.with_key(key)
    job_id = scoped.post("/api/datasets/orders/data", json=[{"order_id": 1}]).json()["jobId"]
    assert wait_job(scoped, "orders", job_id)["status"] == "Complete"


def test_qrvey_compatible_postdata_and_status(orders):
    r = orders.post("/compat/qrvey/postdata", json={"datasetId": "orders", "documentUpdateMethod": "upsert", "data": [{"order_id": 1}, {"order_id": 2}]})
    assert r.status_code == 202
    job_id = r.json()["jobId"]
    wait_job(orders, "orders", job_id)
    doc = orders.get(f"/compat/qrvey/{job_id}/status").json()
    assert orders.get(f"/compat/qrvey/postdata/{job_id}/status").json() == doc
    assert doc["statusJob"]["jobId"] == job_id and doc["statusJob"]["status"] == "Complete"
    assert doc["statusJob"]["approximatePercentComplete"] == 100 and isinstance(doc["statusJob"]["runtime"], int)
    stats = doc["jobCompletionStatistics"]
    assert (stats["recordsRead"], stats["recordsSuccessful"], stats["recordsFailed"], stats["recordsAdded"]) == (2, 2, 0, 2)
    bad = orders.post("/compat/qrvey/postdata", json={"datasetId": "orders", "data": [{"order_id": "x"}]}).json()["jobId"]
    wait_job(orders, "orders", bad)
    failed = orders.get(f"/compat/qrvey/{bad}/status").json()
    assert failed["statusJob"]["status"] == "ErrorExit" and failed["jobCompletionStatistics"]["recordsFailed"] == 1


def test_large_payloads_round_trip_whatever_their_size(orders):
    """Rows go to SQLite many per INSERT statement: sizes around the group size, typed and general path."""
    for start, count in ((0, 1), (1, 99), (100, 101), (201, 1234)):
        rows = [
            {"order_id": start + i, "customer": f"c{start + i}", "total": i / 4, "paid": i % 2 == 0, "day": "2024-05-01",
             "at": "2024-05-01T12:00:00Z", "meta": {"i": i}}
            for i in range(count)
        ]
        doc = orders.load("orders", rows)
        assert doc["status"] == "Complete" and doc["rows_inserted"] == count, doc
    # The general path (a naive datetime, an integer given as 1.0) loads the same way.
    doc = orders.load("orders", [{"order_id": 2000 + i, "total": 1.0, "at": "2024-05-01T12:00:00"} for i in range(150)])
    assert doc["status"] == "Complete" and doc["rows_inserted"] == 150, doc
    rows = {r["order_id"]: r for r in orders.all_rows("/api/datasets/orders/rows", limit=1000)}
    assert len(rows) == 1435 + 150
    assert rows[1300]["customer"] == "c1300" and rows[1300]["meta"] == {"i": 1099} and rows[1300]["paid"] is False
    assert rows[1300]["at"] == "2024-05-01T12:00:00.000000Z" and rows[2149]["at"] == "2024-05-01T12:00:00.000000Z"


def test_a_payload_that_breaks_a_rule_is_recorded_ended_at_once(orders):
    r = orders.post("/api/datasets/orders/data", json=[{"order_id": 1}, {"order_id": "two"}])
    assert r.status_code == 202
    # Checked before the 202: the job is already ErrorExit, with the row, column, type and value named.
    doc = orders.get(f"/api/datasets/orders/data/{r.json()['jobId']}/status").json()
    assert doc["status"] == "ErrorExit" and doc["rows_received"] == 2
    assert doc["errors"] == [{"row": 1, "column": "order_id", "message": "expected an integer", "value": "two", "expected": "integer"}]
    assert orders.all_rows("/api/datasets/orders/rows") == []


def test_handed_off_job_loads_in_one_transaction_and_shows_loading(store, monkeypatch, background_jobs):
    from pushbase import datasets, ingest, loading

    dataset = datasets.create_dataset(store, {"name": "orders", "columns": COLS, "unique_id": ["order_id"]})
    body = orjson.dumps([{"order_id": 1, "customer": "a"}])
    payload = ingest.prepare_payload(store, dataset, "load", body, "application/json")
    job_id, _ = ingest.accept_job(store, dataset, "load", payload, body, "application/json")
    assert ingest.job_status(store, job_id)["status"] == "Initializing"
    seen = []
    write_rows = loading.write_rows

    def spy(*args, **kwargs):
        seen.append(ingest.job_status(store, job_id)["status"])
        return write_rows(*args, **kwargs)

    monkeypatch.setattr(loading, "write_rows", spy)
    doc = ingest.run_next_job(store, "test-owner")
    assert seen == ["Loading"]
    assert doc["status"] == "Complete" and doc["rows_inserted"] == 1 and doc["started_at"]


def test_handed_off_job_is_checked_again_when_columns_were_added(store, background_jobs):
    from pushbase import datasets, ingest

    dataset = datasets.create_dataset(store, {"name": "orders", "columns": COLS, "unique_id": ["order_id"]})
    body = orjson.dumps([{"order_id": 1, "customer": "a"}])
    job_id, _ = ingest.accept_job(store, dataset, "load", ingest.prepare_payload(store, dataset, "load", body, "application/json"), body, "application/json")
    datasets.update_dataset(store, "orders", {"add_columns": [{"name": "region", "type": "string"}]})
    doc = ingest.run_next_job(store, "test-owner", job_id)
    assert doc["status"] == "Complete" and doc["rows_inserted"] == 1, doc


def test_a_completed_job_drops_its_body_in_its_final_commit(store, background_jobs):
    import sqlalchemy as sa

    from pushbase import datasets, ingest
    from pushbase.storage.schema import jobs

    dataset = datasets.create_dataset(store, {"name": "orders", "columns": COLS, "unique_id": ["order_id"]})
    body = orjson.dumps([{"order_id": 1}])
    job_id, _ = ingest.accept_job(store, dataset, "load", ingest.prepare_payload(store, dataset, "load", body, "application/json"), body, "application/json")
    with store.read() as conn:
        assert conn.execute(sa.select(jobs.c.body).where(jobs.c.id == job_id)).scalar() == body
    assert ingest.run_next_job(store, "test-owner")["status"] == "Complete"
    with store.read() as conn:
        assert conn.execute(sa.select(jobs.c.body).where(jobs.c.id == job_id)).scalar() is None
    if store.dialect == "sqlite":
        # Freed body pages are reused, not zeroed page by page (secure_delete=FAST is 2).
        with store.write() as conn:
            assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 2


def test_upsert_finds_existing_rows_inside_and_outside_the_payload_key_range(orders):
    orders.load("orders", [{"order_id": 10, "customer": "a"}, {"order_id": 30, "customer": "c"}])
    # 20 falls between stored keys without existing; 30 exists; 40 is beyond every stored key.
    doc = orders.load("orders", [{"order_id": 20, "customer": "b"}, {"order_id": 30, "customer": "C"}, {"order_id": 40}])
    assert (doc["rows_inserted"], doc["rows_updated"], doc["rows_unchanged"]) == (2, 1, 0), doc
    doc = orders.load("orders", [{"order_id": 50}, {"order_id": 60}])
    assert (doc["rows_inserted"], doc["rows_updated"]) == (2, 0), doc
    rows = {r["order_id"]: r["customer"] for r in orders.all_rows("/api/datasets/orders/rows")}
    assert rows == {10: "a", 20: "b", 30: "C", 40: None, 50: None, 60: None}


def test_postgresql_stores_job_bodies_uncompressed(pg_store):
    import sqlalchemy as sa

    with pg_store.read() as conn:
        storage = conn.execute(sa.text("SELECT attstorage FROM pg_attribute WHERE attrelid = 'pb_jobs'::regclass AND attname = 'body'")).scalar()
    assert storage == "e"


def test_upsert_on_text_ids_whatever_their_collation_order(api):
    cols = [{"name": "code", "type": "string"}, {"name": "v", "type": "integer"}]
    api.post("/api/datasets", json={"name": "codes", "columns": cols, "unique_id": ["code"]})
    api.load("codes", [{"code": "a", "v": 1}, {"code": "B", "v": 1}, {"code": "é", "v": 1}])
    # Python orders "B" < "a" < "é"; a database collation may not: every existing row must still be found.
    doc = api.load("codes", [{"code": "B", "v": 2}, {"code": "a", "v": 2}, {"code": "é", "v": 2}, {"code": "Z", "v": 2}])
    assert doc["status"] == "Complete", doc
    assert (doc["rows_inserted"], doc["rows_updated"]) == (1, 3), doc


def test_handoff_is_bounded_and_drops_stale_entries(monkeypatch):
    from pushbase import ingest

    handoff = ingest._Handoff(max_rows=10, max_jobs=5)
    handoff.put("a", ingest.Prepared(6))
    handoff.put("b", ingest.Prepared(6))  # does not fit: that job will be read from its stored body
    assert handoff.take("b") is None and handoff.take("a").count == 6
    handoff.put("old", ingest.Prepared(8))
    monkeypatch.setattr(ingest._Handoff, "STALE_SECONDS", -1.0)  # everything is old now
    handoff.put("new", ingest.Prepared(8))
    assert handoff.take("old") is None and handoff.take("new").count == 8


def test_the_202_tells_the_status_the_job_was_recorded_with(orders, monkeypatch):
    from pushbase import ingest

    bad = orders.post("/api/datasets/orders/data", json=[{"order_id": "x"}])
    assert bad.status_code == 202 and bad.json()["status"] == "ErrorExit", bad.text
    assert orders.get(f"/api/datasets/orders/data/{bad.json()['jobId']}/status").json()["status"] == "ErrorExit"
    # A small load is loaded before the answer: the job is already Complete, its rows readable.
    small = orders.post("/api/datasets/orders/data", json=[{"order_id": 1}])
    assert small.status_code == 202 and small.json()["status"] == "Complete", small.text
    doc = orders.get(f"/api/datasets/orders/data/{small.json()['jobId']}/status").json()
    assert doc["status"] == "Complete" and doc["rows_inserted"] == 1
    assert [r["order_id"] for r in orders.all_rows("/api/datasets/orders/rows")] == [1]
    # Over the limit, the job waits for the background worker.
    monkeypatch.setattr(ingest, "INLINE_LOAD_ROWS", 2)
    big = orders.post("/api/datasets/orders/data", json=[{"order_id": 2}, {"order_id": 3}, {"order_id": 4}])
    assert big.status_code == 202 and big.json()["status"] == "Initializing", big.text
    assert wait_job(orders, "orders", big.json()["jobId"])["rows_inserted"] == 3


def test_a_small_load_waits_its_turn_behind_an_earlier_job_of_its_dataset(store, monkeypatch):
    """Jobs of one dataset load in the order they were accepted: a small load accepted while an earlier
    job waits is not loaded at once, or the earlier job would overwrite the newer values."""
    from pushbase import dataset_rows, datasets, ingest

    dataset = datasets.create_dataset(store, {"name": "orders", "columns": COLS, "unique_id": ["order_id"]})
    other = datasets.create_dataset(store, {"name": "others", "columns": COLS, "unique_id": ["order_id"]})

    def accept(target, rows):
        body = orjson.dumps(rows)
        return ingest.accept_job(store, target, "load", ingest.prepare_payload(store, target, "load", body, "application/json"), body, "application/json")

    monkeypatch.setattr(ingest, "INLINE_LOAD_ROWS", 1)
    first, status = accept(dataset, [{"order_id": 1, "customer": "old"}, {"order_id": 2, "customer": "old"}])
    assert status == "Initializing"
    monkeypatch.setattr(ingest, "INLINE_LOAD_ROWS", 20_000)
    second, status = accept(dataset, [{"order_id": 1, "customer": "new"}])
    assert status == "Initializing", "loaded before the earlier job of its dataset"
    assert accept(other, [{"order_id": 1, "customer": "elsewhere"}])[1] == "Complete"  # another dataset: at once
    assert ingest.run_next_job(store, "test-owner")["jobId"] == first
    assert ingest.run_next_job(store, "test-owner")["jobId"] == second
    rows = dataset_rows.list_rows(store, "orders", limit=None, after=None)["rows"]
    assert {r["order_id"]: r["customer"] for r in rows} == {1: "new", 2: "old"}


LONG = 123456789012345678901234567890  # beyond 64 bits: JSON allows it, a float cannot hold it exactly


def _post_raw(api, body: bytes, content_type: str = "application/json") -> dict:
    r = api.post("/api/datasets/orders/data?wait=true", content=body, headers={"content-type": content_type})
    assert r.status_code in (200, 202), r.text
    return r.json()


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
def test_a_json_value_with_an_integer_beyond_64_bits_is_refused_not_changed(orders, content_type):
    """Such a value was stored and then read back as 1.2345678901234568e29: now the job fails, naming it."""
    body = b'{"order_id": 1, "meta": {"n": %d, "ok": 1}}' % LONG
    doc = _post_raw(orders, body + b"\n" if content_type.endswith("ndjson") else body, content_type)
    assert doc["status"] == "ErrorExit" and doc["rows_inserted"] == 0
    [error] = doc["errors"]
    assert error["row"] == 0 and error["column"] == "meta" and str(LONG) in error["message"]
    assert orders.get("/api/datasets/orders/rows").json()["rows"] == []


def test_integers_at_the_64_bit_edge_and_long_digit_strings_in_json_round_trip_exactly(orders):
    """The edge values are kept; a 25-digit string (not a number) takes the careful path and loads."""
    meta = {"max": 2**63 - 1, "min": -(2**63), "text": str(LONG), "list": [str(LONG), 2**63 - 1]}
    doc = _post_raw(orders, orjson.dumps([{"order_id": 1, "meta": meta}]))
    assert doc["status"] == "Complete", doc
    [row] = orders.get("/api/datasets/orders/rows").json()["rows"]
    assert row["meta"] == meta


def test_an_integer_column_names_the_long_value_exactly(orders):
    doc = _post_raw(orders, b'[{"order_id": %d}]' % LONG)
    assert doc["status"] == "ErrorExit"
    [error] = doc["errors"]
    assert error["column"] == "order_id" and error["value"] == str(LONG), error  # was 1.2345678901234568e+29


def test_a_long_integer_in_a_number_column_is_the_nearest_number(orders):
    doc = _post_raw(orders, b'[{"order_id": 1, "total": %d}]' % LONG)
    assert doc["status"] == "Complete", doc
    [row] = orders.get("/api/datasets/orders/rows").json()["rows"]
    assert row["total"] == float(LONG)


def test_patching_a_json_value_with_a_long_integer_is_a_422_naming_it(orders):
    assert orders.load("orders", [{"order_id": 1, "meta": {"n": 1}}])["status"] == "Complete"
    [row] = orders.get("/api/datasets/orders/rows").json()["rows"]
    r = orders.patch(f"/api/datasets/orders/rows/{row['_id']}", content=b'{"meta": {"n": %d}}' % LONG,
                     headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert str(LONG) in r.text
    assert orders.get("/api/datasets/orders/rows").json()["rows"][0]["meta"] == {"n": 1}


def test_the_waiting_job_check_of_a_small_load_reads_only_its_datasets_unfinished_jobs(tmp_path):
    """Asked under the write lock by every small load: it must not walk every job the dataset ever had
    (SQLite's plan; PostgreSQL plans it by its statistics)."""
    from pushbase import ingest
    from pushbase.storage import open_store

    store = open_store(str(tmp_path / "plan.db"))
    try:
        with store.read() as conn:
            sql = ingest._UNFINISHED_JOB_OF_DATASET.params(dataset_id=1).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    finally:
        store.close()
    assert "pb_jobs_dataset_status" in plan, plan


def test_postgresql_accepts_one_job_of_a_dataset_at_a_time(pg_store):
    """A small load accepted while another job of its dataset is being accepted (not yet committed) must
    wait for that acceptance: else it would not see the job, load at once, and be overwritten when the
    earlier-accepted job loads after it."""
    import threading

    import sqlalchemy as sa

    from pushbase import datasets, ingest
    from pushbase.storage.schema import jobs

    store = pg_store
    dataset = datasets.create_dataset(store, {"name": "orders", "columns": COLS, "unique_id": ["order_id"]})
    inserted, release = threading.Event(), threading.Event()

    def earlier_acceptance() -> None:  # what accept_job's background path does, held open
        with store.write() as conn:
            store.lock_dataset_acceptance(conn, dataset.id)
            conn.execute(jobs.insert(), {"id": "job_earlier", "dataset_id": dataset.id, "dataset_name": "orders", "operation": "load",
                                         "status": "Initializing", "content_type": "application/json", "body": b"[]", "source": "test",
                                         "errors": [], "created_at": ingest.utc_now()})
            inserted.set()
            release.wait(60)

    holder = threading.Thread(target=earlier_acceptance)
    holder.start()
    assert inserted.wait(60)
    outcome: list[tuple[str, str]] = []
    body = orjson.dumps([{"order_id": 1, "customer": "later"}])
    later = threading.Thread(target=lambda: outcome.append(
        ingest.accept_job(store, dataset, "load", ingest.prepare_payload(store, dataset, "load", body, "application/json"), body, "application/json")))
    later.start()
    try:
        waiting = 0
        for _ in range(600):  # until the later acceptance waits for the earlier one's lock
            with store.read() as conn:
                waiting = conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).scalar()
            if waiting:
                break
            later.join(0.05)
        assert waiting, "the later acceptance did not wait for the earlier one"
    finally:
        release.set()
        holder.join(60)
        later.join(60)
    assert outcome and outcome[0][1] == "Initializing", outcome  # behind the earlier job, not loaded at once
