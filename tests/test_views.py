"""Views over the HTTP API on both engines: CRUD, the seed's selections, the pull API, receipts."""
from __future__ import annotations

import csv
import io

import orjson
import pytest
import sqlalchemy as sa

from pushbase.keys import create_key

COLS = [
    {"name": "order_id", "type": "integer"},
    {"name": "customer", "type": "string"},
    {"name": "total", "type": "number"},
    {"name": "last pushed", "type": "datetime"},
    {"name": "receipt id", "type": "string"},
    {"name": "meta", "type": "json"},
]


@pytest.fixture
def orders(api):
    assert api.post("/api/datasets", json={"name": "orders", "columns": COLS, "unique_id": ["order_id"]}).status_code == 201
    rows = [{"order_id": i, "customer": f"c{i % 3}", "total": i * 2.5, "meta": {"i": i}} for i in range(1, 8)]
    assert api.load("orders", rows)["status"] == "Complete"
    return api


def ids(rows):
    return [r["order_id"] for r in rows]


def test_view_crud(orders):
    body = {"name": "big", "dataset": "orders", "columns": ["order_id", "total"], "filters": [{"field": "total", "op": "gt", "value": 10}],
            "sort": [{"field": "total", "direction": "desc"}], "limit": None}
    r = orders.post("/api/views", json=body)
    assert r.status_code == 201, r.text
    got = orders.get("/api/views/big").json()
    assert got["dataset"] == "orders" and got["columns"] == ["order_id", "total"]
    assert ids(orders.all_rows("/api/views/big/rows")) == [7, 6, 5]
    assert orders.patch("/api/views/big", json={"filters": [{"field": "total", "op": "lte", "value": 5}]}).status_code == 200
    assert ids(orders.all_rows("/api/views/big/rows")) == [2, 1]
    assert orders.post("/api/views", json=body).status_code == 409
    assert orders.delete("/api/views/big").status_code == 200
    assert orders.get("/api/views/big").status_code == 404
    assert [v["name"] for v in orders.get("/api/views").json()["views"]] == []


def test_columns_in_order_and_calculations_follow(orders):
    r = orders.post("/api/views", json={"name": "v", "dataset": "orders", "columns": ["total", "order_id"],
                                        "calculations": [{"name": "double", "formula": "{total} * 2"}],
                                        "sort": [{"field": "order_id", "direction": "asc"}]})
    assert r.status_code == 201, r.text
    row = orders.get("/api/views/v/rows").json()["rows"][0]
    assert list(row) == ["_id", "total", "order_id", "double"]
    assert row["double"] == 5.0


def test_seed_recipes(orders):
    orders.post("/api/views", json={"name": "never_pushed", "dataset": "orders", "filters": [{"field": "last pushed", "op": "is_empty"}]})
    orders.post("/api/views", json={"name": "modified", "dataset": "orders",
                                    "calculations": [{"name": "needs pushing", "formula": "{last modified [auto]} > {last pushed}"}],
                                    "filters": [{"field": "needs pushing", "op": "equals", "value": True}]})
    orders.post("/api/views", json={"name": "unreceived", "dataset": "orders", "filters": [{"field": "receipt id", "op": "is_empty"}]})
    assert len(orders.all_rows("/api/views/never_pushed/rows")) == 7
    assert orders.all_rows("/api/views/modified/rows") == []
    rows = orders.all_rows("/api/datasets/orders/rows")
    # Mark 1..3 pushed a moment after their last change, then change 2 again.
    for row in rows[:3]:
        r = orders.patch(f"/api/datasets/orders/rows/{row['_id']}", json={"last pushed": "2999-01-01T00:00:00Z"})
        assert r.status_code == 200
    assert ids(orders.all_rows("/api/views/never_pushed/rows")) == [4, 5, 6, 7]
    orders.patch(f"/api/datasets/orders/rows/{rows[0]['_id']}", json={"last pushed": "2000-01-01T00:00:00Z"})
    assert ids(orders.all_rows("/api/views/modified/rows")) == [1]
    # A receipt written back removes the row from the "not yet received" selection.
    r = orders.patch(f"/api/datasets/orders/rows/{rows[4]['_id']}", json={"receipt id": "R-5"})
    assert r.json()["receipt id"] == "R-5"
    assert 5 not in ids(orders.all_rows("/api/views/unreceived/rows"))


