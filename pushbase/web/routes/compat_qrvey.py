"""Qrvey-compatible Push API, so scripts written for Qrvey's Data Router keep working.

``POST /compat/qrvey/postdata`` takes ``{"datasetId", "documentUpdateMethod", "data": [...]}`` and
answers ``{"jobId"}``; ``GET /compat/qrvey/{jobId}/status`` answers in Qrvey's shape. ``datasetId`` is
the Pushbase dataset name. ``documentUpdateMethod`` may be ``upsert`` (the default) or ``insert``;
both load through the same job (upsert on the unique id when the dataset has one).
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request

from ... import datasets, ingest
from ...errors import BadRequest, Forbidden
from ...keys import Principal
from ..common import JSONAnswer, principal, read_object, store_of, threaded

router = APIRouter(tags=["qrvey compatibility"])

_METHODS = ("upsert", "insert")


@router.post("/compat/qrvey/postdata", status_code=202, summary="Qrvey postdata: {datasetId, documentUpdateMethod, data}")
async def postdata(request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    body = await read_object(request)
    dataset = body.get("datasetId")
    if not isinstance(dataset, str):
        raise BadRequest("datasetId is required (the dataset's name)", code="invalid_request")
    who.require(f"ingest:{dataset}")
    method = body.get("documentUpdateMethod", "upsert")
    if method not in _METHODS:
        raise BadRequest(f"documentUpdateMethod must be one of {', '.join(_METHODS)}", code="invalid_request")
    data = body.get("data")
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise BadRequest("data must be a JSON array of records", code="invalid_request")
    store = store_of(request)

    def work() -> str:
        found = datasets.get_dataset(store, dataset)
        job_id, _status = ingest.accept_job(store, found, "load", data, orjson.dumps(data), "application/json", source="qrvey")
        return job_id

    return JSONAnswer({"jobId": await threaded(work)}, status_code=202)


def _qrvey_status(doc: dict[str, Any]) -> dict[str, Any]:
    started = dt.datetime.fromisoformat(doc["started_at"]) if doc.get("started_at") else None
    finished = dt.datetime.fromisoformat(doc["finished_at"]) if doc.get("finished_at") else None
    created = dt.datetime.fromisoformat(doc["created_at"])
    end = finished or dt.datetime.now(dt.timezone.utc)
    runtime_ms = int((end - (started or created)).total_seconds() * 1000)
    final = doc["status"] in ingest.FINAL_STATUSES
    received = doc["rows_received"]
    ok = doc["status"] == "Complete"
    successful = doc["rows_inserted"] + doc["rows_updated"] + doc["rows_unchanged"] + doc["rows_deleted"] if ok else 0
    return {
        "statusJob": {
            "jobId": doc["jobId"],
            "status": doc["status"],
            "approximatePercentComplete": 100 if final else {"Initializing": 0, "Validating": 30, "Loading": 60}.get(doc["status"], 0),
            "runtime": runtime_ms,
            "errors": doc["errors"],
            "reason": doc["reason"],
        },
        "jobCompletionStatistics": {
            "recordsRead": received,
            "recordsSuccessful": successful,
            "recordsFailed": 0 if ok or not final else received,
            "recordsAdded": doc["rows_inserted"],
            "recordsUpdated": doc["rows_updated"],
            "recordsDeleted": doc["rows_deleted"],
        },
    }


@router.get("/compat/qrvey/{job_id}/status", summary="Qrvey job status shape")
# Qrvey scripts build the status URL from their postdata URL: `{postdataUrl}/{jobId}/status`.
@router.get("/compat/qrvey/postdata/{job_id}/status", summary="Qrvey job status shape, under the postdata URL")
async def status(job_id: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    doc = await threaded(ingest.job_status, store_of(request), job_id)
    if not who.allows(f"ingest:{doc['dataset']}"):
        raise Forbidden(f"this key lacks the scope ingest:{doc['dataset']}")
    return JSONAnswer(_qrvey_status(doc))
