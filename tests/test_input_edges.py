"""Bad input at the edges of what the types hold: each gets a clear 4xx (or a job that ends ErrorExit
naming the row), never a 500, on both engines. Found by an adversarial review of the HTTP API."""
from __future__ import annotations

import time

import pytest

BIG = 2**70  # beyond 64 bits: orjson cannot write it, neither engine can store it as an integer
COLS = [
    {"name": "i", "type": "integer"},
    {"name": "dt", "type": "datetime"},
    {"name": "j", "type": "json"},
]


@pytest.fixture
def f(api):
    r = api.post("/api/datasets", json={"name": "f", "columns": COLS, "unique_id": ["i"]})
    assert r.status_code == 201, r.text
    assert api.load("f", [{"i": 1, "dt": "2020-01-01T00:00:00Z"}])["status"] == "Complete"
    return api


def body(text: str) -> dict:
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


# -- datetimes that leave years 1-9999 once in UTC ------------------------------------------------


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+01:00"])
def test_a_datetime_outside_years_1_to_9999_in_utc_fails_the_job_and_stores_nothing(f, value):
    doc = f.load("f", [{"i": 2, "dt": value}])
    assert doc["status"] == "ErrorExit"
    assert doc["errors"][0]["column"] == "dt" and "out of range" in doc["errors"][0]["message"]
    rows = f.get("/api/datasets/f/rows")
    assert rows.status_code == 200 and [r["i"] for r in rows.json()["rows"]] == [1]