def test_receipt_patch_moves_last_modified_and_checks_types(orders):
    row = orders.get("/api/datasets/orders/rows").json()["rows"][0]
    r = orders.patch(f"/api/datasets/orders/rows/{row['_id']}", json={"receipt id": "R-1"})
    assert r.status_code == 200
    assert r.json()["last modified [auto]"] > row["last modified [auto]"]
    bad = orders.patch(f"/api/datasets/orders/rows/{row['_id']}", json={"total": "lots"})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["column"] == "total"
    unknown = orders.patch(f"/api/datasets/orders/rows/{row['_id']}", json={"colour": "red"})
    assert unknown.status_code == 422
    assert orders.patch("/api/datasets/orders/rows/999999", json={"receipt id": "x"}).status_code == 404


def test_a_patch_that_changes_nothing_keeps_last_modified(orders):
    # A third party writing the same receipt again must not make the row "modified since last pushed".
    row = orders.get("/api/datasets/orders/rows").json()["rows"][0]
    first = orders.patch(f"/api/datasets/orders/rows/{row['_id']}", json={"receipt id": "R-1", "total": row["total"]}).json()
    again = orders.patch(f"/api/datasets/orders/rows/{row['_id']}", json={"receipt id": "R-1", "total": float(row["total"])})
    assert again.status_code == 200 and again.json() == first
    changed = orders.patch(f"/api/datasets/orders/rows/{row['_id']}", json={"receipt id": "R-2"}).json()
    assert changed["last modified [auto]"] > first["last modified [auto]"]
    # json values (meta): keys in another order are the same value; true is not 1; a JSON string is a string
    for value, same_as in ([{"a": 1, "b": [1]}, {"b": [1], "a": 1}], [{"a": True}, None], ["hello", "hello"], [[1], "[1]"]):
        before = orders.patch(f"/api/datasets/orders/rows/{row['_id']}", json={"meta": value})
        assert before.status_code == 200 and before.json()["meta"] == value, before.text
        if same_as is None:  # {"a": 1} after {"a": true} is a change
            same_as, expect_same = {"a": 1}, False
        else:
            expect_same = same_as == value or isinstance(same_as, dict)
        after = orders.patch(f"/api/datasets/orders/rows/{row['_id']}", json={"meta": same_as})
        assert after.status_code == 200 and after.json()["meta"] == same_as, after.text
        moved = after.json()["last modified [auto]"] != before.json()["last modified [auto]"]
        assert moved is not expect_same, (value, same_as)
    assert orders.patch("/api/datasets/orders/rows/999999", json={"receipt id": "R-2"}).status_code == 404


def test_json_pages_follow_next_to_the_end(orders):
    orders.post("/api/views", json={"name": "all", "dataset": "orders", "sort": [{"field": "customer", "direction": "desc"}, {"field": "total", "direction": "asc"}]})
    rows = orders.all_rows("/api/views/all/rows", limit=2)
    assert len(rows) == 7 and len({r["_id"] for r in rows}) == 7
    assert [(r["customer"], r["total"]) for r in rows] == sorted([(r["customer"], r["total"]) for r in rows], key=lambda x: (-ord(x[0][-1]), x[1]))


def test_view_limit_caps_every_format(orders):
    orders.post("/api/views", json={"name": "top3", "dataset": "orders", "sort": [{"field": "total", "direction": "desc"}], "limit": 3})
    assert ids(orders.all_rows("/api/views/top3/rows", limit=2)) == [7, 6, 5]
    nd = orders.get("/api/views/top3/rows", params={"format": "ndjson"}).text.splitlines()
    assert [orjson.loads(line)["order_id"] for line in nd] == [7, 6, 5]


