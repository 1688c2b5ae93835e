"""/api/views/{view}/actions (custom actions) and /api/views/{view}/events (Server-Sent Events)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from ... import actions, subscriptions
from ...keys import Principal
from ...views import store as views
from ..common import JSONAnswer, principal, read_object, settings_of, store_of, threaded

router = APIRouter(tags=["actions and events"])


@router.get("/api/views/{view}/actions", summary="A view's custom actions")
async def list_actions(view: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require(f"read:{view}")
    return JSONAnswer({"actions": await threaded(actions.list_actions, store_of(request), view)})


@router.post("/api/views/{view}/actions", status_code=201, summary="Add a custom action: label + URL")
async def create_action(view: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    body = await read_object(request)
    made = await threaded(actions.create_action, store_of(request), view, body, allow_private=settings_of(request).allow_private_targets)
    return JSONAnswer(made, status_code=201)


@router.delete("/api/views/{view}/actions/{action}", summary="Remove a custom action")
async def delete_action(view: str, action: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    await threaded(actions.delete_action, store_of(request), view, action)
    return JSONAnswer({"deleted": action})


@router.post("/api/views/{view}/actions/{action}/run", summary="Run a custom action: push the view's current result now")
async def run_action(view: str, action: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require(f"read:{view}")
    result = await actions.run_action(store_of(request), request.app.state.outbound, view, action, threaded)
    return JSONAnswer(result)


@router.get("/api/views/{view}/events", summary="Server-Sent Events: each push of this view",
            response_class=StreamingResponse)
async def events(view: str, request: Request, who: Principal = Depends(principal)) -> StreamingResponse:
    who.require(f"read:{view}")
    store = store_of(request)
    await threaded(views.get_view, store, view)

    async def stream():  # type: ignore[no-untyped-def]
        async for frame in subscriptions.follow(store, view):
            if await request.is_disconnected():
                break
            yield frame

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
