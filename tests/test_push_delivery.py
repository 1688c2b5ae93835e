"""The push engine end to end, on SQLite and PostgreSQL: the real app and its worker, real receivers
on loopback. Calls are held open with ``Receiver.gate`` to check what happens while they are in flight."""
from __future__ import annotations

import json
from datetime import datetime
from urllib.parse import parse_qs

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.receivers import Receiver
from tests.test_push_support import delivered_ids, deliveries, eventually, make_push, orders, rows_of, setup_orders, stamped

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_rows_arrive_without_further_action_and_get_stamped(api, receiver):
    setup_orders(api)
    make_push(api, receiver.url + "/hook")
    api.load("orders", orders(1, 2, 3))
    assert receiver.wait_for(1, timeout=15)
    assert delivered_ids(receiver.requests) == [1, 2, 3]
    eventually(lambda: all(stamped(api).values()), message="all rows stamped")
    d = deliveries(api)
    assert len(d) == 1 and d[0]["status"] == "succeeded" and d[0]["rows"] == 3 and d[0]["rows_stamped"] == 3
    assert d[0]["attempts"][0]["status_code"] == 200
    # Stamped rows leave the view: nothing more is sent; new rows go out in a call of their own.
    api.load("orders", orders(4))
    assert receiver.wait_for(2, timeout=15)
    assert delivered_ids(receiver.requests[1:]) == [4]
    state = api.get("/api/pushes/out").json()["state"]
    assert state["status"] == "ok" and state["last_success_at"] and state["consecutive_failures"] == 0
    metrics = api.get("/metrics").text
    assert 'pushbase_push_deliveries_total{outcome="succeeded"}' in metrics
    assert "pushbase_push_rows_delivered_total" in metrics and "pushbase_push_delivery_seconds_bucket" in metrics


def test_form_format_is_one_json_parameter_like_agilebase(api, receiver):
    setup_orders(api)
    make_push(api, receiver.url + "/hook", format="form")
    api.load("orders", orders(1, 2))
    assert receiver.wait_for(1, timeout=15)
    request = receiver.requests[0]
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    params = parse_qs(request.text, strict_parsing=True)
    assert list(params) == ["json"] and len(params["json"]) == 1
    rows = json.loads(params["json"][0])
    assert [(r["order_id"], r["customer"], r["total"]) for r in rows] == [(1, "c1", 1.5), (2, "c2", 3.0)]
    assert all("_id" in r and r["last pushed"] is None for r in rows)


def test_ndjson_format(api, receiver):
    setup_orders(api)
    make_push(api, receiver.url + "/hook", format="ndjson")
    api.load("orders", orders(1, 2))
    assert receiver.wait_for(1, timeout=15)
    request = receiver.requests[0]
    assert request.headers["content-type"] == "application/x-ndjson"
    assert request.text.endswith("\n") and [json.loads(x)["order_id"] for x in request.text.splitlines()] == [1, 2]


def test_batches_by_rows_go_out_in_order(api, receiver):
    setup_orders(api)
    make_push(api, receiver.url + "/hook", max_batch_rows=3, enabled=False)
    api.load("orders", orders(*range(1, 11)))
    assert api.patch("/api/pushes/out", json={"enabled": True}).status_code == 200
    assert receiver.wait_for(4, timeout=15)
    assert [len(rows_of(r)) for r in receiver.requests] == [3, 3, 3, 1]
    assert delivered_ids(receiver.requests) == list(range(1, 11))
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(set(ids)) == 4 and ids == sorted(ids)
    eventually(lambda: all(stamped(api).values()))


@pytest.mark.parametrize("fmt", ["json", "form", "ndjson"])
def test_batches_by_bytes_stay_under_the_limit(api, receiver, fmt):
    setup_orders(api)
    make_push(api, receiver.url + "/hook", format=fmt, max_batch_bytes=2048, enabled=False)
    api.load("orders", [{"order_id": i, "customer": "x" * 300, "total": 1.0} for i in range(1, 21)])
    api.patch("/api/pushes/out", json={"enabled": True})
    eventually(lambda: len(delivered_ids(receiver.requests)) >= 20, message="20 rows delivered")
    assert len(receiver.requests) > 1
    assert all(len(r.body) <= 2048 for r in receiver.requests)
    assert delivered_ids(receiver.requests) == list(range(1, 21))


