"""The web console: one static page that drives the same HTTP API with the user's key."""
from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ...errors import NotFound

router = APIRouter(include_in_schema=False)

_STATIC = resources.files("pushbase.console") / "static"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/console")


@router.get("/console")
async def console() -> HTMLResponse:
    return HTMLResponse((_STATIC / "index.html").read_text(encoding="utf-8"))


@router.get("/console/static/{name}")
async def static(name: str) -> Response:
    suffix = name[name.rfind("."):] if "." in name else ""
    if suffix not in _TYPES or "/" in name or name.startswith("."):
        raise NotFound("no such console file")
    path = _STATIC / name
    if not path.is_file():
        raise NotFound("no such console file")
    return Response(path.read_text(encoding="utf-8"), media_type=_TYPES[suffix], headers={"cache-control": "no-cache"})
