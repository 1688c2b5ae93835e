"""Prometheus metrics of the push engine (served at /metrics with the process's other metrics)."""
from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

__all__ = ["CALLS", "ROWS_DELIVERED", "CALL_SECONDS", "observe"]

CALLS = Counter(
    "pushbase_push_deliveries_total",
    "HTTP calls made by pushes, by outcome (succeeded, retry, disabled)",
    ["outcome"],
)
ROWS_DELIVERED = Counter("pushbase_push_rows_delivered_total", "Rows carried by calls that got a 2xx answer")
CALL_SECONDS = Histogram(
    "pushbase_push_delivery_seconds",
    "Duration of each push call, from sending the request to reading the answer",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


_CALLS_BY_OUTCOME: dict[str, Any] = {}  # the labelled children, looked up once


def observe(outcome: str, seconds: float, rows: int) -> None:
    child = _CALLS_BY_OUTCOME.get(outcome)
    if child is None:
        child = _CALLS_BY_OUTCOME[outcome] = CALLS.labels(outcome)
    child.inc()
    CALL_SECONDS.observe(seconds)
    if outcome == "succeeded":
        ROWS_DELIVERED.inc(rows)
