"""The "what is new" recipes of the Agilebase pages, and rows that start to match because of time."""
from __future__ import annotations

import datetime as dt


from tests.test_push_support import delivered_ids, eventually, make_push, orders, rows_of, setup_orders, stamped

NEEDS_PUSHING = [{"name": "needs pushing", "formula": "is_empty({last pushed}) or {last modified [auto]} > {last pushed}"}]


def test_modified_since_last_pushed_does_not_loop(api, receiver):
    setup_orders(api, view_filters=[{"field": "needs pushing", "op": "equals", "value": True}], calculations=NEEDS_PUSHING)
    make_push(api, receiver.url + "/hook")
    api.load("orders", orders(1, 2, 3))
    assert receiver.wait_for(1, timeout=15)
    eventually(lambda: all(stamped(api).values()))
    assert api.all_rows("/api/views/to_push/rows") == []  # stamping did not make the rows "modified"
    # Sweeps (every second in tests) find nothing more to send.
    assert not receiver.wait_for(2, timeout=2.5)
    # A real change is pushed again, alone.
    row_2 = next(r for r in api.all_rows("/api/datasets/orders/rows") if r["order_id"] == 2)
    assert api.patch(f"/api/datasets/orders/rows/{row_2['_id']}", json={"customer": "new name"}).status_code == 200
    assert receiver.wait_for(2, timeout=15)
    assert [(r["order_id"], r["customer"], r["needs pushing"]) for r in rows_of(receiver.requests[1])] == [(2, "new name", True)]
    eventually(lambda: api.all_rows("/api/views/to_push/rows") == [])
    assert len(receiver.requests) == 2


def test_agilebase_formula_alone_selects_rows_changed_after_a_push(api, receiver):
    calc = [{"name": "needs pushing", "formula": "{last modified [auto]} > {last pushed}"}]
    setup_orders(api, view_filters=[{"field": "needs pushing", "op": "equals", "value": True}], calculations=calc)
    api.load("orders", orders(1))
    assert api.all_rows("/api/views/to_push/rows") == []  # never pushed: last pushed is empty, so not selected
    api.patch(f"/api/datasets/orders/rows/{api.all_rows('/api/datasets/orders/rows')[0]['_id']}", json={"last pushed": "2000-01-01T00:00:00Z"})
    make_push(api, receiver.url + "/hook")
    assert receiver.wait_for(1, timeout=15)
    eventually(lambda: api.all_rows("/api/views/to_push/rows") == [])


def test_never_pushed(api, receiver):
    setup_orders(api)  # filter: last pushed is_empty
    make_push(api, receiver.url + "/hook")
    api.load("orders", orders(1, 2))
    assert receiver.wait_for(1, timeout=15)
    eventually(lambda: all(stamped(api).values()))
    row_1 = api.all_rows("/api/datasets/orders/rows")[0]
    assert api.patch(f"/api/datasets/orders/rows/{row_1['_id']}", json={"customer": "changed"}).status_code == 200
    api.load("orders", orders(3))
    assert receiver.wait_for(2, timeout=15)
    assert delivered_ids(receiver.requests) == [1, 2, 3]  # the change to 1 is not "never pushed"


def test_not_yet_marked_received(api, receiver):
    api.post("/api/datasets", json={"name": "orders", "unique_id": ["order_id"], "columns": [
        {"name": "order_id", "type": "integer"}, {"name": "last pushed", "type": "datetime"}, {"name": "receipt id", "type": "string"}]})
    api.post("/api/views", json={"name": "to_push", "dataset": "orders", "filters": [{"field": "receipt id", "op": "is_empty"}],
                                 "sort": [{"field": "order_id", "direction": "asc"}]})
    make_push(api, receiver.url + "/hook", min_interval=0)
    api.load("orders", [{"order_id": 1}, {"order_id": 2}])
    assert receiver.wait_for(1, timeout=15)
    # The third party confirms row 1 only, by its _id.
    row_1 = next(r for r in rows_of(receiver.requests[0]) if r["order_id"] == 1)
    r = api.patch(f"/api/datasets/orders/rows/{row_1['_id']}", json={"receipt id": "R-1"})
    assert r.status_code == 200, r.text
    # The change wakes the push: row 2, still without a receipt, is sent again; row 1 is not.
    assert receiver.wait_for(2, timeout=15)
    assert [x["order_id"] for x in rows_of(receiver.requests[-1])] == [2]


def test_rows_that_match_because_of_time_are_found_by_the_sweep(api, receiver):
    api.post("/api/datasets", json={"name": "reminders", "unique_id": ["id"], "columns": [
        {"name": "id", "type": "integer"}, {"name": "send at", "type": "datetime"}, {"name": "last pushed", "type": "datetime"}]})
    r = api.post("/api/views", json={"name": "due", "dataset": "reminders",
                                     "calculations": [{"name": "is due", "formula": "{send at} <= now()"}],
                                     "filters": [{"field": "is due", "op": "equals", "value": True},
                                                 {"field": "last pushed", "op": "is_empty"}]})
    assert r.status_code == 201, r.text
    make_push(api, receiver.url + "/hook", view="due")
    soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)).isoformat()
    api.load("reminders", [{"id": 1, "send at": soon}, {"id": 2, "send at": "2999-01-01T00:00:00Z"}])
    # No further load or change: only the sweep can notice that row 1 is due now.
    assert receiver.wait_for(1, timeout=20)
    assert [x["id"] for x in rows_of(receiver.requests[0])] == [1]
    rows = {x["id"]: x for x in api.all_rows("/api/datasets/reminders/rows")}
    eventually(lambda: {x["id"]: x for x in api.all_rows("/api/datasets/reminders/rows")}[1]["last pushed"])
    assert rows[2]["last pushed"] is None
