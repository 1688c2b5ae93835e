"""/api/datasets: definitions, the inbound Push API (load, delete, delete-all, job status) and rows."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request

from ... import dataset_rows, datasets, ingest
from ...keys import Principal
from ..common import JSONAnswer, StoredId, principal, read_body, read_object, store_of, threaded

router = APIRouter(tags=["datasets"])

_RAW_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [{"type": "array", "items": {"type": "object"}}, {"type": "object"}]}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}


@router.get("/api/datasets", summary="List datasets")
async def list_datasets(request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    store = store_of(request)

    def work() -> list[dict[str, Any]]:
        return [
            d.to_json(datasets.row_count(store, d))
            for d in datasets.list_datasets(store)
            if who.allows(f"ingest:{d.name}")  # read:NAME is a view scope: never a dataset, even one of the same name
        ]

    return JSONAnswer({"datasets": await threaded(work)})


@router.post("/api/datasets", status_code=201, summary="Create a dataset from a sample or a column list")
async def create_dataset(request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    body = await read_object(request)
    store = store_of(request)
    dataset = await threaded(datasets.create_dataset, store, body)
    return JSONAnswer(dataset.to_json(0), status_code=201)


@router.get("/api/datasets/{dataset}", summary="A dataset's columns, unique id and row count")
async def get_dataset(dataset: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    # `read:NAME` names a view: views and datasets are separate namespaces, so it never opens a dataset.
    who.require(f"ingest:{dataset}")
    store = store_of(request)

    def work() -> dict[str, Any]:
        found = datasets.get_dataset(store, dataset)
        return found.to_json(datasets.row_count(store, found))

    return JSONAnswer(await threaded(work))


@router.patch("/api/datasets/{dataset}", summary="Add (or drop) columns, change options")
async def patch_dataset(dataset: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    body = await read_object(request)
    store = store_of(request)

    def work() -> dict[str, Any]:
        found = datasets.update_dataset(store, dataset, body)
        return found.to_json(datasets.row_count(store, found))

    return JSONAnswer(await threaded(work))


@router.delete("/api/datasets/{dataset}", summary="Delete a dataset (refused while views use it, unless cascade=true)")
async def delete_dataset(dataset: str, request: Request, cascade: bool = False, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    await threaded(datasets.delete_dataset, store_of(request), dataset, cascade=cascade)
    return JSONAnswer({"deleted": dataset})


async def _accept(request: Request, dataset: str, operation: str, who: Principal, wait: bool) -> JSONAnswer:
    who.require(f"ingest:{dataset}")
    store = store_of(request)
    body = b"" if operation == "delete_all" else await read_body(request)
    content_type = request.headers.get("content-type", "application/json")

    def work() -> tuple[str, str, dict[str, Any] | None]:
        found = datasets.get_dataset(store, dataset)
        payload = ingest.prepare_payload(store, found, operation, body, content_type)
        # A small load is loaded at once, and a payload that broke a rule is recorded ended at once: the
        # 202 says so, as the status will.
        job_id, status = ingest.accept_job(store, found, operation, payload, body, content_type.split(";")[0].strip() or "application/json")
        ended = wait and status in ingest.FINAL_STATUSES
        return job_id, status, ingest.job_status(store, job_id) if ended else None

    job_id, status, doc = await threaded(work)
    if doc is not None:
        return JSONAnswer(doc, status_code=200)
    if wait:
        doc = await wait_for_job(request, job_id)
        return JSONAnswer(doc, status_code=200 if doc["status"] in ingest.FINAL_STATUSES else 202)
    return JSONAnswer({"jobId": job_id, "status": status}, status_code=202)


async def wait_for_job(request: Request, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """Answer once the job has ended (woken by its completion, polling as a fallback)."""
    store = store_of(request)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def on_notify(channel: str, payload: str) -> None:
        if channel == ingest.JOB_DONE_CHANNEL and payload == job_id:
            loop.call_soon_threadsafe(done.set)

    store.add_listener(on_notify)
    try:
        deadline = time.monotonic() + timeout
        while True:
            doc = await threaded(ingest.job_status, store, job_id)
            if doc["status"] in ingest.FINAL_STATUSES or time.monotonic() > deadline:
                return doc
            try:
                await asyncio.wait_for(done.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                pass
    finally:
        store.remove_listener(on_notify)


@router.post("/api/datasets/{dataset}/data", status_code=202, openapi_extra=_RAW_BODY,
             summary="Load rows (upsert on the unique id): JSON array, one object, or NDJSON")
async def load_data(dataset: str, request: Request, wait: bool = False, who: Principal = Depends(principal)) -> JSONAnswer:
    return await _accept(request, dataset, "load", who, wait)


@router.post("/api/datasets/{dataset}/data/delete", status_code=202, openapi_extra=_RAW_BODY,
             summary="Delete rows by unique id")
async def delete_data(dataset: str, request: Request, wait: bool = False, who: Principal = Depends(principal)) -> JSONAnswer:
    return await _accept(request, dataset, "delete", who, wait)


@router.post("/api/datasets/{dataset}/data/delete-all", status_code=202, summary="Delete every row")
async def delete_all_data(dataset: str, request: Request, wait: bool = False, who: Principal = Depends(principal)) -> JSONAnswer:
    return await _accept(request, dataset, "delete_all", who, wait)


@router.get("/api/datasets/{dataset}/data/{job_id}/status", summary="A job's status, counts and errors")
async def job_status(dataset: str, job_id: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require(f"ingest:{dataset}")
    return JSONAnswer(await threaded(ingest.job_status, store_of(request), job_id, dataset))


@router.get("/api/datasets/{dataset}/rows", summary="Raw rows in pages: {rows, next}")
async def list_rows(dataset: str, request: Request, limit: int | None = None, after: str | None = None,
                    who: Principal = Depends(principal)) -> JSONAnswer:
    who.require(f"ingest:{dataset}")
    return JSONAnswer(await threaded(dataset_rows.list_rows, store_of(request), dataset, limit=limit, after=after))


@router.patch("/api/datasets/{dataset}/rows/{row_id}", summary="Update fields of one row (e.g. a receipt id)")
async def patch_row(dataset: str, row_id: StoredId, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require(f"ingest:{dataset}")
    body = await read_object(request)
    return JSONAnswer(await threaded(dataset_rows.update_row, store_of(request), dataset, row_id, body))

