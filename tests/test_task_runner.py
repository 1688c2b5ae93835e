"""Running tasks against real HTTP APIs on loopback, through the real outbound client."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from pushbase.outbound import OutboundClient
from pushbase.tasks import MAX_DATA_BYTES, StepSpec, TaskSpec, is_sensitive_name, retry_delay, run_task

PASSWORD = "pw-s3cr3t-value"
TOKEN = "tok-0123456789abcdef"
API_KEY = "key-9876543210"
HUGE_ID = 123456789012345678901234567890  # beyond 64 bits: a float would lose its last digits
ITEMS = [{"id": i, "name": f"item {i}"} for i in range(1, 6)]


class LocalApi:
    """A real REST API on 127.0.0.1 (aiohttp): login issuing a token, paged data requiring it, and misbehaving endpoints."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.counters: dict[str, int] = {}
        self.release = asyncio.Event()
        self.url = ""
        app = web.Application()
        app.middlewares.append(self._record)
        app.router.add_post("/login", self.login)
        app.router.add_get("/rates", self.rates)
        app.router.add_get("/cursor", self.cursor)
        app.router.add_get("/paged", self.paged)
        app.router.add_get("/offset", self.offset)
        app.router.add_get("/endless", self.endless)
        app.router.add_get("/fail", self.fail)
        app.router.add_get("/limited", self.limited)
        app.router.add_get("/flaky", self.flaky)
        app.router.add_get("/html", self.html)
        app.router.add_get("/hang", self.hang)
        app.router.add_get("/big", self.big)
        app.router.add_get("/empty", self.empty)
        app.router.add_get("/huge", self.huge)
        app.router.add_route("*", "/echo", self.echo)
        self.app = app
        self.runner = web.AppRunner(app)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        self.release.set()
        await self.runner.cleanup()

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def count(self, name: str) -> int:
        self.counters[name] = self.counters.get(name, 0) + 1
        return self.counters[name]

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append({"method": request.method, "path": request.path, "query": list(request.query.items()), "headers": dict(request.headers)})
        return await handler(request)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"user": "u", "password": PASSWORD}:
            return web.json_response({"error": "bad credentials"}, status=401)
        return web.json_response({"token": TOKEN, "expires_in": 3600})

    async def rates(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        base = request.query.get("base", "USD")
        return web.json_response({"base": base, "results": [{"currency": "USD", "rate": 1.08}, {"currency": "GBP", "rate": 0.85}]})

    async def cursor(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        cursor = int(request.query.get("cursor", "0"))
        chunk = ITEMS[cursor : cursor + 2]
        following = cursor + 2
        if following >= len(ITEMS):
            nxt = None
        elif cursor == 0:
            nxt = f"{self.url}/cursor?cursor={following}"  # absolute
        else:
            nxt = f"/cursor?cursor={following}"  # relative
        return web.json_response({"results": chunk, "next": nxt})

    async def paged(self, request: web.Request) -> web.Response:
        page, per_page = int(request.query["page"]), int(request.query.get("per_page", "2"))
        return web.json_response({"page": page, "results": ITEMS[(page - 1) * per_page : page * per_page]})

    async def offset(self, request: web.Request) -> web.Response:
        offset, limit = int(request.query["offset"]), int(request.query["limit"])
        return web.json_response(ITEMS[offset : offset + limit])

    async def endless(self, request: web.Request) -> web.Response:
        page = int(request.query.get("page", "1"))
        return web.json_response({"results": [page], "next": f"{self.url}/endless?page={page + 1}"})

    async def fail(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=500)

    async def limited(self, request: web.Request) -> web.Response:
        if self.count("limited") <= 2:
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "7"})
        return web.json_response({"ok": True})

    async def flaky(self, request: web.Request) -> web.Response:
        if self.count("flaky") <= 2:
            return web.Response(status=503, text="unavailable")
        return web.json_response({"ok": True})

    async def html(self, request: web.Request) -> web.Response:
        return web.Response(text="<html><body>Login page</body></html>", content_type="text/html")

    async def hang(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return web.json_response({"late": True})

    async def big(self, request: web.Request) -> web.Response:
        return web.json_response({"rows": [{"i": i, "pad": "x" * 100} for i in range(2000)]})

    async def huge(self, request: web.Request) -> web.Response:
        return web.Response(content_type="application/json", text='{"id": %d, "ok": 1}' % HUGE_ID)

    async def empty(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def echo(self, request: web.Request) -> web.Response:
        raw = await request.read()
        content_type = request.headers.get("Content-Type", "")
        body: Any = None
        if raw and content_type.startswith("application/json"):
            body = msgspec.json.decode(raw)  # exact integers beyond 64 bits, as sent
        elif raw:
            body = [list(pair) for pair in (await request.post()).items()]
        return web.Response(content_type="application/json", body=msgspec.json.encode(
            {
                "method": request.method,
                "query": [list(pair) for pair in request.query.items()],
                "content_type": content_type,
                "accept": request.headers.get("Accept"),
                "authorization": request.headers.get("Authorization"),
                "headers": {k: v for k, v in request.headers.items() if k.lower().startswith("x-")},
                "body": body,
            }
        ))


@pytest_asyncio.fixture
async def api() -> AsyncIterator[LocalApi]:
    server = LocalApi()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def client() -> AsyncIterator[OutboundClient]:
    async with OutboundClient(allow_private=True) as outbound:
        yield outbound


class Sleeps:
    """Records retry waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Loader:
    """Stands in for the ingest job of the Push API."""

    def __init__(self, status: str = "Complete") -> None:
        self.calls: list[tuple[str, list[dict[str, Any]]]] = []
        self.status = status

    async def __call__(self, dataset: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append((dataset, rows))
        return {"jobId": f"job-{len(self.calls)}", "status": self.status, "rows_received": len(rows)}


def task(api: LocalApi, *steps: dict[str, Any], **extra: Any) -> TaskSpec:
    def absolute(step: dict[str, Any]) -> dict[str, Any]:
        url = step["url"]
        return {**step, "url": api.url + url if url.startswith("/") else url}

    return TaskSpec.model_validate({"name": "t", "steps": [absolute(s) for s in steps], **extra})


def dumped(result: Any) -> str:
    return orjson.dumps(result.to_json()).decode()


LOGIN = {"name": "login", "method": "POST", "url": "/login", "json": {"user": "u", "password": "{{ secrets.API_PW }}"}}
SECRETS = {"API_PW": PASSWORD, "API_KEY": API_KEY, "UNUSED": "never-read-value"}


# --- chaining and loading -----------------------------------------------------------------

@pytest.mark.asyncio
async def test_login_then_use_the_token_then_load_the_result(api: LocalApi, client: OutboundClient) -> None:
    spec = task(
        api,
        LOGIN,
        {"name": "fetch", "url": "/rates", "params": {"base": "{{ params.base }}"}, "headers": {"Authorization": "Bearer {{ login.data.token }}"}},
        load={"dataset": "rates", "rows": "{{ fetch.data.results }}"},
        params={"base": "USD"},
    )
    loader = Loader()
    result = await run_task(spec, sender=client, params={"base": "EUR"}, secrets=SECRETS, view_rows=None, load_rows=loader)

    assert result.status == "succeeded" and result.error is None
    assert loader.calls == [("rates", [{"currency": "USD", "rate": 1.08}, {"currency": "GBP", "rate": 0.85}])]
    body = result.to_json()
    assert body["load"] == {"dataset": "rates", "rows": 2, "jobId": "job-1", "status": "Complete", "rows_received": 2}
    login, fetch = body["steps"]
    assert (login["name"], login["outcome"], login["status"], login["attempts"]) == ("login", "succeeded", 200, 1)
    assert login["request"]["method"] == "POST"
    assert login["request"]["body"] == {"user": "u", "password": "***"}
    assert login["request"]["headers"]["Content-Type"] == "application/json"
    assert fetch["request"]["url"] == f"{api.url}/rates?base=EUR"
    assert fetch["request"]["headers"]["Authorization"] == "***"
    assert fetch["data"] == {"base": "EUR", "results": [{"currency": "USD", "rate": 1.08}, {"currency": "GBP", "rate": 0.85}]}
    assert isinstance(fetch["duration_ms"], int) and fetch["error"] is None
    assert body["params"] == {"base": "EUR"}
    text = dumped(result)
    assert PASSWORD not in text and TOKEN not in text
    assert login["data"] == {"token": "***", "expires_in": 3600}
    assert api.paths() == ["/login", "/rates"]


@pytest.mark.asyncio
async def test_secrets_never_reach_the_record_in_any_form(api: LocalApi, client: OutboundClient) -> None:
    spec = task(
        api,
        {
            "name": "send",
            "method": "POST",
            "url": "/echo",
            "params": {"api_key": "{{ secrets.API_KEY }}", "q": "x{{ secrets.API_PW }}"},
            "headers": {"X-Custom": "{{ secrets.API_PW }}", "Authorization": "Basic {{ ('u:' ~ secrets.API_PW) | b64encode }}"},
            "json": {"note": "pw is {{ secrets.API_PW }}", "nested": ["{{ secrets.API_KEY }}"], "plain": "{{ secrets.API_PW }}",
                     # made from a secret, in a field whose name says nothing: no encoding of the secret alone finds these
                     "z": "Basic {{ ('z:' ~ secrets.API_PW) | b64encode }}", "shout": "{{ secrets.API_PW | upper }}",
                     # ... also next to a plain secret in the same string
                     "mixed": "{{ secrets.API_KEY }}:{{ secrets.API_PW | upper }} and {{ ('m:' ~ secrets.API_PW) | b64encode }}"},
        },
        {"name": "after", "url": "/echo", "params": {"seen": "{{ send.data.body.note }}"}},
    )
    result = await run_task(spec, sender=client, params={}, secrets={**SECRETS, "API_PW": 'p&w ü/"q'}, view_rows=None, load_rows=None)
    assert result.status == "succeeded"
    # the API really received the secrets ...
    echoed = api.requests[0]
    assert ("api_key", API_KEY) in echoed["query"]
    # ... and the run record holds none of them, raw, URL-encoded, JSON-escaped or base64.
    text = dumped(result)
    secret = 'p&w ü/"q'
    forms = [API_KEY, secret, "p%26w", orjson.dumps(secret).decode()[1:-1], base64.b64encode(secret.encode()).decode()]
    forms += [base64.b64encode(f"u:{secret}".encode()).decode(), "u:p&w", secret.upper(), base64.b64encode(f"z:{secret}".encode()).decode(),
              base64.b64encode(f"m:{secret}".encode()).decode()]
    for form in forms:
        assert form not in text, form
    step = result.to_json()["steps"][0]
    assert step["request"]["headers"]["X-Custom"] == "***"
    assert step["request"]["headers"]["Authorization"] == "***"
    assert step["request"]["body"]["plain"] == "***"
    assert step["request"]["body"]["note"] == "pw is ***"
    assert step["request"]["body"]["z"] == "Basic ***" and step["request"]["body"]["shout"] == "***"
    assert step["request"]["body"]["mixed"] == "***:*** and ***"
    assert "api_key=%2A%2A%2A" in step["request"]["url"] or "api_key=***" in step["request"]["url"]
    assert "never-read-value" not in text


@pytest.mark.asyncio
async def test_params_defaults_and_native_values_in_bodies(api: LocalApi, client: OutboundClient) -> None:
    spec = task(
        api,
        {
            "name": "post",
            "method": "PUT",
            "url": "/echo?fixed=1&page=old",
            "params": {"page": "{{ params.page }}", "ids": ["{{ params.ids[0] }}", 9], "flag": True, "skip": None},
            "headers": {"X-Trace": "{{ params.page }}"},
            "json": {"limit": "{{ params.limit }}", "ids": "{{ params.ids }}", "text": "n={{ params.limit }}"},
        },
        params={"limit": 10, "page": 1},
    )
    result = await run_task(spec, sender=client, params={"ids": [4, 5], "page": 2}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "succeeded", result.error
    data = result.to_json()["steps"][0]["data"]
    assert data["method"] == "PUT"
    assert data["query"] == [["fixed", "1"], ["page", "2"], ["ids", "4"], ["ids", "9"], ["flag", "true"]]
    assert data["body"] == {"limit": 10, "ids": [4, 5], "text": "n=10"}
    assert data["content_type"] == "application/json" and data["accept"] == "application/json"
    assert data["headers"] == {"X-Trace": "2"}


@pytest.mark.asyncio
async def test_form_bodies_and_every_method(api: LocalApi, client: OutboundClient) -> None:
    steps = [
        {"name": f"m_{method.lower()}", "method": method, "url": "/echo", "form": {"a": "1", "rows": [{"x": 1}], "many": ["p", "q"], "n": 3}}
        for method in ("POST", "PUT", "PATCH", "DELETE")
    ]
    steps.append({"name": "m_get", "url": "/echo"})
    result = await run_task(task(api, *steps), sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "succeeded", result.error
    records = result.to_json()["steps"]
    assert [r["data"]["method"] for r in records] == ["POST", "PUT", "PATCH", "DELETE", "GET"]
    for record in records[:4]:
        assert record["data"]["content_type"] == "application/x-www-form-urlencoded"
        assert record["data"]["body"] == [["a", "1"], ["rows", '[{"x":1}]'], ["many", "p"], ["many", "q"], ["n", "3"]]
        assert record["request"]["body"] == {"a": "1", "rows": [{"x": 1}], "many": ["p", "q"], "n": 3}
    assert records[4]["data"]["body"] is None and records[4]["request"]["body"] is None


@pytest.mark.asyncio
async def test_view_rows_feed_a_step(api: LocalApi, client: OutboundClient) -> None:
    calls: list[str] = []

    def view_rows(name: str) -> list[dict[str, Any]]:
        calls.append(name)
        return [{"order_id": 1, "total": 9.5}, {"order_id": 2, "total": 3.0}]

    spec = task(
        api,
        {"name": "push", "method": "POST", "url": "/echo", "json": {"orders": "{{ views.orders_to_push.rows }}", "count": "{{ views.orders_to_push.rows | length }}"}},
    )
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=view_rows, load_rows=None)
    assert result.status == "succeeded"
    assert result.to_json()["steps"][0]["data"]["body"] == {"orders": [{"order_id": 1, "total": 9.5}, {"order_id": 2, "total": 3.0}], "count": 2}
    assert calls == ["orders_to_push"]


# --- pagination -----------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_pages_through_next_urls_absolute_and_relative(api: LocalApi, client: OutboundClient) -> None:
    spec = task(
        api,
        LOGIN,
        {
            "name": "fetch",
            "url": "/cursor",
            "headers": {"Authorization": "Bearer {{ login.data.token }}"},
            "paginate": {"next_url": "{{ response.data.next }}", "items": "{{ response.data.results }}"},
        },
        load={"dataset": "items", "rows": "{{ fetch.items }}"},
    )
    loader = Loader()
    result = await run_task(spec, sender=client, params={}, secrets=SECRETS, view_rows=None, load_rows=loader)
    assert result.status == "succeeded", result.error
    assert loader.calls == [("items", ITEMS)]
    fetch = result.to_json()["steps"][1]
    assert [page["results"] for page in fetch["data"]] == [ITEMS[0:2], ITEMS[2:4], ITEMS[4:5]]
    assert fetch["stopped"] == "no_next"
    assert [p["url"] for p in fetch["pages"]] == [f"{api.url}/cursor", f"{api.url}/cursor?cursor=2", f"{api.url}/cursor?cursor=4"]
    assert fetch["attempts"] == 3 and fetch["status"] == 200
    assert [r["headers"].get("Authorization") for r in api.requests[1:]] == [f"Bearer {TOKEN}"] * 3


@pytest.mark.asyncio
async def test_pages_with_a_page_parameter_until_a_page_is_empty(api: LocalApi, client: OutboundClient) -> None:
    spec = task(
        api,
        {"name": "fetch", "url": "/paged", "paginate": {"page_param": "page", "size": 2, "size_param": "per_page", "items": "{{ response.data.results }}"}},
        {"name": "summary", "method": "POST", "url": "/echo", "json": {"n": "{{ fetch.items | length }}", "pages": "{{ fetch.pages }}", "first": "{{ fetch.data[0].page }}"}},
    )
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "succeeded", result.error
    fetch, summary = result.to_json()["steps"]
    assert [p["url"] for p in fetch["pages"]] == [f"{api.url}/paged?page={n}&per_page=2" for n in (1, 2, 3, 4)]
    assert fetch["stopped"] == "empty"
    assert [page["results"] for page in fetch["data"]] == [ITEMS[0:2], ITEMS[2:4], ITEMS[4:5], []]
    assert summary["data"]["body"] == {"n": 5, "pages": 4, "first": 1}


@pytest.mark.asyncio
async def test_pages_with_an_offset_until_the_answer_is_empty(api: LocalApi, client: OutboundClient) -> None:
    spec = task(
        api,
        {"name": "fetch", "url": "/offset", "params": {"limit": 2}, "paginate": {"offset_param": "offset", "size": 2}},
        load={"dataset": "items", "rows": "{{ fetch.data[0] + fetch.data[1] + fetch.data[2] }}"},
    )
    loader = Loader()
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=None, load_rows=loader)
    assert result.status == "succeeded", result.error
    fetch = result.to_json()["steps"][0]
    assert [p["url"] for p in fetch["pages"]] == [f"{api.url}/offset?limit=2&offset={n}" for n in (0, 2, 4, 6)]
    assert fetch["data"] == [ITEMS[0:2], ITEMS[2:4], ITEMS[4:5], []]
    assert fetch["stopped"] == "empty"
    assert loader.calls == [("items", ITEMS)]


@pytest.mark.asyncio
async def test_paging_stops_at_max_pages(api: LocalApi, client: OutboundClient) -> None:
    spec = task(api, {"name": "fetch", "url": "/endless", "paginate": {"next_url": "{{ response.data.next }}", "max_pages": 3, "items": "{{ response.data.results }}"}})
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "succeeded"
    fetch = result.to_json()["steps"][0]
    assert fetch["stopped"] == "max_pages" and len(fetch["data"]) == 3
    assert api.paths() == ["/endless"] * 3


@pytest.mark.asyncio
async def test_a_failing_page_fails_the_step(api: LocalApi, client: OutboundClient) -> None:
    spec = task(api, {"name": "fetch", "url": "/cursor", "paginate": {"next_url": "{{ response.data.next }}"}})
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "failed"
    assert result.error == {"at": "step", "step": "fetch", "reason": 'page 1: HTTP 401: {"error": "unauthorized"}'}


# --- failures -------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_non_2xx_stops_the_run_at_that_step(api: LocalApi, client: OutboundClient) -> None:
    spec = task(api, {"name": "first", "url": "/echo"}, {"name": "broken", "url": "/fail"}, {"name": "never", "url": "/echo"}, load={"dataset": "d", "rows": "{{ first.data }}"})
    loader = Loader()
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=None, load_rows=loader)
    assert result.status == "failed"
    assert result.error == {"at": "step", "step": "broken", "reason": 'HTTP 500: {"error": "boom"}'}
    first, broken, never = result.to_json()["steps"]
    assert first["outcome"] == "succeeded"
    assert (broken["outcome"], broken["status"], broken["data"]) == ("failed", 500, {"error": "boom"})
    assert never["outcome"] == "skipped" and never["request"] is None
    assert api.paths() == ["/echo", "/fail"]
    assert loader.calls == [] and result.load is None


@pytest.mark.asyncio
async def test_continue_on_error_lets_later_steps_see_the_failure(api: LocalApi, client: OutboundClient) -> None:
    spec = task(
        api,
        {"name": "broken", "url": "/fail", "continue_on_error": True},
        {"name": "report", "method": "POST", "url": "/echo", "json": {"ok": "{{ broken.ok }}", "status": "{{ broken.status }}", "error": "{{ broken.data.error }}"}},
    )
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "succeeded" and result.error is None
    broken, report = result.to_json()["steps"]
    assert broken["outcome"] == "failed" and broken["error"].startswith("HTTP 500")
    assert report["data"]["body"] == {"ok": False, "status": 500, "error": "boom"}


@pytest.mark.asyncio
async def test_a_non_json_answer_fails_unless_text_is_expected(api: LocalApi, client: OutboundClient) -> None:
    result = await run_task(task(api, {"name": "html_page", "url": "/html"}), sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "failed"
    assert result.error is not None and result.error["step"] == "html_page"
    assert result.error["reason"].startswith("expected a JSON answer, got text/html; charset=utf-8: '<html><body>Login page")

    result = await run_task(task(api, {"name": "html_page", "url": "/html", "expect_json": False}), sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "succeeded"
    assert result.to_json()["steps"][0]["data"] == "<html><body>Login page</body></html>"
    assert api.requests[-1]["headers"].get("Accept") != "application/json"


@pytest.mark.asyncio
async def test_an_empty_answer_is_null_data(api: LocalApi, client: OutboundClient) -> None:
    result = await run_task(task(api, {"name": "gone", "url": "/empty"}), sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "succeeded"
    assert result.to_json()["steps"][0]["status"] == 204 and result.to_json()["steps"][0]["data"] is None


@pytest.mark.asyncio
async def test_a_timeout_fails_the_step(api: LocalApi, client: OutboundClient) -> None:
    spec = task(api, {"name": "slow", "url": "/hang", "timeout": "300ms"}, {"name": "never", "url": "/echo"})
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "failed"
    assert result.error is not None and result.error["step"] == "slow"
    assert "timeout" in result.error["reason"]
    assert result.to_json()["steps"][0]["status"] is None


@pytest.mark.asyncio
async def test_a_template_error_stops_the_run_before_sending(api: LocalApi, client: OutboundClient) -> None:
    spec = task(api, LOGIN, {"name": "fetch", "url": "/rates", "headers": {"Authorization": "Bearer {{ login.data.missing }}"}})
    result = await run_task(spec, sender=client, params={}, secrets=SECRETS, view_rows=None, load_rows=None)
    assert result.status == "failed"
    assert result.error == {"at": "step", "step": "fetch", "reason": "step 'fetch', headers.Authorization: 'dict object' has no attribute 'missing'"}
    assert api.paths() == ["/login"]
    assert result.to_json()["steps"][1]["request"] is None


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "url, reason",
    [
        ("/echo?x={{ ''.__class__.__mro__ }}", "not allowed: access to attribute '__class__' of 'str' object is unsafe."),
        ("/echo?x={{ params.missing }}", "run parameter 'missing' is not set"),
        ("/echo?x={{ 'a' * 10**9 }}", "limit reached"),
        ("{{ params.where }}", "URL must start with http:// or https://: 'ftp://x'"),
        ("{{ 'http://[::1/x' }}", "not a valid URL"),
        ("/echo?x={{ '\\ud800' }}", "lone surrogate"),
        ("/echo?x={{ params.where.nope }}", "'str object' has no attribute 'nope'"),
    ],
)
async def test_run_time_template_failures_are_clear(api: LocalApi, client: OutboundClient, url: str, reason: str) -> None:
    spec = task(api, {"name": "s", "url": url})
    result = await run_task(spec, sender=client, params={"where": "ftp://x"}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "failed"
    assert result.error is not None and result.error["step"] == "s"
    assert result.error["reason"].startswith("step 's', url: ") and reason in result.error["reason"]
    assert api.requests == []


@pytest.mark.asyncio
async def test_an_integer_beyond_64_bits_in_a_body_is_sent_exactly(api: LocalApi, client: OutboundClient) -> None:
    spec = task(api, {"name": "s", "method": "POST", "url": "/echo", "json": {"n": "{{ 2 ** 70 }}"}, "form": None},
                {"name": "f", "method": "POST", "url": "/echo", "form": {"n": ["{{ 2 ** 70 }}"], "o": {"n": "{{ 2 ** 70 }}"}}})
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "succeeded", result.error
    steps = result.to_json()["steps"]
    assert steps[0]["data"]["body"] == {"n": 2**70}
    assert steps[1]["data"]["body"] == [["n", str(2**70)], ["o", '{"n":%d}' % 2**70]]


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["form", "params", "headers"])
async def test_text_that_cannot_be_utf8_fails_the_step_clearly(api: LocalApi, client: OutboundClient, field: str) -> None:
    spec = task(api, {"name": "s", "method": "POST", "url": "/echo", field: {"n": "{{ '\\ud800' }}"}})
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "failed" and result.error is not None
    assert result.error["reason"].startswith("step 's'") and "unexpected" not in result.error["reason"]
    assert api.requests == []


@pytest.mark.asyncio
async def test_private_addresses_are_refused_unless_allowed(api: LocalApi) -> None:
    spec = task(api, {"name": "local", "url": "/echo", "retries": 3})
    sleeps = Sleeps()
    async with OutboundClient(allow_private=False) as strict:
        result = await run_task(spec, sender=strict, params={}, secrets={}, view_rows=None, load_rows=None, sleep=sleeps)
    assert result.status == "failed"
    assert result.error is not None and "target refused" in result.error["reason"]
    assert result.to_json()["steps"][0]["attempts"] == 1 and sleeps.waits == []
    assert api.requests == []


# --- retries ----------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_retries_honour_retry_after(api: LocalApi, client: OutboundClient) -> None:
    sleeps = Sleeps()
    spec = task(api, {"name": "limited", "url": "/limited", "retries": 3, "retry_backoff": "1s"})
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=None, load_rows=None, sleep=sleeps)
    assert result.status == "succeeded"
    assert sleeps.waits == [7.0, 7.0]
    step = result.to_json()["steps"][0]
    assert (step["attempts"], step["status"], step["data"]) == (3, 200, {"ok": True})


@pytest.mark.asyncio
async def test_retries_back_off_and_give_up(api: LocalApi, client: OutboundClient) -> None:
    sleeps = Sleeps()
    spec = task(api, {"name": "flaky", "url": "/flaky", "retries": 2, "retry_backoff": "500ms"})
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=None, load_rows=None, sleep=sleeps)
    assert result.status == "succeeded" and sleeps.waits == [0.5, 1.0]

    sleeps = Sleeps()
    spec = task(api, {"name": "broken", "url": "/fail", "retries": 2})
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=None, load_rows=None, sleep=sleeps)
    assert result.status == "failed" and sleeps.waits == [1.0, 2.0]
    assert result.to_json()["steps"][0]["attempts"] == 3

    sleeps = Sleeps()
    result = await run_task(task(api, {"name": "broken", "url": "/fail"}), sender=client, params={}, secrets={}, view_rows=None, load_rows=None, sleep=sleeps)
    assert sleeps.waits == [] and result.to_json()["steps"][0]["attempts"] == 1


@pytest.mark.asyncio
async def test_a_non_json_answer_is_not_retried(api: LocalApi, client: OutboundClient) -> None:
    sleeps = Sleeps()
    result = await run_task(task(api, {"name": "html_page", "url": "/html", "retries": 3}), sender=client, params={}, secrets={}, view_rows=None, load_rows=None, sleep=sleeps)
    assert result.status == "failed" and sleeps.waits == [] and api.paths() == ["/html"]


def test_retry_decisions() -> None:
    step = StepSpec.model_validate({"name": "s", "url": "https://x/", "retries": 5, "retry_backoff": 2})
    assert retry_delay(step, 1, 200, None, {}) is None
    assert retry_delay(step, 1, 404, None, {}) is None
    assert retry_delay(step, 1, 500, None, {}) == 2
    assert retry_delay(step, 3, 502, None, {}) == 8
    assert retry_delay(step, 1, None, "connection refused", {}) == 2
    assert retry_delay(step, 6, 500, None, {}) is None
    assert retry_delay(step, 5, 500, None, {}) == 32
    assert retry_delay(step, 1, 429, None, {"retry-after": "30"}) == 30
    assert retry_delay(step, 1, 503, None, {"Retry-After": "3600"}) == 60
    assert retry_delay(step, 1, 500, None, {"retry-after": "30"}) == 2
    assert retry_delay(step, 1, 429, None, {"retry-after": "soon"}) == 2
    later = email.utils.format_datetime(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=40), usegmt=True)
    delay = retry_delay(step, 1, 429, None, {"retry-after": later})
    assert delay is not None and 30 < delay <= 40


# --- records -----------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_large_data_is_capped_in_the_record_but_whole_for_later_steps(api: LocalApi, client: OutboundClient) -> None:
    spec = task(api, {"name": "big", "url": "/big"}, {"name": "count", "url": "/echo", "params": {"n": "{{ big.data.rows | length }}"}})
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "succeeded"
    big, count = result.to_json()["steps"]
    assert big["data"]["truncated"] is True and big["data"]["bytes"] > MAX_DATA_BYTES
    assert count["data"]["query"] == [["n", "2000"]]
    assert len(dumped(result)) < 2 * MAX_DATA_BYTES


@pytest.mark.asyncio
async def test_the_run_result_is_json(api: LocalApi, client: OutboundClient) -> None:
    result = await run_task(task(api, {"name": "one", "url": "/echo"}), sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    body = orjson.loads(dumped(result))
    assert set(body) == {"status", "error", "steps", "load", "params", "started_at", "finished_at", "duration_ms"}
    assert set(body["steps"][0]) >= {"name", "request", "status", "data", "duration_ms", "attempts", "error", "outcome"}
    assert body["started_at"].endswith("Z")


def test_credential_names() -> None:
    for name in ("Authorization", "X-API-Key", "api_key", "apiKey", "access_token", "X-Auth-Token", "Cookie", "client_secret", "password", "webhook-signature"):
        assert is_sensitive_name(name), name
    for name in ("author", "Accept", "X-Trace", "page", "name", "results", "next"):
        assert not is_sensitive_name(name), name


# --- load ----------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_load_failures_fail_the_run(api: LocalApi, client: OutboundClient) -> None:
    base = {"name": "fetch", "url": "/echo"}

    result = await run_task(task(api, base, load={"dataset": "d", "rows": "{{ fetch.data }}"}), sender=client, params={}, secrets={}, view_rows=None, load_rows=Loader("ErrorExit"))
    assert result.status == "failed" and result.error == {"at": "load", "step": None, "reason": "load job job-1 ended with ErrorExit"}
    assert result.load is not None and result.load["jobId"] == "job-1" and result.load["rows"] == 1

    result = await run_task(task(api, base, load={"dataset": "d", "rows": "{{ fetch.data.method }}"}), sender=client, params={}, secrets={}, view_rows=None, load_rows=Loader())
    assert result.status == "failed" and result.error is not None
    assert result.error["reason"] == "load, rows: expected a list of objects, got str"

    result = await run_task(task(api, base, load={"dataset": "d", "rows": "{{ fetch.data.nope }}"}), sender=client, params={}, secrets={}, view_rows=None, load_rows=Loader())
    assert result.error is not None and result.error["reason"] == "load, rows: 'dict object' has no attribute 'nope'"

    result = await run_task(task(api, base, load={"dataset": "d", "rows": "{{ fetch.data }}"}), sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    assert result.error is not None and "not available" in result.error["reason"]

    from pushbase.errors import NotFound

    async def no_dataset(dataset: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotFound(f"no dataset named {dataset!r}")

    result = await run_task(task(api, base, load={"dataset": "d", "rows": "{{ fetch.data }}"}), sender=client, params={}, secrets={}, view_rows=None, load_rows=no_dataset)
    assert result.error is not None and result.error["reason"] == "load into 'd': no dataset named 'd'"


@pytest.mark.asyncio
async def test_a_rendered_url_with_spaces_is_sent_quoted(api: LocalApi, client: OutboundClient) -> None:
    spec = task(api, {"name": "s", "url": "/echo?q={{ params.city }}"})
    result = await run_task(spec, sender=client, params={"city": "New York"}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "succeeded", result.error
    assert api.requests[0]["query"] == [("q", "New York")]


@pytest.mark.asyncio
async def test_integers_beyond_64_bits_in_answers_stay_exact(api: LocalApi, client: OutboundClient) -> None:
    spec = task(api, {"name": "first", "url": "/huge"},
                {"name": "then", "method": "POST", "url": "/echo?id={{ first.data.id }}", "json": {"id": "{{ first.data.id }}"}})
    result = await run_task(spec, sender=client, params={}, secrets={}, view_rows=None, load_rows=None)
    assert result.status == "succeeded", result.error
    echoed = result.to_json()["steps"][1]["data"]
    assert echoed["query"] == [["id", str(HUGE_ID)]] and echoed["body"] == {"id": HUGE_ID}
    assert result.to_json()["steps"][0]["data"]["id"] == HUGE_ID