def test_batches_cut_by_rows_then_by_bytes_keep_every_row_in_order(api, receiver):
    # Three small rows fill a batch by count; the large ones after them are cut by bytes.
    setup_orders(api)
    make_push(api, receiver.url + "/hook", max_batch_rows=3, max_batch_bytes=2048, enabled=False)
    small = [{"order_id": i, "customer": "a", "total": 1.0} for i in (1, 2, 3)]
    large = [{"order_id": i, "customer": "x" * 800, "total": 1.0} for i in (4, 5, 6, 7)]
    api.load("orders", small + large)
    api.patch("/api/pushes/out", json={"enabled": True})
    eventually(lambda: len(delivered_ids(receiver.requests)) >= 7, message="7 rows delivered")
    assert [len(rows_of(r)) for r in receiver.requests] == [3, 2, 2]
    assert delivered_ids(receiver.requests) == list(range(1, 8))
    assert all(len(r.body) <= 2048 for r in receiver.requests)


def test_signature_verifies_with_standardwebhooks(api, receiver):
    setup_orders(api)
    make_push(api, receiver.url + "/hook", secret=SECRET)
    api.load("orders", orders(1))
    assert receiver.wait_for(1, timeout=15)
    request = receiver.requests[0]
    payload = Webhook(SECRET).verify(request.body, request.headers)
    assert [r["order_id"] for r in payload] == [1]
    assert request.headers["webhook-id"].startswith("msg_")
    assert api.get("/api/pushes/out").json()["secret_set"] is True
    assert SECRET not in api.get("/api/pushes/out").text


@pytest.mark.parametrize("fmt", ["form", "ndjson"])
def test_non_json_formats_verify_as_docs_show(api, receiver, fmt):
    # docs/pushes.md's receiver: verify the raw body without parsing it, then decode by content type.
    setup_orders(api)
    make_push(api, receiver.url + "/hook", secret=SECRET, format=fmt)
    api.load("orders", orders(1, 2))
    assert receiver.wait_for(1, timeout=15)
    request = receiver.requests[0]
    Webhook(SECRET).verify(request.body, request.headers, json_parse=False)
    tampered = request.body.replace(b"c1", b"c9")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, request.headers, json_parse=False)
    assert [r["order_id"] for r in rows_of(request)] == [1, 2]


def test_custom_header_is_sent_but_never_shown_or_logged(api, receiver, caplog):
    token = "Bearer s3cr3t-token-value"
    setup_orders(api)
    caplog.set_level("DEBUG")
    make_push(api, receiver.url + "/hook", headers={"Authorization": token, "X-Tenant": "acme"})
    api.load("orders", orders(1))
    assert receiver.wait_for(1, timeout=15)
    assert receiver.requests[0].headers["authorization"] == token
    assert receiver.requests[0].headers["x-tenant"] == "acme"
    shown = api.get("/api/pushes/out")
    assert shown.json()["headers"] == {"Authorization": "***", "X-Tenant": "***"}
    assert token not in shown.text and "s3cr3t" not in api.get("/api/pushes").text
    assert "s3cr3t" not in api.get("/api/pushes/out/deliveries").text
    # Sending the redacted value back keeps the stored one.
    r = api.patch("/api/pushes/out", json={"headers": {"Authorization": "***"}})
    assert r.status_code == 200 and r.json()["headers"] == {"Authorization": "***"}
    api.load("orders", orders(2))
    assert receiver.wait_for(2, timeout=15)
    assert receiver.requests[1].headers["authorization"] == token and "x-tenant" not in receiver.requests[1].headers
    eventually(lambda: all(stamped(api).values()))
    assert "s3cr3t" not in caplog.text


def test_nothing_is_stamped_before_the_2xx(api, receiver):
    setup_orders(api)
    receiver.gate()
    make_push(api, receiver.url + "/hook")
    api.load("orders", orders(1, 2))
    assert receiver.wait_for(1, timeout=15)
    assert stamped(api) == {1: None, 2: None}
    assert deliveries(api)[0]["status"] == "pending"
    receiver.release()
    eventually(lambda: all(stamped(api).values()))
    assert deliveries(api)[0]["status"] == "succeeded"


