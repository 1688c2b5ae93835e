"""The ASGI app: routes, the one error shape, and the background worker's lifetime."""
from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator

import psycopg
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import DatabaseUnavailable, NotFound, PushbaseError
from ..outbound import OutboundClient
from ..settings import Settings
from ..storage import Store, database_unavailable_reason, open_store
from ..views.readahead import ReadAhead
from .common import JSONAnswer, error_response
from .routes import compat_qrvey, datasets, system

__all__ = ["create_app"]

log = logging.getLogger("pushbase.web")


def create_app(settings: Settings | None = None, *, store: Store | None = None, run_worker: bool = True) -> FastAPI:
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_store = store is None
        app.state.store = store or open_store(settings.db)
        # One outbound client for the API process (custom actions, task runs); the worker has its own.
        app.state.outbound = OutboundClient(allow_private=settings.allow_private_targets)
        app.state.read_ahead = ReadAhead.for_store(app.state.store)
        worker = None
        listener = None
        if not run_worker and app.state.store.dialect == "postgresql":
            # An API-only process still hears other processes' NOTIFYs (job ends, view events).
            from ..storage.listen import PgListener

            listener = PgListener(app.state.store)
            listener.start()
        if run_worker:
            from ..worker import Worker

            worker = Worker(app.state.store, settings)
            await worker.start()
        app.state.worker = worker
        try:
            yield
        finally:
            if app.state.read_ahead is not None:
                app.state.read_ahead.close()
            if worker is not None:
                await worker.stop()
            await app.state.outbound.aclose()
            if listener is not None:
                listener.stop()
            if own_store:
                app.state.store.close()

    app = FastAPI(
        title="Pushbase",
        version=__version__,
        description="A self-hosted data hub with push APIs in both directions.",
        lifespan=lifespan,
        default_response_class=JSONAnswer,
    )
    app.state.settings = settings

    @app.exception_handler(PushbaseError)
    async def on_pushbase_error(_request: Request, exc: PushbaseError) -> JSONAnswer:
        if exc.status_code >= 500:
            log.error("internal error: %s", exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONAnswer:
        details = [{"loc": list(e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()]
        first = details[0] if details else {"loc": [], "message": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return JSONAnswer({"error": {"code": "invalid", "message": f"{where}: {first['message']}", "details": details}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request: Request, exc: StarletteHTTPException) -> JSONAnswer:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONAnswer({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code)

    @app.exception_handler(sa.exc.DataError)
    @app.exception_handler(psycopg.DataError)
    async def on_data_error(request: Request, exc: Exception) -> JSONAnswer:
        # PostgreSQL refuses text with U+0000 even to compare it; SQLite does not. Values are checked
        # for it before they are stored, and names when objects are made, so what is left is a lookup
        # by a name holding one (in the path or the body): it names nothing, 404 as on SQLite.
        if "cannot contain NUL" in str(getattr(exc, "orig", None) or exc):
            return error_response(NotFound("nothing here has a name with the NUL character (U+0000)"))
        return await on_unexpected(request, exc)

    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(sqlite3.OperationalError)
    async def on_operational_error(request: Request, exc: Exception) -> JSONAnswer:
        reason = database_unavailable_reason(exc)
        if reason is None:  # a statement that cannot work (a bug, or a limit): logged, 500
            return await on_unexpected(request, exc)
        log.warning("database unavailable (%s): %s", reason, getattr(exc, "orig", None) or exc)
        answer = error_response(DatabaseUnavailable(f"the database did not answer ({reason}); try again shortly"))
        answer.headers["Retry-After"] = "1"
        return answer

    @app.exception_handler(Exception)
    async def on_unexpected(_request: Request, exc: Exception) -> JSONAnswer:
        log.exception("unexpected error")
        return JSONAnswer({"error": {"code": "internal_error", "message": "an unexpected error happened; it is logged"}}, status_code=500)

    for module in (system, datasets, compat_qrvey):
        app.include_router(module.router)
    _include_optional_routes(app)
    return app


def _include_optional_routes(app: FastAPI) -> None:
    """Routers of later parts (views, pushes, actions, tasks, console) join as they are built."""
    import importlib

    for name in ("views", "pushes", "actions", "tasks", "console"):
        try:
            module = importlib.import_module(f"pushbase.web.routes.{name}")
        except ModuleNotFoundError as exc:
            if not (exc.name and f"pushbase.web.routes.{name}".startswith(exc.name)):
                raise
            continue
        app.include_router(module.router)
