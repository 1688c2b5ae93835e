"""Tasks through the real app (both engines), the command line and the docs' worked example,
against real HTTP APIs on 127.0.0.1."""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from aiohttp import web
from starlette.testclient import TestClient

from pushbase.keys import create_key
from pushbase.settings import Settings
from pushbase.storage import Store
from pushbase.tasks.cli import parse_params
from pushbase.tasks.store import create_task
from pushbase.web import create_app
from tests.conftest import Api, admin_key, free_port, pushbase_cli
from tests.receivers import Receiver

PASSWORD = "pw-s3cr3t-value"
TOKEN = "tok-0123456789abcdef"
ITEMS = [{"code": f"C{i}", "rate": i + 0.5} for i in range(1, 6)]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "tasks.md"


class ThirdParty:
    """A small REST API in its own thread: a login issuing a token, paged data requiring it, one
    endpoint that fails and one that hangs."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._release: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "ThirdParty":
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/login", self.login)
        app.router.add_get("/rates", self.rates)
        app.router.add_get("/fail", self.fail)
        app.router.add_get("/hang", self.hang)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def _stop(self) -> None:
        assert self._release is not None
        self._release.set()
        await self.runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append({"method": request.method, "path": request.path, "query": dict(request.query), "headers": dict(request.headers)})
        return await handler(request)

    async def login(self, request: web.Request) -> web.Response:
        if await request.json() != {"user": "u", "password": PASSWORD}:
            return web.json_response({"error": "bad credentials"}, status=401)
        return web.json_response({"token": TOKEN})

    async def rates(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        page = int(request.query.get("page", "1"))
        return web.json_response({"base": request.query.get("base"), "results": ITEMS[(page - 1) * 2 : page * 2]})

    async def fail(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=500)

    async def hang(self, request: web.Request) -> web.Response:
        assert self._release is not None
        await self._release.wait()
        return web.json_response({})


@pytest.fixture
def third_party() -> Iterator[ThirdParty]:
    with ThirdParty() as server:
        yield server


@pytest.fixture
def secret_settings(settings: Settings) -> Settings:
    return Settings(db=settings.db, allow_private_targets=True, max_body_bytes=settings.max_body_bytes, sweep_seconds=1.0, secrets={"API_PW": PASSWORD})


@pytest.fixture
def tapi(store: Store, secret_settings: Settings) -> Iterator[Api]:
    """The real app (with its worker) whose settings hold the secret API_PW."""
    key, _ = create_key(store, "admin", ["admin"])
    with TestClient(create_app(secret_settings, store=store), raise_server_exceptions=False) as client:
        yield Api(client, key)


def sync_rates(url: str, **extra: Any) -> dict[str, Any]:
    """The DESIGN example, paging by a page parameter."""
    return {
        "name": "sync_rates",
        "steps": [
            {"name": "login", "method": "POST", "url": f"{url}/login", "json": {"user": "u", "password": "{{ secrets.API_PW }}"}},
            {
                "name": "fetch",
                "method": "GET",
                "url": f"{url}/rates",
                "params": {"base": "{{ params.base }}"},
                "headers": {"Authorization": "Bearer {{ login.data.token }}"},
                "paginate": {"page_param": "page", "items": "{{ response.data.results }}", "max_pages": 10},
            },
        ],
        "load": {"dataset": "rates", "rows": "{{ fetch.items }}"},
        "params": {"base": "EUR"},
        **extra,
    }


def make_rates(api: Api) -> None:
    r = api.post("/api/datasets", json={"name": "rates", "sample": {"code": "C1", "rate": 1.5}, "unique_id": ["code"]})
    assert r.status_code == 201, r.text


# --- definitions ----------------------------------------------------------------------------------


def test_crud(tapi: Api, third_party: ThirdParty) -> None:
    r = tapi.post("/api/tasks", json=sync_rates(third_party.url))
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["name"] == "sync_rates" and [s["name"] for s in task["steps"]] == ["login", "fetch"]
    assert task["steps"][0]["json"] == {"user": "u", "password": "{{ secrets.API_PW }}"}
    assert task["state"] == {"next_run_at": None, "schedule_running": False, "last_run": None}
    assert tapi.post("/api/tasks", json=sync_rates(third_party.url)).json()["error"]["code"] == "exists"

    assert [t["name"] for t in tapi.get("/api/tasks").json()["tasks"]] == ["sync_rates"]
    assert tapi.get("/api/tasks/sync_rates").json()["load"] == {"dataset": "rates", "rows": "{{ fetch.items }}"}

    r = tapi.patch("/api/tasks/sync_rates", json={"schedule": "*/15 * * * *", "description": "rates"})
    assert r.status_code == 200, r.text
    assert r.json()["schedule"] == "*/15 * * * *" and r.json()["description"] == "rates"
    assert r.json()["state"]["next_run_at"] is not None
    assert r.json()["steps"] == task["steps"]
    r = tapi.patch("/api/tasks/sync_rates", json={"enabled": False})
    assert r.json()["state"]["next_run_at"] is None and r.json()["schedule"] == "*/15 * * * *"
    assert tapi.patch("/api/tasks/sync_rates", json={"name": "other"}).status_code == 422
    assert tapi.patch("/api/tasks/sync_rates", json={"colour": "red"}).json()["error"]["code"] == "invalid_task"
    bad = tapi.patch("/api/tasks/sync_rates", json={"steps": []})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"] == ["steps"]

    assert tapi.delete("/api/tasks/sync_rates").json() == {"deleted": "sync_rates"}
    assert tapi.get("/api/tasks/sync_rates").status_code == 404
    assert tapi.get("/api/tasks/sync_rates/runs").json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "change, loc, words",
    [
        ({"name": "bad name"}, ["name"], "pattern"),
        ({"steps": []}, ["steps"], "at least 1"),
        ({"schedule": "every day"}, ["schedule"], "not a valid cron"),
        ({"schedule": "0 0 31 2 *"}, ["schedule"], "never comes due"),
        ({"load": {"dataset": "rates", "rows": "{{ fetch.items }"}}, ["load", "rows"], "syntax"),
        ({"steps": [{"name": "a", "url": "http://x.example/{{ b.data }}"}, {"name": "b", "url": "http://x.example/"}]}, [], "runs later"),
        ({"steps": [{"name": "a", "url": "http://x.example/", "method": "FETCH"}]}, ["steps", "0", "method"], "GET"),
        ({"steps": [{"name": "a", "url": "http://x.example/{% for x in y %}{% endfor %}"}]}, ["steps", "0", "url"], "statements"),
        ({"steps": [{"name": "params", "url": "http://x.example/"}]}, ["steps", "0", "name"], "reserved"),
    ],
)
def test_invalid_definitions_are_422_with_pydantic_details(tapi: Api, change: dict[str, Any], loc: list[str], words: str) -> None:
    r = tapi.post("/api/tasks", json={**sync_rates("http://x.example"), **change})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_task"
    assert words in error["message"]
    assert isinstance(error["details"], list) and error["details"][0]["loc"][: len(loc)] == loc
    assert tapi.get("/api/tasks").json()["tasks"] == []


def test_bad_requests_and_keys(tapi: Api, store: Store) -> None:
    assert tapi.post("/api/tasks", content=b"[1]", headers={"content-type": "application/json"}).json()["error"]["code"] == "not_an_object"
    assert tapi.post("/api/tasks", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert tapi.with_key(None).get("/api/tasks").status_code == 401
    ingest, _ = create_key(store, "ingest", ["ingest:rates"])
    assert tapi.with_key(ingest).post("/api/tasks/x/run", json={}).status_code == 403
    assert tapi.post("/api/tasks/nope/run", json={}).status_code == 404
    tapi.post("/api/tasks", json={"name": "t", "steps": [{"name": "a", "url": "http://x.example/"}]})
    assert tapi.post("/api/tasks/t/run", json={"params": [1]}).json()["error"]["code"] == "invalid_params"
    assert tapi.post("/api/tasks/t/run", json={"parms": {}}).status_code == 422
    assert tapi.get("/api/tasks/t/runs?limit=0").status_code == 422
    for run_id in ("9223372036854775808", "0", "-1", "x"):
        r = tapi.get(f"/api/tasks/t/runs/{run_id}")
        assert r.status_code == 422 and "error" in r.json(), (run_id, r.text)
    assert tapi.patch("/api/tasks/t", json={"schedule": "0 0 30 2 *"}).status_code == 422


def test_private_targets_refused_unless_allowed(store: Store, db_url: str) -> None:
    key, _ = create_key(store, "admin", ["admin"])
    strict = Settings(db=db_url, allow_private_targets=False)
    with TestClient(create_app(strict, store=store, run_worker=False), raise_server_exceptions=False) as client:
        api = Api(client, key)
        for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/{{ params.path }}", "http://[::1]/"):
            r = api.post("/api/tasks", json={"name": "t", "steps": [{"name": "a", "url": url}]})
            assert r.status_code == 422 and r.json()["error"]["code"] == "target_refused", (url, r.text)
        paged = {"name": "a", "url": "https://api.example/", "paginate": {"next_url": "http://192.168.1.1/next"}}
        assert api.post("/api/tasks", json={"name": "t", "steps": [paged]}).json()["error"]["code"] == "target_refused"
        # A host that comes from a template is judged when the run connects.
        r = api.post("/api/tasks", json={"name": "t", "steps": [{"name": "a", "url": "http://{{ params.host }}/x"}]})
        assert r.status_code == 201, r.text
        run = api.post("/api/tasks/t/run", json={"params": {"host": "127.0.0.1:9"}}).json()
        assert run["status"] == "failed" and "target refused" in run["error"]["reason"]
        assert api.patch("/api/tasks/t", json={"steps": [{"name": "a", "url": "http://127.0.0.1/"}]}).json()["error"]["code"] == "target_refused"


def test_literal_credentials_are_redacted_and_kept_on_patch(tapi: Api, third_party: ThirdParty) -> None:
    literal = {
        "name": "lit",
        "steps": [
            {
                "name": "login",
                "method": "POST",
                "url": f"{third_party.url}/login?api_key=k-1234567",
                "headers": {"Authorization": "Basic dXNlcjpwYXNz", "X-Trace": "abc"},
                "json": {"user": "u", "password": PASSWORD},
            }
        ],
    }
    shown = tapi.post("/api/tasks", json=literal).json()
    text = orjson.dumps(shown).decode()
    assert PASSWORD not in text and "dXNlcjpwYXNz" not in text and "k-1234567" not in text
    assert shown["steps"][0]["headers"] == {"Authorization": "***", "X-Trace": "abc"}
    # Sending the definition back as read keeps the stored credentials.
    r = tapi.patch("/api/tasks/lit", json={"steps": shown["steps"], "description": "same"})
    assert r.status_code == 200, r.text
    run = tapi.post("/api/tasks/lit/run", json={}).json()
    assert run["status"] == "succeeded", run
    assert run["steps"][0]["status"] == 200 and run["steps"][0]["data"] == {"token": "***"}
    sent = third_party.requests[-1]
    assert sent["headers"]["Authorization"] == "Basic dXNlcjpwYXNz" and sent["query"] == {"api_key": "k-1234567"}
    assert PASSWORD not in orjson.dumps(run).decode() and "k-1234567" not in orjson.dumps(run).decode()


# --- runs -----------------------------------------------------------------------------------------


def test_run_logs_in_pages_and_loads(tapi: Api, third_party: ThirdParty) -> None:
    make_rates(tapi)
    assert tapi.post("/api/tasks", json=sync_rates(third_party.url)).status_code == 201
    r = tapi.post("/api/tasks/sync_rates/run", json={"params": {"base": "USD"}})
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["status"] == "succeeded" and run["error"] is None and run["trigger"] == "api"
    assert isinstance(run["run_id"], int) and run["task"] == "sync_rates"
    login, fetch = run["steps"]
    assert login["name"] == "login" and login["status"] == 200 and login["outcome"] == "succeeded"
    assert login["request"]["method"] == "POST" and login["request"]["body"] == {"user": "u", "password": "***"}
    assert login["data"] == {"token": "***"}  # a credential-like field of an answer
    assert fetch["request"]["headers"]["Authorization"] == "***"
    assert len(fetch["pages"]) == 4 and fetch["status"] == 200  # 3 pages of items, then an empty one
    assert [p["results"] for p in fetch["data"]][:3] == [ITEMS[0:2], ITEMS[2:4], ITEMS[4:5]]
    assert all(isinstance(s["duration_ms"], int) for s in run["steps"])
    assert run["params"] == {"base": "USD"}
    assert [q["query"].get("base") for q in third_party.requests if q["path"] == "/rates"] == ["USD"] * 4
    # The load went through an ingest job, shown in the run.
    load = run["load"]
    assert load["dataset"] == "rates" and load["rows"] == 5 and load["status"] == "Complete" and load["jobId"].startswith("job_")
    status = tapi.get(f"/api/datasets/rates/data/{load['jobId']}/status").json()
    assert status["status"] == "Complete" and status["rows_inserted"] == 5
    rows = tapi.all_rows("/api/datasets/rates/rows")
    assert sorted((r["code"], r["rate"]) for r in rows) == sorted((i["code"], i["rate"]) for i in ITEMS)
    # Secrets never reach answers or records.
    assert PASSWORD not in r.text and TOKEN not in r.text
    listed = tapi.get("/api/tasks/sync_rates/runs")
    assert PASSWORD not in listed.text and TOKEN not in listed.text
    assert listed.json()["runs"][0] == run
    assert tapi.get(f"/api/tasks/sync_rates/runs/{run['run_id']}").json() == run
    assert tapi.get("/api/tasks/sync_rates").json()["state"]["last_run"]["status"] == "succeeded"


def test_failed_runs_answer_200_with_the_reason(tapi: Api, third_party: ThirdParty) -> None:
    url = third_party.url
    steps = [
        {"name": "first", "url": f"{url}/fail"},
        {"name": "second", "url": f"{url}/rates"},
    ]
    tapi.post("/api/tasks", json={"name": "fails", "steps": steps})
    run = tapi.post("/api/tasks/fails/run").json()
    assert run["status"] == "failed"
    assert run["error"]["at"] == "step" and run["error"]["step"] == "first" and "HTTP 500" in run["error"]["reason"]
    assert [s["outcome"] for s in run["steps"]] == ["failed", "skipped"]
    assert run["steps"][0]["status"] == 500

    tapi.post("/api/tasks", json={"name": "undefined", "steps": [{"name": "a", "url": f"{url}/rates?x={{{{ params.missing }}}}"}]})
    run = tapi.post("/api/tasks/undefined/run", json={}).json()
    assert run["status"] == "failed" and "run parameter 'missing' is not set" in run["error"]["reason"]
    assert "step 'a', url" in run["error"]["reason"]

    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    tapi.post("/api/tasks", json={"name": "escape", "steps": [{"name": "a", "method": "POST", "url": f"{url}/login", "json": escape}]})
    run = tapi.post("/api/tasks/escape/run", json={}).json()
    assert run["status"] == "failed" and run["steps"][0]["request"] is None

    tapi.post("/api/tasks", json={"name": "hangs", "steps": [{"name": "a", "url": f"{url}/hang", "timeout": "300ms"}]})
    run = tapi.post("/api/tasks/hangs/run", json={}).json()
    assert run["status"] == "failed" and "timeout after 0.3s" in run["error"]["reason"]

    tapi.post("/api/tasks", json={"name": "goes_on", "steps": [{"name": "a", "url": f"{url}/fail", "continue_on_error": True}, {"name": "b", "url": f"{url}/fail?again={{{{ a.status }}}}", "expect_json": True}]})
    run = tapi.post("/api/tasks/goes_on/run", json={}).json()
    assert [s["outcome"] for s in run["steps"]] == ["failed", "failed"] and run["error"]["step"] == "b"
    assert third_party.requests[-1]["query"] == {"again": "500"}

    statuses = [r["status"] for r in tapi.get("/api/tasks/fails/runs").json()["runs"]]
    assert statuses == ["failed"]


def test_a_load_that_does_not_match_fails_the_run_with_the_job(tapi: Api, third_party: ThirdParty) -> None:
    tapi.post("/api/datasets", json={"name": "rates", "columns": [{"name": "code", "type": "string"}, {"name": "rate", "type": "integer"}], "unique_id": ["code"]})
    tapi.post("/api/tasks", json=sync_rates(third_party.url))
    run = tapi.post("/api/tasks/sync_rates/run", json={}).json()
    assert run["status"] == "failed" and run["error"]["at"] == "load"
    assert run["load"]["status"] == "ErrorExit" and run["load"]["jobId"] in run["error"]["reason"]
    assert run["load"]["errors"][0]["column"] == "rate"
    assert tapi.get("/api/datasets/rates").json()["row_count"] == 0

    tapi.patch("/api/tasks/sync_rates", json={"load": {"dataset": "nope", "rows": "{{ fetch.items }}"}})
    run = tapi.post("/api/tasks/sync_rates/run", json={}).json()
    assert run["status"] == "failed" and "'nope' does not exist" in run["error"]["reason"]


def test_a_load_with_an_integer_beyond_64_bits_fails_its_job_naming_it(tapi: Api, third_party: ThirdParty) -> None:
    tapi.post("/api/datasets", json={"name": "rates", "columns": [{"name": "code", "type": "string"}, {"name": "rate", "type": "integer"}], "unique_id": ["code"]})
    tapi.post("/api/tasks", json=sync_rates(third_party.url, load={"dataset": "rates", "rows": [{"code": "a", "rate": "{{ 2 ** 70 }}"}]}))
    run = tapi.post("/api/tasks/sync_rates/run", json={}).json()
    assert run["status"] == "failed" and run["error"]["at"] == "load", run
    assert run["load"]["status"] == "ErrorExit" and run["load"]["errors"][0]["column"] == "rate"
    assert tapi.get("/api/datasets/rates").json()["row_count"] == 0


def test_a_run_record_keeps_integers_beyond_64_bits(tapi: Api, third_party: ThirdParty) -> None:
    tapi.post("/api/tasks", json={"name": "big", "steps": [{"name": "a", "method": "POST", "url": f"{third_party.url}/login",
                                                             "json": {"user": "u", "n": "{{ 2 ** 70 }}"}}]})
    run = tapi.post("/api/tasks/big/run", json={}).json()
    assert run["steps"][0]["request"]["body"] == {"user": "u", "n": 2**70} and run["steps"][0]["status"] == 401, run
    stored = tapi.get(f"/api/tasks/big/runs/{run['run_id']}").json()
    assert stored["steps"][0]["request"]["body"]["n"] == 2**70


def test_runs_page_newest_first(tapi: Api, third_party: ThirdParty) -> None:
    tapi.post("/api/tasks", json={"name": "t", "steps": [{"name": "a", "method": "POST", "url": f"{third_party.url}/login", "json": {"user": "u", "password": "{{ params.pw }}"}}]})
    ids = [tapi.post("/api/tasks/t/run", json={"params": {"pw": pw}}).json()["run_id"] for pw in ("x", PASSWORD, "y")]
    first = tapi.get("/api/tasks/t/runs?limit=2").json()
    assert [r["run_id"] for r in first["runs"]] == ids[::-1][:2] and first["next"]
    assert [r["status"] for r in first["runs"]] == ["failed", "succeeded"]
    rest = tapi.get("/api/tasks/t/runs", params={"limit": 2, "after": first["next"]}).json()
    assert [r["run_id"] for r in rest["runs"]] == [ids[0]] and rest["next"] is None
    assert tapi.get("/api/tasks/t/runs?after=zzz").status_code in (400, 422)


def test_views_rows_feed_a_step(tapi: Api, store: Store) -> None:
    pytest.importorskip("pushbase.views.formulas", reason="views are not built yet")
    tapi.post("/api/datasets", json={"name": "orders", "sample": {"order_id": 1, "total": 2.5}, "unique_id": ["order_id"]})
    tapi.load("orders", [{"order_id": i, "total": i * 10.0} for i in range(1, 6)])
    view = {"name": "orders_to_push", "dataset": "orders", "columns": ["order_id", "total"], "filters": [{"field": "total", "op": "gte", "value": 30}], "sort": [{"field": "order_id", "direction": "asc"}]}
    assert tapi.post("/api/views", json=view).status_code == 201
    with Receiver() as receiver:
        receiver.respond(200, body='{"ok": true}', headers={"Content-Type": "application/json"})
        step = {"name": "send", "method": "POST", "url": f"{receiver.url}/hook", "json": "{{ views.orders_to_push.rows }}"}
        tapi.post("/api/tasks", json={"name": "forward", "steps": [step, {**step, "name": "count", "json": {"n": "{{ views['orders_to_push'].rows | length }}"}}]})
        run = tapi.post("/api/tasks/forward/run", json={}).json()
        assert run["status"] == "succeeded", run
        sent = receiver.requests[0].json()
        assert [(r["order_id"], r["total"]) for r in sent] == [(3, 30.0), (4, 40.0), (5, 50.0)]
        assert receiver.requests[1].json() == {"n": 3}
        assert run["steps"][0]["request"]["body"] == sent

        tapi.post("/api/tasks", json={"name": "missing", "steps": [{**step, "json": "{{ views.nope.rows }}"}]})
        run = tapi.post("/api/tasks/missing/run", json={}).json()
        assert run["status"] == "failed" and "view 'nope'" in run["error"]["reason"]


def test_view_rows_are_capped(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pushbase.views.formulas", reason="views are not built yet")
    from pushbase.datasets import create_dataset
    from pushbase.errors import Invalid
    from pushbase.ingest import load_rows_now
    from pushbase.tasks.service import read_view_rows
    from pushbase.views.store import create_view

    create_dataset(store, {"name": "d", "sample": {"n": 1}})
    load_rows_now(store, "d", [{"n": i} for i in range(12)], source="test")
    create_view(store, {"name": "v", "dataset": "d"})
    assert len(read_view_rows(store, "v", limit=12)) == 12
    with pytest.raises(Invalid, match="more than 11 rows"):
        read_view_rows(store, "v", limit=11)


async def test_task_client_fails_oversized_answers() -> None:
    from pushbase.tasks.service import TaskClient

    with Receiver() as receiver:
        async with TaskClient(allow_private=True, max_body=10) as client:
            receiver.respond(200, body="x" * 11)
            big = await client.send("GET", f"{receiver.url}/big", timeout=5)
            receiver.respond(200, body='"0123456"')
            small = await client.send("GET", f"{receiver.url}/small", timeout=5)
    assert big.error == "the answer is larger than 10 bytes" and big.body == b""
    assert small.error is None and small.body == b'"0123456"'


# --- command line ---------------------------------------------------------------------------------


def test_a_patch_from_1_to_true_in_a_step_body_is_saved(tapi: Api, third_party: ThirdParty) -> None:
    step = {"name": "a", "method": "POST", "url": f"{third_party.url}/login", "json": {"flag": 1}}
    assert tapi.post("/api/tasks", json={"name": "flags", "steps": [step]}).status_code == 201
    r = tapi.patch("/api/tasks/flags", json={"steps": [{**step, "json": {"flag": True}}]})
    assert r.status_code == 200, r.text
    assert tapi.get("/api/tasks/flags").json()["steps"][0]["json"]["flag"] is True  # not 1 (== would not tell)


def test_parse_params() -> None:
    assert parse_params(["a=b=c", "n:=3", "ids:=[1,2]", "empty=", "t:=true"]) == {"a": "b=c", "n": 3, "ids": [1, 2], "empty": "", "t": True}
    for bad in ("novalue", "=x", "n:=nope"):
        with pytest.raises(ValueError):
            parse_params([bad])
    # read exactly, so that the run refuses it by name rather than getting a rounded float
    assert parse_params([f"id:={2 ** 70}"]) == {"id": 2**70}


def test_cli_runs_and_lists(db_url: str, store: Store, third_party: ThirdParty) -> None:
    from pushbase.datasets import create_dataset

    create_dataset(store, {"name": "rates", "sample": {"code": "C1", "rate": 1.5}, "unique_id": ["code"]})
    create_task(store, sync_rates(third_party.url, schedule="0 6 * * *"), allow_private=True)
    create_task(store, {"name": "broken", "steps": [{"name": "boom", "url": f"{third_party.url}/fail"}, {"name": "after", "url": third_party.url}]}, allow_private=True)
    env = {"PUSHBASE_ALLOW_PRIVATE_TARGETS": "1", "PUSHBASE_SECRET_API_PW": PASSWORD}

    ok = pushbase_cli("tasks", "run", "sync_rates", "--param", "base=GBP", db=db_url, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.splitlines()
    assert any(line.startswith("✓  login  succeeded  POST ") and "→ 200" in line for line in lines), ok.stdout
    assert any(line.startswith("✓  fetch  succeeded  GET ") and "4 page(s)" in line for line in lines), ok.stdout
    assert any(line.startswith("load into rates: 5 row(s), job job_") and "Complete" in line for line in lines), ok.stdout
    assert "succeeded in" in lines[-1]
    assert PASSWORD not in ok.stdout + ok.stderr and TOKEN not in ok.stdout + ok.stderr
    assert [q["query"]["base"] for q in third_party.requests if q["path"] == "/rates"][0] == "GBP"

    failed = pushbase_cli("tasks", "run", "broken", db=db_url, env=env)
    assert failed.returncode == 1
    assert "✗  boom  failed" in failed.stdout and "-  after  skipped" in failed.stdout and "HTTP 500" in failed.stdout
    assert "failed" in failed.stderr

    as_json = pushbase_cli("tasks", "run", "broken", "--json", db=db_url, env=env)
    assert as_json.returncode == 1 and orjson.loads(as_json.stdout)["status"] == "failed"

    assert pushbase_cli("tasks", "run", "nope", db=db_url, env=env).returncode == 2
    bad_param = pushbase_cli("tasks", "run", "broken", "--param", "x", db=db_url, env=env)
    assert bad_param.returncode == 2 and "NAME=TEXT" in bad_param.stderr

    listed = pushbase_cli("tasks", "list", db=db_url, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split("\t")[0]: line for line in listed.stdout.splitlines()[1:]}
    assert set(rows) == {"broken", "sync_rates"}
    assert "0 6 * * *" in rows["sync_rates"] and "succeeded" in rows["sync_rates"] and "failed" in rows["broken"]

    # The runs are recorded like API runs.
    from pushbase.tasks.store import list_runs

    runs = list_runs(store, "sync_rates")["runs"]
    assert [(r["status"], r["trigger"]) for r in runs] == [("succeeded", "cli")]


# --- the docs' worked example runs as written -----------------------------------------------------


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def test_docs_worked_example(tmp_path: Path, server_factory: Any) -> None:
    pytest.importorskip("pushbase.views.formulas", reason="views are not built yet")
    text = DOCS.read_text()
    api_port = free_port()
    (python_block,) = [b for b in _blocks(text, "python") if "example_api.py" in b]
    (tmp_path / "example_api.py").write_text(python_block)
    shop = subprocess.Popen([sys.executable, str(tmp_path / "example_api.py"), str(api_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        db = str(tmp_path / "tasks-demo.db")  # the database the page names
        env = {"PUSHBASE_SECRET_SHOP_PASSWORD": "hunter2"}
        server = server_factory(db, env=env)
        key = admin_key(db)
        shell_env = {**os.environ, **server.env, **env, "KEY": key, "PUSHBASE_DB": db, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        outputs = []
        for block in _blocks(text, "sh"):
            if "pushbase serve" in block:
                continue  # the test started both
            script = block.replace("127.0.0.1:8081", f"127.0.0.1:{api_port}").replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, env=shell_env, cwd=tmp_path, timeout=60)
            assert done.returncode == 0, f"{block}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}\n--- server\n{server.log()}"
            outputs.append(done.stdout)
        joined = "\n".join(outputs)
        assert '"status":"succeeded"' in joined and '"rows":6' in joined and '"status":"Complete"' in joined
        assert "[2,4,6]" in joined
        assert "hunter2" not in joined
    finally:
        shop.terminate()
        shop.wait(10)