def test_ndjson_and_csv_stream_every_row(orders):
    orders.post("/api/views", json={"name": "all", "dataset": "orders", "sort": [{"field": "order_id", "direction": "asc"}]})
    r = orders.get("/api/views/all/rows", params={"format": "ndjson"})
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(x) for x in r.text.splitlines()]
    assert ids(lines) == list(range(1, 8)) and lines[0]["meta"] == {"i": 1}
    r = orders.get("/api/views/all/rows", params={"format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(t["order_id"]) for t in table] == list(range(1, 8))
    assert table[0]["last pushed"] == "" and orjson.loads(table[0]["meta"]) == {"i": 1}
    assert orders.get("/api/views/all/rows", params={"format": "xml"}).status_code == 422


def test_read_scope_pulls_one_view_only(orders, store):
    orders.post("/api/views", json={"name": "a", "dataset": "orders"})
    orders.post("/api/views", json={"name": "b", "dataset": "orders"})
    key, _ = create_key(store, "bi", ["read:a"])
    reader = orders.with_key(key)
    assert reader.get("/api/views/a/rows").status_code == 200
    assert reader.get("/api/views/a/rows", params={"format": "csv"}).status_code == 200
    assert reader.get("/api/views/b/rows").status_code == 403
    assert reader.post("/api/views", json={"name": "c", "dataset": "orders"}).status_code == 403
    assert reader.get("/api/datasets/orders/rows").status_code == 403


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"calculations": [{"name": "x", "formula": "{totl} * 2"}]}, "total"),
        ({"calculations": [{"name": "x", "formula": "{total} * * 2"}]}, "position"),
        ({"calculations": [{"name": "x", "formula": "sqlite_version()"}]}, "sqlite_version"),
        ({"filters": [{"field": "custmer", "op": "equals", "value": "a"}]}, "customer"),
        ({"filters": [{"field": "customer", "op": "matches", "value": "a"}]}, "matches"),
        ({"filters": [{"field": "total", "op": "gt", "value": "lots"}]}, "total"),
        ({"sort": [{"field": "nope"}]}, "nope"),
        ({"columns": ["order_id", "nope"]}, "nope"),
    ],
)
def test_bad_views_are_refused_with_the_problem_named(orders, body, fragment):
    r = orders.post("/api/views", json={"name": "bad", "dataset": "orders", **body})
    assert 400 <= r.status_code < 500, r.text
    text = orjson.dumps(r.json()["error"]).decode()
    assert fragment in text, text


def test_injection_in_filter_values_is_plain_data(orders, store):
    hostile = "x'; DROP TABLE pb_keys; --"
    orders.load("orders", [{"order_id": 100, "customer": hostile}])
    orders.post("/api/views", json={"name": "h", "dataset": "orders", "filters": [{"field": "customer", "op": "equals", "value": hostile}]})
    assert ids(orders.all_rows("/api/views/h/rows")) == [100]
    orders.post("/api/views", json={"name": "pct", "dataset": "orders", "filters": [{"field": "customer", "op": "contains", "value": "%"}]})
    assert orders.all_rows("/api/views/pct/rows") == []
    with store.read() as conn:
        assert sa.inspect(conn).has_table("pb_keys")


def test_deleting_a_used_column_or_dataset_is_refused_naming_the_views(orders):
    orders.post("/api/views", json={"name": "uses_total", "dataset": "orders", "filters": [{"field": "total", "op": "gt", "value": 1}]})
    r = orders.patch("/api/datasets/orders", json={"drop_columns": ["total"]})
    assert r.status_code == 409 and "uses_total" in r.json()["error"]["message"]
    assert orders.patch("/api/datasets/orders", json={"drop_columns": ["receipt id"]}).status_code == 200
    r = orders.delete("/api/datasets/orders")
    assert r.status_code == 409 and r.json()["error"]["details"]["views"] == ["uses_total"]
    assert orders.delete("/api/datasets/orders?cascade=true").status_code == 200
    assert orders.get("/api/views/uses_total").status_code == 404


