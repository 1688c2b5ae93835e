"""/api/pushes: definitions, checks with clear 4xx errors, redaction, state, rate limits."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from starlette.testclient import TestClient

from pushbase.keys import create_key
from pushbase.settings import Settings
from pushbase.web import create_app
from tests.conftest import Api
from tests.receivers import Receiver
from tests.test_push_support import delivered_ids, eventually, make_push, orders, setup_orders, stamped

URL = "http://127.0.0.1:9/hook"


def test_create_shows_definition_defaults_and_state(api):
    setup_orders(api)
    r = api.post("/api/pushes", json={"name": "to_erp", "view": "to_push", "url": URL, "log_time_field": "last pushed", "enabled": False})
    assert r.status_code == 201, r.text
    push = r.json()
    assert push["format"] == "form" and push["min_interval"] == "0s" and push["max_calls_per_day"] is None
    assert push["max_batch_rows"] == 1000 and push["max_batch_bytes"] == 1_000_000 and push["timeout"] == "10s"
    assert push["headers"] == {} and push["secret_set"] is False and push["enabled"] is False
    assert push["state"]["status"] == "disabled" and push["state"]["consecutive_failures"] == 0
    assert push["state"]["last_success_at"] is None
    assert api.get("/api/pushes/to_erp").json()["url"] == URL
    assert [p["name"] for p in api.get("/api/pushes").json()["pushes"]] == ["to_erp"]


def test_durations_in_agilebase_range_and_beyond(api):
    setup_orders(api)
    for name, value, shown in (("a", "5m", "5m"), ("b", "1d", "1d"), ("c", 0, "0s"), ("d", 90, "90s"), ("e", "2h", "2h")):
        assert make_push(api, URL, name=name, min_interval=value, enabled=False)["min_interval"] == shown
    r = api.post("/api/pushes", json={"name": "f", "view": "to_push", "url": URL, "log_time_field": "last pushed", "min_interval": "2d"})
    assert r.status_code == 422 and "min_interval" in r.json()["error"]["message"]


BAD = [
    ({"name": "no spaces"}, "push name"),
    ({"view": "nope"}, "no view 'nope'"),
    ({"log_time_field": "customer"}, "must be a datetime column"),
    ({"log_time_field": "last pushd"}, "did you mean 'last pushed'"),
    ({"log_time_field": None}, "log_time_field"),
    ({"url": "ftp://example.com/x"}, "http"),
    ({"url": None}, "url"),
    ({"format": "xml"}, "format"),
    ({"min_interval": "soon"}, "min_interval"),
    ({"max_calls_per_day": 0}, "max_calls_per_day"),
    ({"max_batch_rows": 0}, "max_batch_rows"),
    ({"max_batch_bytes": 10}, "max_batch_bytes"),
    ({"timeout": 0}, "timeout"),
    ({"headers": {"Content-Type": "text/plain"}}, "cannot be replaced"),
    ({"headers": {"webhook-id": "x"}}, "cannot be replaced"),
    ({"headers": {"X-A": "line\r\nbreak"}}, "one line"),
    ({"headers": {"bad name": "x"}}, "valid header name"),
    ({"secret": "whsec_!!!"}, "secret"),
    ({"retry_schedule": []}, "retry_schedule"),
    ({"colour": "red"}, "unknown push fields"),
]


def test_bad_definitions_are_clear_422s(api):
    setup_orders(api)
    for change, needle in BAD:
        body = {"name": "p", "view": "to_push", "url": URL, "log_time_field": "last pushed", **change}
        r = api.post("/api/pushes", json=body)
        assert r.status_code == 422, (change, r.text)
        error = r.json()["error"]
        assert needle in error["message"], (change, error)
    assert api.get("/api/pushes").json()["pushes"] == []


def test_duplicate_name_is_409_and_unknown_push_404(api):
    setup_orders(api)
    make_push(api, URL, enabled=False)
    r = api.post("/api/pushes", json={"name": "out", "view": "to_push", "url": URL, "log_time_field": "last pushed"})
    assert r.status_code == 409
    for method, path in (("get", "/api/pushes/nope"), ("patch", "/api/pushes/nope"), ("delete", "/api/pushes/nope"), ("post", "/api/pushes/nope/run"), ("get", "/api/pushes/nope/deliveries")):
        kwargs = {"json": {}} if method == "patch" else {}
        r = getattr(api, method)(path, **kwargs)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path, r.text)


def test_private_targets_refused_unless_allowed(store, db_url):
    key, _ = create_key(store, "admin", ["admin"])
    settings = Settings(db=db_url, allow_private_targets=False)
    with TestClient(create_app(settings, store=store, run_worker=False)) as client:
        api = Api(client, key)
        setup_orders(api)
        for url in ("http://127.0.0.1:8080/hook", "http://localhost/hook", "http://169.254.169.254/latest", "http://[::1]/x", "http://10.1.2.3/x"):
            r = api.post("/api/pushes", json={"name": "p", "view": "to_push", "url": url, "log_time_field": "last pushed"})
            assert r.status_code == 422 and r.json()["error"]["code"] == "target_refused", (url, r.text)
        assert make_push(api, "https://erp.example.com/hook", enabled=False)["url"] == "https://erp.example.com/hook"
        r = api.patch("/api/pushes/out", json={"url": "http://192.168.1.1/"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "target_refused"


def test_only_admin_keys(api, store):
    setup_orders(api)
    make_push(api, URL, enabled=False)
    key, _ = create_key(store, "reader", ["read:to_push"])
    reader = api.with_key(key)
    assert reader.get("/api/pushes/out").status_code == 403
    assert reader.post("/api/pushes/out/run").status_code == 403
    assert reader.get("/api/pushes/out/deliveries").status_code == 403
    assert api.with_key(None).get("/api/pushes").status_code == 401


def test_patch_changes_fields_secret_and_enabled(api):
    setup_orders(api)
    make_push(api, URL, enabled=False, secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", headers={"Authorization": "Bearer x"})
    r = api.patch("/api/pushes/out", json={"min_interval": "5m", "format": "ndjson", "max_calls_per_day": 48})
    assert r.status_code == 200, r.text
    push = r.json()
    assert (push["min_interval"], push["format"], push["max_calls_per_day"]) == ("5m", "ndjson", 48)
    assert push["secret_set"] is True and push["headers"] == {"Authorization": "***"}, "untouched fields keep their values"
    assert api.patch("/api/pushes/out", json={"secret": None}).json()["secret_set"] is False
    assert api.patch("/api/pushes/out", json={"headers": {}}).json()["headers"] == {}
    r = api.patch("/api/pushes/out", json={"headers": {"X-New": "***"}})
    assert r.status_code == 422 and "no stored value" in r.json()["error"]["message"]
    assert api.patch("/api/pushes/out", json={"name": "other"}).status_code == 422
    assert api.patch("/api/pushes/out", json={"log_time_field": "total"}).status_code == 422
    assert api.patch("/api/pushes/out", json={"enabled": "yes"}).status_code == 422


def test_delete_removes_push_and_log(api):
    setup_orders(api)
    make_push(api, URL, enabled=False)
    assert api.delete("/api/pushes/out").status_code == 200
    assert api.get("/api/pushes/out").status_code == 404
    assert api.delete("/api/pushes/out").status_code == 404


def test_log_time_field_is_indexed(api, store):
    setup_orders(api)
    make_push(api, URL, enabled=False)
    with store.read() as conn:
        ds = conn.execute(sa.text("SELECT id, columns FROM pb_datasets WHERE name = 'orders'")).first()
        columns = ds.columns if isinstance(ds.columns, list) else __import__("json").loads(ds.columns)
        col = next(c["col"] for c in columns if c["name"] == "last pushed")
        indexes = sa.inspect(conn).get_indexes(f"ds_{ds.id}")
    # The log-time field leads an index (on PostgreSQL followed by _id, the order views read in).
    assert any(ix["column_names"] == ([col, "_id"] if store.dialect == "postgresql" else [col]) for ix in indexes), indexes


def test_run_refused_for_disabled_push(api):
    setup_orders(api)
    make_push(api, URL, enabled=False)
    r = api.post("/api/pushes/out/run")
    assert r.status_code == 409 and r.json()["error"]["code"] == "disabled"


def test_max_calls_per_day(api):
    with Receiver() as receiver:
        setup_orders(api)
        make_push(api, receiver.url + "/hook", max_calls_per_day=2, max_batch_rows=1)
        api.load("orders", orders(1, 2, 3, 4))
        assert receiver.wait_for(2, timeout=15)
        state = eventually(lambda: (s := api.get("/api/pushes/out").json()["state"])["calls_today"] == 2 and s)
        tomorrow = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).strftime("%Y-%m-%d")
        assert state["next_due_at"].startswith(tomorrow), state
        assert state["pending_deliveries"] == 2
        assert delivered_ids(receiver.requests) == [1, 2]
        assert stamped(api)[3] is None and stamped(api)[4] is None
        # Nothing more goes out today; a run by hand still does (and is counted).
        r = api.post("/api/pushes/out/run")
        assert r.json()["rows"] == 2 and delivered_ids(receiver.requests) == [1, 2, 3, 4]
        assert api.get("/api/pushes/out").json()["state"]["calls_today"] == 4


def test_min_interval_holds_new_data_until_due(api):
    with Receiver() as receiver:
        setup_orders(api)
        make_push(api, receiver.url + "/hook", min_interval="1h")
        api.load("orders", orders(1))
        assert receiver.wait_for(1, timeout=15)
        eventually(lambda: stamped(api)[1])
        api.load("orders", orders(2))
        state = api.get("/api/pushes/out").json()["state"]
        due = dt.datetime.fromisoformat(state["next_due_at"])
        last = dt.datetime.fromisoformat(state["last_run_at"])
        assert due - last == dt.timedelta(hours=1)
        assert not receiver.wait_for(2, timeout=1.5)  # held by the interval (a bound on waiting, not a timing)
        assert stamped(api)[2] is None
