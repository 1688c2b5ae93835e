"""Datasets over the HTTP API, on SQLite and PostgreSQL: samples, column lists, unique ids, PATCH, keys."""
from __future__ import annotations

import sqlalchemy as sa

from pushbase.keys import create_key

SAMPLE = {
    "order_id": 17,
    "customer": {"name": "Ada", "address": {"city": "Bristol", "zip": "BS1"}},
    "total": 12.5,
    "paid": True,
    "ordered_on": "2024-05-01",
    "shipped_at": "2024-05-02T10:00:00Z",
    "lines": [{"sku": "a", "qty": 2}],
    "tags": ["x", "y"],
    "note": "hello",
}


def test_sample_becomes_typed_flattened_columns(api):
    r = api.post("/api/datasets", json={"name": "orders", "sample": SAMPLE, "unique_id": ["order_id"]})
    assert r.status_code == 201, r.text
    columns = {c["name"]: c["type"] for c in r.json()["columns"]}
    assert columns == {
        "order_id": "integer",
        "customer.name": "string",
        "customer.address.city": "string",
        "customer.address.zip": "string",
        "total": "number",
        "paid": "boolean",
        "ordered_on": "date",
        "shipped_at": "datetime",
        "lines": "json",
        "tags": "json",
        "note": "string",
    }
    got = api.get("/api/datasets/orders").json()
    assert got["unique_id"] == ["order_id"] and got["row_count"] == 0


def test_the_sample_itself_loads_and_reads_back(api):
    api.post("/api/datasets", json={"name": "orders", "sample": SAMPLE, "unique_id": ["order_id"]})
    doc = api.load("orders", SAMPLE)
    assert doc["status"] == "Complete" and doc["rows_inserted"] == 1
    row = api.get("/api/datasets/orders/rows").json()["rows"][0]
    assert row["customer.address.city"] == "Bristol"
    assert row["lines"] == [{"sku": "a", "qty": 2}]
    assert row["paid"] is True
    assert row["shipped_at"] == "2024-05-02T10:00:00.000000Z"
    assert row["ordered_on"] == "2024-05-01"
    assert isinstance(row["_id"], int)
    assert row["created [auto]"] and row["last modified [auto]"]


def test_json_columns_cannot_be_unique_id(api):
    r = api.post("/api/datasets", json={"name": "orders", "sample": SAMPLE, "unique_id": ["lines"]})
    assert r.status_code == 422
    assert "json" in r.json()["error"]["message"]


def test_unknown_unique_id_column_is_named(api):
    r = api.post("/api/datasets", json={"name": "orders", "sample": SAMPLE, "unique_id": ["order_idd"]})
    assert r.status_code == 422 and "order_id" in r.json()["error"]["message"]


def test_columns_list_and_composite_unique_id(api):
    cols = [{"name": "region", "type": "string"}, {"name": "n", "type": "integer"}, {"name": "v", "type": "number"}]
    r = api.post("/api/datasets", json={"name": "m", "columns": cols, "unique_id": ["region", "n"]})
    assert r.status_code == 201
    api.load("m", [{"region": "eu", "n": 1, "v": 1.0}, {"region": "us", "n": 1, "v": 2.0}])
    doc = api.load("m", [{"region": "eu", "n": 1, "v": 5.0}])
    assert doc["rows_updated"] == 1 and doc["rows_inserted"] == 0
    rows = {(x["region"], x["n"]): x["v"] for x in api.all_rows("/api/datasets/m/rows")}
    assert rows == {("eu", 1): 5.0, ("us", 1): 2.0}


def test_add_columns_later(api):
    api.post("/api/datasets", json={"name": "orders", "columns": [{"name": "order_id", "type": "integer"}], "unique_id": ["order_id"]})
    api.load("orders", [{"order_id": 1}])
    r = api.patch("/api/datasets/orders", json={"add_columns": [{"name": "receipt id", "type": "string"}, {"name": "last pushed", "type": "datetime"}]})
    assert r.status_code == 200, r.text
    assert [c["name"] for c in r.json()["columns"]] == ["order_id", "receipt id", "last pushed"]
    doc = api.load("orders", [{"order_id": 2, "receipt id": "R-2"}])
    assert doc["status"] == "Complete"
    rows = api.all_rows("/api/datasets/orders/rows")
    assert [r["receipt id"] for r in rows] == [None, "R-2"]
    again = api.patch("/api/datasets/orders", json={"add_columns": [{"name": "receipt id", "type": "string"}]})
    assert again.status_code == 409


def test_hostile_names_are_refused_or_kept_as_plain_text(api, store):
    bad = api.post("/api/datasets", json={"name": 'orders"; DROP TABLE pb_keys; --', "columns": [{"name": "a", "type": "string"}]})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_name"
    weird = ['a"b', "x'); DROP TABLE pb_keys; --", "select", "naïve ☃ column", "semi;colon"]
    r = api.post("/api/datasets", json={"name": "odd", "columns": [{"name": n, "type": "string"} for n in weird]})
    assert r.status_code == 201, r.text
    api.load("odd", [{n: n for n in weird}])
    row = api.get("/api/datasets/odd/rows").json()["rows"][0]
    assert all(row[n] == n for n in weird)
    with store.read() as conn:
        assert sa.inspect(conn).has_table("pb_keys")