@pytest.mark.parametrize("selection", [
    {"field": "last pushed", "op": "is_empty"},
    # "changed since": the system field gets its index when a view filters on it, as a column does
    {"field": "last modified [auto]", "op": "gt", "value": "2020-01-01T00:00:00Z"},
])
def test_filter_on_a_column_uses_an_index(orders, store, selection):
    from pushbase.views.store import get_view, view_query

    orders.post("/api/views", json={"name": "np", "dataset": "orders", "filters": [selection]})
    with store.read() as conn:
        view = view_query(store, get_view(store, "np", conn), conn)
        sql = str(view.select().compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        if store.dialect == "sqlite":
            plan = repr(conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all())
            if selection["op"] == "gt":
                # Without statistics SQLite's planner prefers reading in row id order (the view's order,
                # no sort) over a range of an index; the index is there for when it pays.
                on = {tuple(ix["column_names"]) for ix in sa.inspect(conn).get_indexes(view.table.name)}
                assert ("_modified",) in on, on
            else:
                assert "USING INDEX" in plan, plan
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = repr(conn.exec_driver_sql("EXPLAIN " + sql).all())
            # not the primary key's index, read whole with the filter applied to every row
            assert "Index" in plan and "Seq Scan" not in plan and "pkey" not in plan, plan


@pytest.mark.parametrize("matching", [100, 15_000])
def test_a_range_filter_reads_through_its_index_only_when_it_selects_few_rows(api, store, matching):
    # SQLite has no histograms: without a hint its planner reads every row in row id order for any
    # range; with one it would read and sort every matching row even when that is nearly all of them.
    from datetime import datetime, timedelta, timezone

    from pushbase.views.query import SELECTIVE_ROWS
    from pushbase.views.store import get_view, view_query

    total = 20_000
    assert 100 < SELECTIVE_ROWS < 15_000 < total
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    columns = [{"name": "n", "type": "integer"}, {"name": "at", "type": "datetime"}]
    assert api.post("/api/datasets", json={"name": "events", "columns": columns, "unique_id": ["n"]}).status_code == 201
    for start in range(0, total, 10_000):
        rows = [{"n": i, "at": (base + timedelta(seconds=i)).isoformat()} for i in range(start, start + 10_000)]
        assert api.load("events", rows)["status"] == "Complete"
    cutoff = (base + timedelta(seconds=total - matching - 1)).isoformat()
    r = api.post("/api/views", json={"name": "recent", "dataset": "events", "columns": ["n"], "filters": [{"field": "at", "op": "gt", "value": cutoff}]})
    assert r.status_code == 201, r.text
    assert [row["n"] for row in api.all_rows("/api/views/recent/rows", limit=5000)] == list(range(total - matching, total))
    lines = api.get("/api/views/recent/rows", params={"format": "ndjson"}).text.split("\n")
    assert len([line for line in lines if line]) == matching
    if store.dialect != "sqlite":
        return  # PostgreSQL's planner estimates ranges from its statistics
    with store.read() as conn:
        view = view_query(store, get_view(store, "recent", conn), conn)
        query = view.select(conditions=view.conditions_for(conn))
        sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        plan = repr(conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all())
    col = view.fields["at"].expr.name
    if matching < SELECTIVE_ROWS:
        assert f"USING INDEX ds_{view.table.name[3:]}_{col}" in plan, plan  # only the matching rows are read
    else:
        assert "SCAN" in plan and "INDEX" not in plan, plan  # page order, no sort of 15,000 rows


def test_sorting_by_the_unique_id_adds_no_second_index_on_it(orders, store):
    # The unique id's own index serves the sort; another index on the column would only cost every write.
    from pushbase.views.store import get_view, view_query

    r = orders.post("/api/views", json={"name": "by_id", "dataset": "orders", "sort": [{"field": "order_id", "direction": "desc"}],
                                        "filters": [{"field": "order_id", "op": "gt", "value": 3}]})
    assert r.status_code == 201, r.text
    with store.read() as conn:
        view = view_query(store, get_view(store, "by_id", conn), conn)
        col = view.fields["order_id"].expr.name
        leading = [ix["name"] for ix in sa.inspect(conn).get_indexes(view.table.name) if ix["column_names"][:1] == [col]]
    assert len(leading) == 1, leading
    assert [row["order_id"] for row in orders.all_rows("/api/views/by_id/rows")][:2] == [7, 6]


def test_a_column_first_in_a_composite_unique_id_still_gets_its_own_index(api, store):
    # The unique id's index (a, b) holds the rows of one `a` in `b` order, not in row id (page) order.
    from pushbase.views.store import get_view, view_query

    columns = [{"name": "a", "type": "integer"}, {"name": "b", "type": "integer"}]
    assert api.post("/api/datasets", json={"name": "pairs", "columns": columns, "unique_id": ["a", "b"]}).status_code == 201
    api.load("pairs", [{"a": i % 3, "b": 100 - i} for i in range(30)])
    assert api.post("/api/views", json={"name": "a_is_1", "dataset": "pairs", "filters": [{"field": "a", "op": "equals", "value": 1}]}).status_code == 201
    with store.read() as conn:
        view = view_query(store, get_view(store, "a_is_1", conn), conn)
        col = view.fields["a"].expr.name
        own = [ix["column_names"] for ix in sa.inspect(conn).get_indexes(view.table.name) if ix["column_names"] in ([col], [col, "_id"])]
    assert len(own) == 1, own
    assert [row["b"] for row in api.all_rows("/api/views/a_is_1/rows")] == [100 - i for i in range(1, 30, 3)]


def test_read_scope_never_opens_a_dataset_of_the_same_name(orders, store):
    # A view may hide columns; a dataset sharing its name must not leak them to the view's readers.
    assert orders.post("/api/views", json={"name": "orders", "dataset": "orders", "columns": ["order_id"]}).status_code == 201
    key, _ = create_key(store, "bi", ["read:orders"])
    reader = orders.with_key(key)
    assert reader.get("/api/views/orders/rows").status_code == 200
    assert reader.get("/api/datasets/orders/rows").status_code == 403
    assert reader.get("/api/datasets/orders").status_code == 403


@pytest.mark.parametrize(
    "body, code",
    [
        ({"filters": [{"field": "total", "op": "gt", "value": i} for i in range(101)]}, "invalid_view"),
        ({"calculations": [{"name": f"c{i}", "formula": "{total} * 2"} for i in range(201)]}, "invalid_view"),
        ({"sort": [{"field": "total"}] * 21}, "invalid_view"),
        # Each `in` value is a query parameter; both engines cap those.
        ({"filters": [{"field": "customer", "op": "in", "value": [f"v{i}-{j}" for j in range(1000)]} for i in range(11)]}, "invalid_view"),
    ],
)
def test_views_the_database_could_not_run_are_refused_when_saved(orders, body, code):
    r = orders.post("/api/views", json={"name": "huge", "dataset": "orders", **body})
    assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text[:300]
    assert orders.get("/api/views/huge").status_code == 404


def test_largest_allowed_view_saves_and_reads_on_both_engines(orders):
    body = {
        "filters": [{"field": "customer", "op": "in", "value": ["c0", "c1", "c2"] + [f"v{i}-{j}" for j in range(97)]} for i in range(100)],
        "calculations": [{"name": f"c{i}", "formula": "{total} * 2"} for i in range(200)],
        "sort": [{"field": "total", "direction": "desc"}] * 20,
    }
    assert orders.post("/api/views", json={"name": "largest", "dataset": "orders", **body}).status_code == 201
    r = orders.get("/api/views/largest/rows")
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()["rows"]) == 7 and r.json()["rows"][0]["c199"] == 35.0
    assert orders.get("/api/views/largest/rows", params={"format": "csv"}).text.count("\n") == 8


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
@pytest.mark.parametrize("param", [{"limit": "0"}, {"limit": "5"}, {"after": "x"}])
def test_streams_refuse_page_parameters_instead_of_ignoring_them(orders, fmt, param):
    orders.post("/api/views", json={"name": "all", "dataset": "orders"})
    r = orders.get("/api/views/all/rows", params={"format": fmt, **param})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
    assert next(iter(param)) in r.json()["error"]["message"]


def test_an_equality_filter_reads_rows_in_page_order_without_sorting(orders, store):
    from pushbase.views.store import get_view, view_query

    orders.post("/api/views", json={"name": "c1", "dataset": "orders", "filters": [{"field": "customer", "op": "equals", "value": "c1"}]})
    with store.read() as conn:
        query = view_query(store, get_view(store, "c1", conn), conn).select().limit(100)
        sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        if store.dialect == "sqlite":
            # The one-column index's entries end with the rowid (_id): already in page order.
            plan = repr(conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all())
            assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, plan
            return
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
        plan = repr(conn.exec_driver_sql("EXPLAIN " + sql).all())
    assert "Index" in plan and "Sort" not in plan, plan