def test_row_added_while_call_is_held_is_not_stamped_but_sent_next(api, receiver):
    setup_orders(api)
    receiver.gate()
    make_push(api, receiver.url + "/hook")
    api.load("orders", orders(1, 2))
    assert receiver.wait_for(1, timeout=15)
    api.load("orders", orders(3))
    receiver.respond(200)  # the next call answers at once
    receiver.release()
    eventually(lambda: stamped(api)[1] and stamped(api)[2])
    assert receiver.wait_for(2, timeout=15)
    assert delivered_ids(receiver.requests) == [1, 2, 3]
    eventually(lambda: stamped(api)[3])
    first, second = sorted(deliveries(api), key=lambda d: d["id"])
    assert (first["rows"], first["rows_stamped"], second["rows"]) == (2, 2, 1)


def test_row_changed_while_call_is_held_is_pushed_again(api, receiver):
    setup_orders(api)
    receiver.gate()
    make_push(api, receiver.url + "/hook")
    api.load("orders", orders(1, 2))
    assert receiver.wait_for(1, timeout=15)
    api.load("orders", [{"order_id": 2, "customer": "changed", "total": 9.0}])
    receiver.respond(200)
    receiver.release()
    assert receiver.wait_for(2, timeout=15)
    again = rows_of(receiver.requests[1])
    assert [(r["order_id"], r["customer"]) for r in again] == [(2, "changed")]
    eventually(lambda: all(stamped(api).values()))
    first = min(deliveries(api), key=lambda d: d["id"])
    assert first["rows"] == 2 and first["rows_stamped"] == 1


def test_stamping_does_not_change_last_modified(api, receiver):
    setup_orders(api)
    before = {r["order_id"]: r for r in api.all_rows("/api/datasets/orders/rows")}
    make_push(api, receiver.url + "/hook")
    api.load("orders", orders(1, 2))
    before = {r["order_id"]: r["last modified [auto]"] for r in api.all_rows("/api/datasets/orders/rows")}
    assert receiver.wait_for(1, timeout=15)
    eventually(lambda: all(stamped(api).values()))
    after = {r["order_id"]: r for r in api.all_rows("/api/datasets/orders/rows")}
    assert {k: v["last modified [auto]"] for k, v in after.items()} == before
    assert all(v["last pushed"] >= v["last modified [auto]"] for v in after.values())


def test_500_stamps_nothing_and_retries_the_same_delivery(api, receiver):
    setup_orders(api)
    receiver.respond(500, body="database down")
    make_push(api, receiver.url + "/hook", retry_schedule=["0.2s", "0.2s", "0.2s"], failing_after=2, secret=SECRET)
    api.load("orders", orders(1, 2))
    assert receiver.wait_for(3, timeout=15)
    assert stamped(api) == {1: None, 2: None}
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    bodies = {r.body for r in receiver.requests}
    assert len(ids) == 1 and len(bodies) == 1
    for request in receiver.requests:  # each attempt signed afresh, all valid
        Webhook(SECRET).verify(request.body, request.headers)
    state = eventually(lambda: (s := api.get("/api/pushes/out").json()["state"])["status"] == "failing" and s)
    assert state["consecutive_failures"] >= 2 and "HTTP 500" in state["last_error"]
    d = deliveries(api)[0]
    assert d["status"] == "pending" and d["attempts"][0]["status_code"] == 500
    assert d["attempts"][0]["response"] == "database down"
    receiver.respond(200)
    eventually(lambda: all(stamped(api).values()), message="stamped after the endpoint recovers")
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert api.get("/api/pushes/out").json()["state"]["status"] == "ok"


def test_refused_connection_is_logged_and_retried(api, receiver):
    setup_orders(api)
    receiver.drop(reset=True)
    make_push(api, receiver.url + "/hook", retry_schedule=["0.2s"])
    api.load("orders", orders(1))
    eventually(lambda: len((deliveries(api) or [{}])[0].get("attempts", [])) >= 2)
    attempt = deliveries(api)[0]["attempts"][0]
    assert attempt["status_code"] is None and attempt["error"]
    assert stamped(api) == {1: None}


def test_410_disables_the_push(api, receiver):
    setup_orders(api)
    receiver.respond(410)
    make_push(api, receiver.url + "/hook", retry_schedule=["0.1s"])
    api.load("orders", orders(1))
    shown = eventually(lambda: (p := api.get("/api/pushes/out").json())["enabled"] is False and p)
    assert shown["state"]["status"] == "disabled" and "410" in shown["state"]["disabled_reason"]
    assert len(receiver.requests) == 1 and stamped(api) == {1: None}
    # Enabled again by a person: the same batch goes out again with its webhook-id.
    receiver.respond(200)
    assert api.patch("/api/pushes/out", json={"enabled": True}).json()["enabled"] is True
    assert receiver.wait_for(2, timeout=15)
    assert receiver.requests[1].headers["webhook-id"] == receiver.requests[0].headers["webhook-id"]
    eventually(lambda: all(stamped(api).values()))


