"""/api/pushes: define pushes, see their state and delivery log, push now. Admin keys only."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ...keys import Principal
from ...push import definitions as pushes
from ...push.deliveries import list_deliveries
from ...push.engine import PushEngine
from ..common import JSONAnswer, principal, read_object, settings_of, store_of, threaded

router = APIRouter(tags=["pushes"])


@router.get("/api/pushes", summary="List pushes with their state")
async def list_pushes(request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    return JSONAnswer({"pushes": await threaded(pushes.list_pushes, store_of(request))})


@router.post("/api/pushes", status_code=201, summary="Create a push: view, URL, log-time field, format, rate limit, batches")
async def create_push(request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    body = await read_object(request)
    allow = settings_of(request).allow_private_targets
    return JSONAnswer(await threaded(pushes.create_push, store_of(request), body, allow_private=allow), status_code=201)


@router.get("/api/pushes/{push}", summary="A push's definition (secrets redacted) and state")
async def get_push(push: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    return JSONAnswer(await threaded(pushes.show_push, store_of(request), push))


@router.patch("/api/pushes/{push}", summary="Change a push (enable, disable, any field)")
async def patch_push(push: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    body = await read_object(request)
    allow = settings_of(request).allow_private_targets
    return JSONAnswer(await threaded(pushes.update_push, store_of(request), push, body, allow_private=allow))


@router.delete("/api/pushes/{push}", summary="Delete a push and its delivery log")
async def delete_push(push: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    await threaded(pushes.delete_push, store_of(request), push)
    return JSONAnswer({"deleted": push})


@router.post("/api/pushes/{push}/run", summary="Push now: ignores min_interval, not the batch limits; answers with what was sent")
async def run_push(push: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    worker = getattr(request.app.state, "worker", None)
    engine = getattr(worker, "pushes", None)
    if engine is not None:
        report = await engine.run_now(push)
    else:
        # An API-only process (serve --no-worker) runs the push itself, under the same lease.
        engine = PushEngine(store_of(request), settings_of(request), threads=2)
        try:
            report = await engine.run_now(push)
        finally:
            await engine.aclose()
    return JSONAnswer(report.to_json())


@router.get("/api/pushes/{push}/deliveries", summary="The delivery log, newest first: rows, status, each attempt")
async def deliveries(
    push: str,
    request: Request,
    limit: int | None = None,
    after: str | None = None,
    status: str | None = None,
    who: Principal = Depends(principal),
) -> JSONAnswer:
    who.require_admin()
    return JSONAnswer(await threaded(list_deliveries, store_of(request), push, limit=limit, after=after, status=status))