def test_duplicate_dataset_name_is_a_conflict(api):
    body = {"name": "orders", "columns": [{"name": "a", "type": "string"}]}
    assert api.post("/api/datasets", json=body).status_code == 201
    r = api.post("/api/datasets", json=body)
    assert r.status_code == 409 and r.json()["error"]["code"] == "exists"


def test_keys_401_and_403(api, store):
    api.post("/api/datasets", json={"name": "orders", "columns": [{"name": "a", "type": "string"}]})
    api.post("/api/datasets", json={"name": "other", "columns": [{"name": "a", "type": "string"}]})
    missing = api.with_key(None).get("/api/datasets")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_key"
    wrong = api.with_key("pb_not-a-key").get("/api/datasets")
    assert wrong.status_code == 401 and "error" in wrong.json()
    ingest_key, _ = create_key(store, "erp", ["ingest:orders"])
    scoped = api.with_key(ingest_key)
    assert scoped.post("/api/datasets/orders/data?wait=true", json=[{"a": "x"}]).json()["status"] == "Complete"
    denied = scoped.post("/api/datasets/other/data", json=[{"a": "x"}])
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    assert scoped.post("/api/datasets", json={"name": "z", "columns": [{"name": "a", "type": "string"}]}).status_code == 403
    listed = [d["name"] for d in scoped.get("/api/datasets").json()["datasets"]]
    assert listed == ["orders"]


def test_keys_are_stored_hashed(api, store):
    key, _ = create_key(store, "k", ["admin"])
    with store.read() as conn:
        dump = repr(conn.execute(sa.text("SELECT * FROM pb_keys")).all())
    assert key not in dump


def test_delete_dataset(api):
    api.post("/api/datasets", json={"name": "orders", "columns": [{"name": "a", "type": "string"}]})
    assert api.delete("/api/datasets/orders").status_code == 200
    assert api.get("/api/datasets/orders").status_code == 404


def test_wide_datasets_are_refused_with_a_clear_error(api):
    sample = {f"f{i}": i for i in range(1001)}
    r = api.post("/api/datasets", json={"name": "wide", "sample": sample})
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_columns", r.text
    assert api.get("/api/datasets/wide").status_code == 404
    assert api.post("/api/datasets", json={"name": "wide", "sample": {f"f{i}": i for i in range(990)}}).status_code == 201
    # Dropped columns stay in the table, so they count: add/drop cycles cannot pass the limit either.
    assert api.patch("/api/datasets/wide", json={"drop_columns": [f"f{i}" for i in range(100)]}).status_code == 200
    r = api.patch("/api/datasets/wide", json={"add_columns": [{"name": f"g{i}", "type": "string"} for i in range(11)]})
    assert r.status_code == 422 and r.json()["error"]["details"]["columns"] == 1001, r.text
    assert api.patch("/api/datasets/wide", json={"add_columns": [{"name": "g0", "type": "string"}]}).status_code == 200
    done = api.post("/api/datasets/wide/data?wait=true", json=[{"f989": 1, "g0": "x"}]).json()
    assert done["status"] == "Complete", done


def test_log_time_field_of_a_push_cannot_be_dropped(api):
    cols = [{"name": "id", "type": "integer"}, {"name": "last pushed", "type": "datetime"}, {"name": "note", "type": "string"}]
    assert api.post("/api/datasets", json={"name": "dl", "columns": cols, "unique_id": ["id"]}).status_code == 201
    assert api.post("/api/views", json={"name": "dl_all", "dataset": "dl"}).status_code == 201
    push = {"name": "dl_out", "view": "dl_all", "url": "http://127.0.0.1:9/hook", "log_time_field": "last pushed", "enabled": False}
    assert api.post("/api/pushes", json=push).status_code == 201
    r = api.patch("/api/datasets/dl", json={"drop_columns": ["last pushed"]})
    assert r.status_code == 409 and r.json()["error"]["details"] == {"pushes": ["dl_out"]}, r.text
    assert [c["name"] for c in api.get("/api/datasets/dl").json()["columns"]] == ["id", "last pushed", "note"]
    assert api.patch("/api/datasets/dl", json={"drop_columns": ["note"]}).status_code == 200
    assert api.delete("/api/pushes/dl_out").status_code == 200
    assert api.patch("/api/datasets/dl", json={"drop_columns": ["last pushed"]}).status_code == 200


def test_row_ids_out_of_range_are_422(api):
    assert api.post("/api/datasets", json={"name": "ids", "sample": {"id": 1}}).status_code == 201
    for row_id in ("9223372036854775808", "0", "-5", "1e3"):
        r = api.patch(f"/api/datasets/ids/rows/{row_id}", json={"id": 2})
        assert r.status_code == 422 and "error" in r.json(), (row_id, r.text)
    assert api.patch("/api/datasets/ids/rows/9223372036854775807", json={"id": 2}).status_code == 404
