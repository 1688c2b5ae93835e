"""Helpers shared by the push tests (no tests here): an orders dataset, a view, a push, polling."""
from __future__ import annotations

import json
import time
from typing import Any, Callable, TypeVar
from urllib.parse import parse_qs

from tests.receivers import Request

T = TypeVar("T")

COLUMNS = [
    {"name": "order_id", "type": "integer"},
    {"name": "customer", "type": "string"},
    {"name": "total", "type": "number"},
    {"name": "last pushed", "type": "datetime"},
]


def eventually(check: Callable[[], T], timeout: float = 15.0, interval: float = 0.05, message: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` (a deadline, not a timing)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {message or check}")
        time.sleep(interval)


def setup_orders(api: Any, *, view_filters: list[dict[str, Any]] | None = None, view: str = "to_push", dataset: str = "orders", **view_extra: Any) -> None:
    r = api.post("/api/datasets", json={"name": dataset, "columns": COLUMNS, "unique_id": ["order_id"]})
    assert r.status_code == 201, r.text
    filters = [{"field": "last pushed", "op": "is_empty"}] if view_filters is None else view_filters
    body = {"name": view, "dataset": dataset, "filters": filters, "sort": [{"field": "order_id", "direction": "asc"}], **view_extra}
    r = api.post("/api/views", json=body)
    assert r.status_code == 201, r.text


def make_push(api: Any, url: str, *, name: str = "out", view: str = "to_push", **fields: Any) -> dict[str, Any]:
    body = {"name": name, "view": view, "url": url, "log_time_field": "last pushed", "format": "json", "min_interval": 0, **fields}
    r = api.post("/api/pushes", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def orders(*ids: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"order_id": i, "customer": f"c{i}", "total": i * 1.5, **extra} for i in ids]


def rows_of(request: Request) -> list[dict[str, Any]]:
    """The rows a push call carried, whatever its format."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/x-www-form-urlencoded"):
        return json.loads(parse_qs(request.text)["json"][0])  # type: ignore[no-any-return]
    if ctype.startswith("application/x-ndjson"):
        return [json.loads(line) for line in request.text.split("\n") if line]  # not splitlines: it splits at U+2028 too
    return request.json()  # type: ignore[no-any-return]


def delivered_ids(requests: list[Request]) -> list[int]:
    return [row["order_id"] for r in requests for row in rows_of(r)]


def dataset_rows(api: Any, dataset: str = "orders") -> dict[int, dict[str, Any]]:
    return {row["order_id"]: row for row in api.all_rows(f"/api/datasets/{dataset}/rows")}


def stamped(api: Any, dataset: str = "orders") -> dict[int, Any]:
    return {k: v["last pushed"] for k, v in dataset_rows(api, dataset).items()}


def deliveries(api: Any, push: str = "out", **params: Any) -> list[dict[str, Any]]:
    r = api.get(f"/api/pushes/{push}/deliveries", params=params)
    assert r.status_code == 200, r.text
    return r.json()["deliveries"]  # type: ignore[no-any-return]
