"""/api/tasks: define API request tasks, run them, read their runs. Admin keys only."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ...errors import Invalid
from ...keys import Principal
from ...tasks import store as tasks
from ...tasks.service import run_now
from ..common import JSONAnswer, StoredId, principal, read_object, settings_of, store_of, threaded

router = APIRouter(tags=["tasks"])


@router.get("/api/tasks", summary="List tasks with their schedule state and last run")
async def list_tasks(request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    return JSONAnswer({"tasks": await threaded(tasks.list_tasks, store_of(request))})


@router.post("/api/tasks", status_code=201, summary="Create a task: templated HTTP steps, optional load, optional cron schedule")
async def create_task(request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    body = await read_object(request)
    allow = settings_of(request).allow_private_targets
    return JSONAnswer(await threaded(tasks.create_task, store_of(request), body, allow_private=allow), status_code=201)


@router.get("/api/tasks/{task}", summary="A task's definition (literal credentials redacted) and state")
async def get_task(task: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    return JSONAnswer(await threaded(tasks.show_task, store_of(request), task))


@router.patch("/api/tasks/{task}", summary="Change some fields of a task (steps, load, schedule, params, enabled, description)")
async def patch_task(task: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    body = await read_object(request)
    allow = settings_of(request).allow_private_targets
    return JSONAnswer(await threaded(tasks.update_task, store_of(request), task, body, allow_private=allow))


@router.delete("/api/tasks/{task}", summary="Delete a task and its runs")
async def delete_task(task: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    await threaded(tasks.delete_task, store_of(request), task)
    return JSONAnswer({"deleted": task})


@router.post("/api/tasks/{task}/run", summary="Run now with {\"params\": {...}}; answers with each step's request, status and data")
async def run_task(task: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    body = await read_object(request, allow_empty=True)
    unknown = set(body) - {"params"}
    if unknown:
        raise Invalid(f"unknown fields: {', '.join(sorted(unknown))} (a run takes only params)", code="invalid_request")
    # A failed run answers 200 too: the run happened, and its record says why it failed.
    return JSONAnswer(await run_now(store_of(request), settings_of(request), task, params=body.get("params"), trigger="api"))


@router.get("/api/tasks/{task}/runs", summary="The task's runs, newest first (limit, after)")
async def list_runs(
    task: str,
    request: Request,
    limit: int | None = None,
    after: str | None = None,
    who: Principal = Depends(principal),
) -> JSONAnswer:
    who.require_admin()
    return JSONAnswer(await threaded(tasks.list_runs, store_of(request), task, limit=limit, after=after))


@router.get("/api/tasks/{task}/runs/{run_id}", summary="One run of the task")
async def get_run(task: str, run_id: StoredId, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    return JSONAnswer(await threaded(tasks.get_run, store_of(request), task, run_id))
