"""/api/views: saved views and the pull API (JSON pages, NDJSON and CSV streams)."""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Iterator

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from ...errors import Invalid
from ...keys import Principal
from ...storage import Store
from ...views import store as views
from ...views.query import JsonPage
from ...views.readahead import ReadAhead, reads_the_clock
from ..common import JSONAnswer, principal, read_object, store_of, threaded

router = APIRouter(tags=["views"])


@router.get("/api/views", summary="List views")
async def list_views(request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    found = await threaded(views.list_views, store_of(request))
    return JSONAnswer({"views": [v.to_json() for v in found if who.allows(f"read:{v.name}")]})


@router.post("/api/views", status_code=201, summary="Create a view: columns, calculations, filters, sort, limit")
async def create_view(request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    body = await read_object(request)
    view = await threaded(views.create_view, store_of(request), body)
    return JSONAnswer(view.to_json(), status_code=201)


@router.get("/api/views/{view}", summary="A view's definition")
async def get_view(view: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require(f"read:{view}")
    return JSONAnswer((await threaded(views.get_view, store_of(request), view)).to_json())


@router.patch("/api/views/{view}", summary="Change a view")
async def patch_view(view: str, request: Request, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    body = await read_object(request)
    return JSONAnswer((await threaded(views.update_view, store_of(request), view, body)).to_json())


@router.delete("/api/views/{view}", summary="Delete a view (refused while pushes use it, unless cascade=true)")
async def delete_view(view: str, request: Request, cascade: bool = False, who: Principal = Depends(principal)) -> JSONAnswer:
    who.require_admin()
    await threaded(views.delete_view, store_of(request), view, cascade=cascade)
    return JSONAnswer({"deleted": view})


def _stream(request: Request, view_name: str, fmt: str) -> Iterator[bytes]:
    """Generator run in a thread by Starlette: holds one read transaction, yields batches of encoded rows."""
    store = store_of(request)
    with store.read() as conn:
        view = views.get_view(store, view_name, conn)
        query = views.view_query(store, view, conn)
        encoder = query.encoder("csv" if fmt == "csv" else "json")
        if fmt == "csv":
            yield encoder.csv_header()
            for rows in query.output_rows(conn, "csv"):
                yield encoder.csv(rows)
        else:
            for rows in query.output_rows(conn, "json"):
                yield encoder.ndjson(rows)


def _read_page(store: Store, view: str, limit: int | None, after: str | None) -> tuple[JsonPage, bool]:
    """A JSON page (encoded here, in a worker thread, not on the event loop), and whether the view's
    formulas read the clock."""
    with store.read() as conn:
        found = views.get_view(store, view, conn)
        return views.view_query(store, found, conn).page_json(conn, limit=limit, after=after), reads_the_clock(found.definition)


async def _json_page(request: Request, view: str, limit: int | None, after: str | None) -> JsonPage:
    """The page, from the read-ahead when one was prepared and is still exact; prepares the next one
    for a client that is paging through (see ``pushbase.views.readahead``)."""
    store = store_of(request)
    ahead: ReadAhead | None = getattr(request.app.state, "read_ahead", None) if after is not None else None
    page: JsonPage | None = None
    clocked = False
    if ahead is not None and (prepared := ahead.take((view, limit, after))) is not None:
        with contextlib.suppress(Exception):  # a failed read: ``served`` drops it, the request reads again
            await asyncio.wrap_future(prepared.future)
        page = await threaded(ahead.served, prepared)
    if page is None:
        page, clocked = await threaded(_read_page, store, view, limit, after)
    if ahead is not None and page.next is not None and not clocked:
        following = page.next
        ahead.prepare((view, limit, following), lambda: _read_page(store, view, limit, following)[0])
    return page


@router.get("/api/views/{view}/rows", summary="Pull a view: format=json (pages), ndjson or csv (streams)")
async def view_rows(
    view: str,
    request: Request,
    format: str = Query("json", pattern="^(json|ndjson|csv)$"),
    limit: int | None = None,
    after: str | None = None,
    who: Principal = Depends(principal),
) -> Any:
    who.require(f"read:{view}")
    store = store_of(request)
    if format == "json":
        page = await _json_page(request, view, limit, after)
        return Response(page.body, media_type="application/json")
    if after is not None or limit is not None:
        raise Invalid(f"ndjson and csv stream every row; '{'after' if after is not None else 'limit'}' is for format=json pages "
                      "(a view's own limit applies to streams too)", code="invalid_request")
    # Check the view exists before the stream starts, so an error is still a proper 404.
    await threaded(views.get_view, store, view)
    media = "application/x-ndjson" if format == "ndjson" else "text/csv; charset=utf-8"
    headers = {"content-disposition": f'attachment; filename="{view}.csv"'} if format == "csv" else {}
    return StreamingResponse(_stream(request, view, format), media_type=media, headers=headers)
