"""What every route shares: the store, the caller's key, bounded bodies, JSON answers, the error shape."""
from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
from fastapi import Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..errors import BadRequest, PushbaseError, TooLarge
from ..keys import Principal, authenticate, cached_principal
from ..exact_json import dumps_exact, loads_exact
from ..settings import Settings
from ..storage import Store

# A row or run id in a path: a positive 64-bit integer (anything else is a 422, never a database error).
StoredId = Annotated[int, Path(ge=1, le=2**63 - 1)]

__all__ = ["StoredId", "store_of", "settings_of", "principal", "read_body", "read_json", "JSONAnswer", "error_response", "threaded"]


class JSONAnswer(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        # An answer may echo an integer beyond 64 bits (a 422 naming it) or a deep json value.
        return dumps_exact(content, option=orjson.OPT_NON_STR_KEYS)


def error_response(error: PushbaseError) -> JSONAnswer:
    return JSONAnswer(error.to_json(), status_code=error.status_code)


def store_of(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def settings_of(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _key_from(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query_params.get("api_key") if request.url.path.endswith("/events") else None


async def principal(request: Request) -> Principal:
    """FastAPI dependency: the caller's key (401 when missing or wrong). A key seen lately is checked
    right here; only a cache miss reads the database, in a thread."""
    store, key = store_of(request), _key_from(request)
    return cached_principal(store, key) or await run_in_threadpool(authenticate, store, key)


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it passes the configured limit."""
    limit = settings_of(request).max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is {declared} bytes; the limit is {limit} (send smaller batches, ~1 MB is best)", details={"limit": limit})
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is over the limit of {limit} bytes (send smaller batches, ~1 MB is best)", details={"limit": limit})
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, *, allow_empty: bool = False) -> Any:
    body = await read_body(request)
    if not body.strip():
        if allow_empty:
            return {}
        raise BadRequest("the body is empty; send a JSON object", code="empty_body")
    try:
        return loads_exact(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON (UTF-8): {exc}", code="malformed_json") from None


async def read_object(request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
    value = await read_json(request, allow_empty=allow_empty)
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object", code="not_an_object")
    return value


async def threaded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run blocking domain code (database work) off the event loop."""
    return await run_in_threadpool(fn, *args, **kwargs)


async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)
