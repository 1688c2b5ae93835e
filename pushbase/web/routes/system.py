"""Health and metrics."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ...storage.schema import SCHEMA_VERSION
from ..common import JSONAnswer, store_of, threaded

router = APIRouter(tags=["system"])


@router.get("/healthz", summary="Liveness and database check")
async def healthz(request: Request) -> JSONAnswer:
    store = store_of(request)

    def ping() -> None:
        with store.read() as conn:
            conn.exec_driver_sql("SELECT 1")

    await threaded(ping)
    return JSONAnswer({"status": "ok", "engine": store.dialect, "schema_version": SCHEMA_VERSION})


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics() -> PlainTextResponse:
    return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)
