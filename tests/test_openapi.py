"""Schemathesis against a real `pushbase serve`: whatever the OpenAPI schema lets a client send, the
server answers without a 5xx (bad input is a 4xx JSON error, never a crash)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from pushbase.settings import Settings
from pushbase.web.app import create_app

from .conftest import ServerProcess, admin_key

# The event stream never ends on its own; it has its own tests.
NOT_FUZZED = r"/api/views/\{view\}/events$"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    tmp: Path = tmp_path_factory.mktemp("openapi")
    db = str(tmp / "fuzz.db")
    key = admin_key(db)
    server = ServerProcess(db, tmp).start()
    headers = {"x-api-key": key}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        # Something for the generated names to find: a dataset, a view, a push and a task.
        assert client.post("/api/datasets", json={"name": "orders", "sample": {"id": 1, "note": "x", "last pushed": "2026-01-01T00:00:00Z"},
                                                   "unique_id": ["id"]}).status_code == 201
        assert client.post("/api/datasets/orders/data?wait=true", json=[{"id": 1, "note": "a"}]).status_code in (200, 202)
        assert client.post("/api/views", json={"name": "orders_view", "dataset": "orders"}).status_code == 201
        assert client.post("/api/pushes", json={"name": "out", "view": "orders_view", "url": "http://127.0.0.1:9/hook",
                                                "log_time_field": "last pushed", "enabled": False}).status_code == 201
        assert client.post("/api/tasks", json={"name": "fetch", "steps": [{"name": "s", "method": "GET", "url": "http://127.0.0.1:9/x"}]}).status_code == 201
    try:
        yield server, key
    finally:
        server.stop()


# The schema the server serves at /openapi.json is generated from the same code; building it here at
# import time lets pytest list one test per operation.
schema = schemathesis.openapi.from_dict(create_app(Settings(db=":memory:")).openapi()).exclude(path_regex=NOT_FUZZED)


@schema.parametrize()
@settings(max_examples=30, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case, fuzz_server: tuple[ServerProcess, str]) -> None:
    server, key = fuzz_server
    response = case.call(base_url=server.url, headers={"x-api-key": key}, timeout=30)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}\n{server.log()[-1500:]}"
    if response.status_code >= 400:
        assert (response.headers.get("content-type") or [""])[0].startswith("application/json"), response.text[:300]
        assert "error" in response.json(), response.text[:300]