def test_429_retry_after_is_honoured(api, receiver):
    setup_orders(api)
    receiver.respond(429, headers={"Retry-After": "3600"})
    make_push(api, receiver.url + "/hook", retry_schedule=["0.1s"])
    api.load("orders", orders(1))
    assert receiver.wait_for(1, timeout=15)
    shown = eventually(lambda: (p := api.get("/api/pushes/out").json())["state"]["retry_at"] and p)
    attempt = deliveries(api)[0]["attempts"][0]
    assert "Retry-After" in attempt["reason"]
    # The retry time honours the hour asked for, not the 0.1s of the schedule.
    wait = datetime.fromisoformat(shown["state"]["retry_at"]) - datetime.fromisoformat(attempt["at"])
    assert wait.total_seconds() >= 3500
    assert len(receiver.requests) == 1


def test_a_hanging_endpoint_does_not_delay_another_push(api):
    with Receiver() as slow, Receiver() as fast:
        setup_orders(api)
        api.patch("/api/datasets/orders", json={"add_columns": [{"name": "pushed fast", "type": "datetime"}]})
        api.post("/api/views", json={"name": "to_push_fast", "dataset": "orders", "filters": [{"field": "pushed fast", "op": "is_empty"}]})
        slow.hang()
        make_push(api, slow.url + "/hook", name="slow", timeout="30s")
        make_push(api, fast.url + "/hook", name="fast", view="to_push_fast", log_time_field="pushed fast")
        api.load("orders", orders(1))
        assert slow.wait_for(1, timeout=15)
        # The slow call is still open; the fast push delivers meanwhile.
        assert fast.wait_for(1, timeout=15)
        assert delivered_ids(fast.requests) == [1]
        eventually(lambda: api.all_rows("/api/datasets/orders/rows")[0]["pushed fast"])
        assert deliveries(api, "slow")[0]["status"] == "pending"
        slow.release()


def test_run_now_ignores_the_interval_and_answers_with_what_it_sent(api, receiver):
    setup_orders(api)
    make_push(api, receiver.url + "/hook", min_interval="1d", max_batch_rows=2)
    api.load("orders", orders(1, 2, 3))
    assert receiver.wait_for(2, timeout=15)  # the first run is allowed at once
    api.load("orders", orders(4))
    eventually(lambda: all(v for k, v in stamped(api).items() if k < 4))
    assert api.get("/api/pushes/out").json()["state"]["next_due_at"] is not None
    r = api.post("/api/pushes/out/run")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "succeeded" and body["rows"] == 1 and body["rows_stamped"] == 1
    assert [d["rows"] for d in body["deliveries"]] == [1] and body["deliveries"][0]["trigger"] == "manual"
    assert delivered_ids(receiver.requests) == [1, 2, 3, 4]
    r = api.post("/api/pushes/out/run")
    assert r.json()["status"] == "nothing_to_send" and r.json()["deliveries"] == []


