"""Custom actions and view event streams, against real receivers."""
from __future__ import annotations

import threading
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
from standardwebhooks import Webhook

from pushbase.keys import create_key

from .conftest import admin_key
from .receivers import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def view(api):
    cols = [{"name": "order_id", "type": "integer"}, {"name": "email", "type": "string"}]
    api.post("/api/datasets", json={"name": "customers", "columns": cols, "unique_id": ["order_id"]})
    api.load("customers", [{"order_id": i, "email": f"u{i}@x.test"} for i in range(1, 4)])
    assert api.post("/api/views", json={"name": "renewals", "dataset": "customers"}).status_code == 201
    return api


def test_action_pushes_current_result_and_returns_the_answer(view):
    with Receiver() as rx:
        rx.respond(200, body=b'{"invoices": 3}', headers={"content-type": "application/json"})
        r = view.post("/api/views/renewals/actions", json={"name": "bill", "label": "Send to billing", "url": rx.url + "/bill",
                                                          "secret": SECRET, "headers": {"Authorization": "Bearer t0p"}})
        assert r.status_code == 201, r.text
        assert r.json()["headers"] == {"Authorization": "***"} and "secret" not in r.json()
        listed = view.get("/api/views/renewals/actions").json()["actions"]
        assert [a["label"] for a in listed] == ["Send to billing"]
        run = view.post("/api/views/renewals/actions/bill/run").json()
        assert run["status_code"] == 200 and run["response"] == {"invoices": 3} and run["rows"] == 3
        sent = rx.requests[-1]
        assert [row["email"] for row in orjson.loads(sent.body)] == ["u1@x.test", "u2@x.test", "u3@x.test"]
        assert sent.headers["authorization"] == "Bearer t0p"
        Webhook(SECRET).verify(sent.body, {k: v for k, v in sent.headers.items() if k.startswith("webhook-")})
        # Actions never stamp or change the data.
        assert len(view.all_rows("/api/views/renewals/rows")) == 3


def test_action_form_format_and_failing_endpoint(view):
    with Receiver() as rx:
        view.post("/api/views/renewals/actions", json={"name": "f", "url": rx.url + "/f", "format": "form"})
        rx.respond(500, body=b"down")
        run = view.post("/api/views/renewals/actions/f/run").json()
        assert run["status_code"] == 500 and run["ok"] is False and run["response"] == "down"
        form = parse_qs(rx.requests[-1].body.decode())
        assert len(orjson.loads(form["json"][0])) == 3


def test_action_urls_obey_the_private_address_rule(view, store, settings):
    from pushbase.web import create_app
    from starlette.testclient import TestClient
    import dataclasses

    strict = dataclasses.replace(settings, allow_private_targets=False)
    key, _ = create_key(store, "a", ["admin"])
    with TestClient(create_app(strict, store=store, run_worker=False)) as client:
        r = client.post("/api/views/renewals/actions", json={"name": "x", "url": "http://127.0.0.1:9/x"}, headers={"x-api-key": key})
        assert r.status_code == 422 and r.json()["error"]["code"] == "target_refused"
        r = client.post("/api/views/renewals/actions", json={"name": "y", "url": "http://169.254.169.254/latest"}, headers={"x-api-key": key})
        assert r.status_code == 422


def test_events_stream_each_action_run(tmp_path, server_factory):
    db = str(tmp_path / "ev.db")
    key = admin_key(db)
    server = server_factory(db)
    h = {"x-api-key": key}
    httpx.post(server.url + "/api/datasets", json={"name": "d", "columns": [{"name": "a", "type": "integer"}]}, headers=h)
    httpx.post(server.url + "/api/datasets/d/data?wait=true", json=[{"a": 1}], headers=h)
    httpx.post(server.url + "/api/views", json={"name": "v", "dataset": "d"}, headers=h)
    with Receiver() as rx:
        httpx.post(server.url + "/api/views/v/actions", json={"name": "go", "url": rx.url + "/go"}, headers=h)
        frames: list[str] = []
        subscribed = threading.Event()

        def listen() -> None:
            with httpx.stream("GET", server.url + "/api/views/v/events", headers=h, timeout=30) as response:
                for line in response.iter_lines():
                    if line.startswith(": subscribed"):
                        subscribed.set()
                    if line.startswith("data: "):
                        frames.append(line[6:])
                        return

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        assert subscribed.wait(20)
        httpx.post(server.url + "/api/views/v/actions/go/run", headers=h)
        thread.join(20)
        assert frames, "no event arrived"
        event = orjson.loads(frames[0])
        assert event["view"] == "v" and event["action"] == "go" and event["rows"] == 1


def test_events_need_the_read_scope(view, store):
    key, _ = create_key(store, "other", ["read:elsewhere"])
    assert view.with_key(key).get("/api/views/renewals/events").status_code == 403


def test_a_quiet_event_stream_sends_keep_alives_and_then_the_event(store, monkeypatch):
    import asyncio

    from pushbase import subscriptions

    monkeypatch.setattr(subscriptions, "KEEPALIVE_SECONDS", 0.05)

    async def read() -> list[bytes]:
        stream = subscriptions.follow(store, "v")
        got = [await stream.__anext__(), await stream.__anext__(), await stream.__anext__()]  # subscribed, 2 keep-alives
        await asyncio.to_thread(subscriptions.publish, store, "v", {"event": "x"})
        while not got[-1].startswith(b"id:"):
            got.append(await stream.__anext__())
        await stream.aclose()
        return got

    got = asyncio.run(read())
    assert got[0] == b": subscribed\n\n" and got[1] == got[2] == b": keep-alive\n\n"
    assert got[-1].startswith(b"id: 1\nevent: push\ndata: ") and b'"view":"v"' in got[-1].replace(b" ", b"")