def test_an_out_of_range_datetime_in_a_row_update_or_qrvey_load_is_refused(f):
    r = f.patch("/api/datasets/f/rows/1", json={"dt": "9999-12-31T23:59:59.999999-14:00"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["column"] == "dt"
    r = f.post("/compat/qrvey/postdata", json={"datasetId": "f", "data": [{"i": 2, "dt": "9999-12-31T23:59:59-14:00"}]})
    assert r.status_code == 202
    deadline = time.monotonic() + 30
    while (status := f.get(f"/compat/qrvey/{r.json()['jobId']}/status").json())["statusJob"]["status"] not in ("Complete", "ErrorExit"):
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status["statusJob"]["status"] == "ErrorExit"
    assert [r["i"] for r in f.get("/api/datasets/f/rows").json()["rows"]] == [1]


def test_a_sample_with_an_out_of_range_datetime_makes_a_text_column(api):
    r = api.post("/api/datasets", json={"name": "dd", "sample": {"d": "0001-01-01T00:00:00+01:00"}})
    assert r.status_code == 201 and r.json()["columns"] == [{"name": "d", "type": "string"}], r.text


# -- integers beyond 64 bits ----------------------------------------------------------------------


def test_integers_beyond_64_bits_in_definitions_get_a_422_that_names_them(f):
    answers = [
        f.post("/api/views", **body(f'{{"name": "v1", "dataset": "f", "filters": [{{"field": "i", "op": "gt", "value": {BIG}}}]}}')),
        f.post("/api/views", **body(f'{{"name": "v2", "dataset": "f", "filters": [{{"field": "i", "op": "in", "value": [{-BIG}]}}]}}')),
        f.post("/api/views", **body(f'{{"name": "v3", "dataset": "f", "limit": {BIG}}}')),
        f.post("/api/tasks", **body(f'{{"name": "t1", "params": {{"n": {BIG}}}, "steps": [{{"name": "s", "url": "https://example.com/"}}]}}')),
        f.post("/api/tasks", **body(f'{{"name": "t2", "steps": [{{"name": "s", "url": "https://example.com/", "params": {{"c": {BIG}}}}}]}}')),
    ]
    for r in answers:
        assert r.status_code == 422, r.text
    assert str(BIG) in answers[0].json()["error"]["message"]
    assert answers[3].json()["error"]["details"] == {"value": BIG}  # written exactly, not as a float
    r = f.post("/api/views", json={"name": "ok", "dataset": "f"})
    assert r.status_code == 201
    r = f.post("/api/pushes", **body(f'{{"name": "p", "view": "ok", "url": "https://example.com/", "log_time_field": "dt", "max_batch_rows": {BIG}}}'))
    assert r.status_code == 422, r.text


def test_run_params_beyond_64_bits_get_a_422(f):
    r = f.post("/api/tasks", json={"name": "t", "steps": [{"name": "s", "url": "https://example.com/"}]})
    assert r.status_code == 201, r.text
    r = f.post("/api/tasks/t/run", **body(f'{{"params": {{"x": {BIG}}}}}'))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_params"


# -- json values nested deeply --------------------------------------------------------------------


def test_a_json_value_nested_past_the_limit_fails_the_job_and_one_within_reads_back(f):
    from pushbase.columns import MAX_JSON_DEPTH

    too_deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    r = f.post("/api/datasets/f/data?wait=true", **body(f'{{"i": 5, "j": {too_deep}}}'))
    doc = r.json()
    assert doc["status"] == "ErrorExit" and doc["errors"][0]["column"] == "j" and "nest" in doc["errors"][0]["message"]
    deepest = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    r = f.post("/api/datasets/f/data?wait=true", **body(f'{{"i": 6, "j": {deepest}}}'))
    assert r.json()["status"] == "Complete", r.text
    rows = f.get("/api/datasets/f/rows")  # the row wraps the value in more levels than orjson writes
    assert rows.status_code == 200
    value = rows.json()["rows"][-1]["j"]
    depth = 0
    while isinstance(value, list):
        depth, value = depth + 1, (value[0] if value else None)
    assert depth == MAX_JSON_DEPTH
    r = f.patch("/api/datasets/f/rows/1", **body(f'{{"j": {too_deep}}}'))
    assert r.status_code == 422 and r.json()["error"]["details"][0]["column"] == "j"


def test_a_json_column_with_many_objects_but_little_nesting_still_loads(f):
    rows = [{"i": 10 + n, "j": [{"k": k} for k in range(300)]} for n in range(3)]
    assert f.load("f", rows)["status"] == "Complete"


# -- formulas, names, samples ---------------------------------------------------------------------


@pytest.mark.parametrize("formula", ["1" + "+1" * 400, "true" + " or true" * 600])
def test_a_formula_too_long_to_compile_is_a_422(f, formula):
    r = f.post("/api/views", json={"name": "vc", "dataset": "f", "calculations": [{"name": "c", "formula": formula}]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_formula"


@pytest.mark.parametrize("path", ["/api/datasets/x%00", "/api/views/x%00", "/api/views/x%00/rows", "/api/pushes/x%00",
                                  "/api/tasks/x%00", "/api/datasets/f/data/job%00/status", "/compat/qrvey/job%00/status"])
def test_a_name_with_nul_in_the_path_is_a_404_on_both_engines(f, path):
    r = f.get(path)
    assert r.status_code == 404, r.text


def test_a_name_with_nul_in_a_body_names_nothing_on_both_engines(f):
    r = f.post("/api/views", json={"name": "v9", "dataset": "f\u0000"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    r = f.post("/compat/qrvey/postdata", json={"datasetId": "f\u0000", "data": [{"i": 9}]})
    assert r.status_code == 404, r.text


def test_a_sample_whose_flattened_names_collide_is_refused(api):
    r = api.post("/api/datasets", json={"name": "d_dup", "sample": {"a.b": 1, "a": {"b": 2}}})
    assert r.status_code == 422 and r.json()["error"]["details"] == {"column": "a.b"}


# -- outbound URLs and headers, checked when saved --------------------------------------------------


@pytest.mark.parametrize("url", ["https://example.com/ok\r\nX-Injected: y", "https://example.com/\u0000", "http://%zz/",
                                 "http://[::1/x", "https://exa mple.com/"])
def test_push_and_action_urls_that_no_call_could_use_are_refused_when_saved(f, url):
    assert f.post("/api/views", json={"name": "v", "dataset": "f"}).status_code == 201
    r = f.post("/api/pushes", json={"name": "p", "view": "v", "url": url, "log_time_field": "dt"})
    assert r.status_code == 422, r.text
    r = f.post("/api/views/v/actions", json={"name": "a", "url": url})
    assert r.status_code == 422, r.text


def test_international_and_underscore_host_names_are_accepted(f):
    assert f.post("/api/views", json={"name": "v", "dataset": "f"}).status_code == 201
    for i, url in enumerate(["https://bücher.example/hook", "https://my_host.example.com/hook", "https://[2001:db8::1]:8443/x",
                             "https://example.com/search?q=New York&$filter=name eq 'x'"]):
        r = f.post("/api/pushes", json={"name": f"p{i}", "view": "v", "url": url, "log_time_field": "dt"})
        assert r.status_code == 201, r.text


@pytest.mark.parametrize("headers", [{"X-A": "b\r\nc: d"}, {"bad name": "x"}, {"webhook-id": "mine"}, {"X-A": "\u0000"}])
def test_action_headers_are_checked_like_push_headers(f, headers):
    assert f.post("/api/views", json={"name": "v", "dataset": "f"}).status_code == 201
    r = f.post("/api/views/v/actions", json={"name": "a", "url": "https://example.com/hook", "headers": headers})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "headers", r.text
    r = f.post("/api/pushes", json={"name": "p", "view": "v", "url": "https://example.com/hook", "log_time_field": "dt", "headers": headers})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "headers", r.text


def test_a_sample_integer_beyond_64_bits_is_refused_not_made_an_integer_column(api):
    r = api.post("/api/datasets", **body(f'{{"name": "big", "sample": {{"n": {BIG}, "m": 1}}}}'))
    assert r.status_code == 422 and r.json()["error"]["details"] == {"column": "n"}


# -- the database cannot serve: 503, not 500 --------------------------------------------------------


def test_a_sqlite_file_locked_by_another_process_answers_503_and_recovers(tmp_path, monkeypatch):
    import sqlite3

    from starlette.testclient import TestClient

    from pushbase.keys import create_key
    from pushbase.settings import Settings
    from pushbase.storage import open_store
    from pushbase.web.app import create_app

    monkeypatch.setenv("PUSHBASE_SQLITE_BUSY_SECONDS", "0.2")
    db = str(tmp_path / "locked.db")
    store = open_store(db)
    key, _ = create_key(store, "admin", ["admin"])
    app = create_app(Settings(db=db, allow_private_targets=True), store=store)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            headers = {"x-api-key": key}
            assert client.post("/api/datasets", headers=headers, json={"name": "d", "columns": COLS}).status_code == 201
            other = sqlite3.connect(db, isolation_level=None)  # a backup or a sqlite3 shell, say
            other.execute("BEGIN EXCLUSIVE")
            try:
                r = client.post("/api/datasets", headers=headers, json={"name": "e", "columns": COLS})
                assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
                assert "locked" in r.json()["error"]["message"] and r.headers["retry-after"] == "1"
            finally:
                other.execute("ROLLBACK")
                other.close()
            r = client.post("/api/datasets", headers=headers, json={"name": "e", "columns": COLS})
            assert r.status_code == 201, r.text
    finally:
        store.close()


def test_only_the_database_state_counts_as_unavailable_and_the_reason_names_no_host():
    import sqlite3

    import psycopg

    from pushbase.storage import database_unavailable_reason

    conn = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.OperationalError) as sql_mistake:
        conn.execute("select locked from nowhere")  # "locked" in the text is no lock
    assert database_unavailable_reason(sql_mistake.value) is None
    assert database_unavailable_reason(psycopg.errors.QueryCanceled()) is None  # a timeout: not the server's state
    assert database_unavailable_reason(psycopg.errors.DeadlockDetected()) is None
    assert database_unavailable_reason(psycopg.errors.AdminShutdown()) == "server shutting down"
    assert database_unavailable_reason(psycopg.errors.TooManyConnections()) == "out of resources (disk, memory or connections)"
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect("postgresql://someone@127.0.0.1:1/db", connect_timeout=2)
    reason = database_unavailable_reason(refused.value)
    assert reason == "connection failed" and "127.0.0.1" not in reason and "someone" not in reason


@pytest.mark.parametrize("name", ['q"uote', "back\\slash"])
def test_names_with_quotes_or_backslashes_load_and_pull_in_every_format(api, name):
    cols = [{"name": "id", "type": "integer"}, {"name": name, "type": "string"}]
    assert api.post("/api/datasets", json={"name": "uq", "columns": cols, "unique_id": ["id"]}).status_code == 201
    assert api.load("uq", [{"id": 1, name: 'a "b" \\c'}])["status"] == "Complete"
    view = {"name": "vq", "dataset": "uq", "calculations": [{"name": f'say "{name}"', "formula": "{id} + 1"}]}
    assert api.post("/api/views", json=view).status_code == 201
    r = api.get("/api/views/vq/rows")
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [{"_id": 1, "id": 1, name: 'a "b" \\c', f'say "{name}"': 2}]
    lines = api.get("/api/views/vq/rows?format=ndjson").text.splitlines()
    assert [__import__("json").loads(line) for line in lines] == r.json()["rows"]
    assert api.get("/api/views/vq/rows?format=csv").text.count("\r\n") == 2


def test_a_dataset_made_after_deleting_the_newest_one_is_created(api):
    cols = [{"name": "id", "type": "integer"}]
    for name in ("a", "b"):
        assert api.post("/api/datasets", json={"name": name, "columns": cols, "unique_id": ["id"]}).status_code == 201
    api.load("b", [{"id": 1}])
    assert api.delete("/api/datasets/b").status_code == 200
    # SQLite gives the next dataset the deleted one's number: same table name, same columns.
    for name in ("c", "d"):
        r = api.post("/api/datasets", json={"name": name, "columns": cols, "unique_id": ["id"]})
        assert r.status_code == 201, r.text
        assert api.load(name, [{"id": 1}])["status"] == "Complete"
    assert api.get("/api/datasets/c").json()["row_count"] == 1


def test_a_read_key_lists_no_dataset_even_one_named_like_its_view(api, store):
    from pushbase.keys import create_key

    cols = [{"name": "id", "type": "integer"}]
    assert api.post("/api/datasets", json={"name": "orders_to_push", "columns": cols}).status_code == 201
    assert api.post("/api/views", json={"name": "orders_to_push", "dataset": "orders_to_push"}).status_code == 201
    key, _ = create_key(store, "reader", ["read:orders_to_push"])
    reader = api.with_key(key)
    assert reader.get("/api/datasets").json()["datasets"] == []
    assert reader.get("/api/datasets/orders_to_push").status_code == 403
    assert reader.get("/api/views/orders_to_push/rows").status_code == 200