def test_deliveries_newest_first_with_paging(api, receiver):
    setup_orders(api)
    make_push(api, receiver.url + "/hook", max_batch_rows=1)
    api.load("orders", orders(1, 2, 3))
    assert receiver.wait_for(3, timeout=15)
    first = api.get("/api/pushes/out/deliveries", params={"limit": 2}).json()
    assert [d["rows"] for d in first["deliveries"]] == [1, 1] and first["next"]
    ids = [d["id"] for d in first["deliveries"]]
    rest = api.get("/api/pushes/out/deliveries", params={"limit": 2, "after": first["next"]}).json()
    ids += [d["id"] for d in rest["deliveries"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 3 and rest["next"] is None


def test_each_delivered_call_is_published_to_the_view_stream(api, store, receiver):
    heard: list[dict] = []
    store.add_listener(lambda channel, payload: channel == "pushbase_view_pushed" and heard.append(json.loads(payload)))
    setup_orders(api)
    make_push(api, receiver.url + "/hook")
    api.load("orders", orders(1, 2))
    assert receiver.wait_for(1, timeout=15)
    # On PostgreSQL a NOTIFY reaches every schema of the database: tests running beside this one
    # publish events of views with the same name, so this call's event is found by its webhook-id.
    webhook_id = receiver.requests[0].headers["webhook-id"]
    event = eventually(lambda: next((e for e in heard if e["webhook_id"] == webhook_id), None))
    assert event["view"] == "to_push" and event["push"] == "out" and event["rows"] == 2 and event["rows_stamped"] == 2 and event["at"]


def test_a_run_by_hand_and_the_worker_never_work_a_push_at_once(api, receiver):
    import threading

    setup_orders(api)
    make_push(api, receiver.url + "/hook", min_interval="1d")
    api.load("orders", orders(1))
    assert receiver.wait_for(1, timeout=15)  # the first run is allowed at once; the next not for a day
    eventually(lambda: stamped(api)[1])
    receiver.gate()
    api.load("orders", orders(2))
    answer: dict = {}
    manual = threading.Thread(target=lambda: answer.update(api.post("/api/pushes/out/run").json()))
    manual.start()
    assert receiver.wait_for(2, timeout=15)  # the run by hand is held open by the receiver
    # Now the worker wants the push too (pending batch, no interval): it must wait for the lease.
    api.patch("/api/pushes/out", json={"min_interval": 0})
    api.load("orders", orders(3))
    assert not receiver.wait_for(3, timeout=1.5)
    receiver.respond(200)
    receiver.release()
    manual.join(20)
    assert answer["status"] == "succeeded" and answer["rows"] == 1
    eventually(lambda: all(stamped(api).values()))
    assert delivered_ids(receiver.requests) == [1, 2, 3]
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("fmt, max_batch_bytes", [("json", 1_000_000), ("ndjson", 1_000_000), ("form", 1_000_000), ("json", 1024)])
def test_pushed_rows_are_the_rows_a_pull_of_the_view_gives(api, receiver, fmt, max_batch_bytes):
    # Every column type, a nested field and calculations of types converted on the way out, in one call
    # and cut by bytes (row by row): each value is written as the pull API writes it.
    sample = {"id": 1, "name": "Zoë \"q\" \u2028", "n": 0.1, "qty": 7, "ok": True, "day": "2024-02-29", "at": "2024-02-29T10:11:12.5Z",
              "tags": [1, {"a": None}], "customer": {"city": "Oslo"}, "last pushed": "2024-01-01T00:00:00Z"}
    assert api.post("/api/datasets", json={"name": "typed", "sample": sample, "unique_id": ["id"]}).status_code == 201
    fields = ["id", "name", "n", "qty", "ok", "day", "at", "tags", "customer.city", "later", "big", "modified"]
    calculations = [{"name": "later", "formula": "{at} + interval '1 day'"}, {"name": "big", "formula": "{n} > 1"},
                    {"name": "modified", "formula": "{last modified [auto]}"}]
    r = api.post("/api/views", json={"name": "typed_out", "dataset": "typed", "columns": fields, "calculations": calculations,
                                     "filters": [{"field": "last pushed", "op": "is_empty"}], "sort": [{"field": "id", "direction": "asc"}]})
    assert r.status_code == 201, r.text
    rows = [{**sample, "last pushed": None},
            {"id": 2, "name": "ø" * 300, "n": -2.5e-7, "qty": -3, "ok": False, "day": "1969-12-31", "at": "1969-12-31T23:59:59.999999Z",
             "tags": None, "customer": {"city": None}},
            {"id": 3, "name": None, "n": 12345678.125, "ok": None, "at": None, "tags": {"deep": [True, 1.0]}}]
    api.load("typed", rows)
    pulled = api.all_rows("/api/views/typed_out/rows")
    assert [row["id"] for row in pulled] == [1, 2, 3]
    assert pulled[0]["at"] == "2024-02-29T10:11:12.500000Z" and pulled[0]["later"] == "2024-03-01T10:11:12.500000Z"
    assert pulled[1]["ok"] is False and pulled[2]["ok"] is None and pulled[1]["big"] is False
    lines = api.get("/api/views/typed_out/rows", params={"format": "ndjson"}).content
    make_push(api, receiver.url + "/hook", view="typed_out", format=fmt, max_batch_bytes=max_batch_bytes)
    eventually(lambda: sum(len(rows_of(r)) for r in receiver.requests) == 3, message="three rows pushed")
    assert [row for r in receiver.requests for row in rows_of(r)] == pulled
    if max_batch_bytes < 2000:
        assert len(receiver.requests) > 1
    if fmt == "ndjson":  # byte for byte, too: the lines of a pull
        assert b"".join(r.body for r in receiver.requests) == lines
