"""Custom actions (ThoughtSpot-style): a label and a URL on a view; running one pushes the view's
current result to the URL now and hands back the endpoint's answer.

An action sends the whole current result (up to ``MAX_ACTION_ROWS`` rows) in one call, in the push
formats (``json`` by default, ``form``, ``ndjson``), with Standard Webhooks headers (signed when a
secret is set). It never stamps a log-time field: it is a person's "send this now", not a delivery
of new data. Each run is published to the view's event stream like a push.
"""
from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

from .columns import utc_now, validate_object_name
from .errors import Conflict, Invalid, NotFound
from .netguard import check_url
from .outbound import OutboundClient, custom_header_problem
from .push.formats import FORMATS, content_type, encode_rows
from .push.signing import new_webhook_id, validate_secret, webhook_headers
from .storage import Store
from .storage.schema import actions as actions_table
from .subscriptions import publish
from .views.store import View, get_view, view_query

__all__ = ["create_action", "list_actions", "delete_action", "run_action", "MAX_ACTION_ROWS"]

MAX_ACTION_ROWS = 100_000
_FIELDS = {"name", "label", "url", "format", "headers", "secret", "timeout"}


def _public(row: Any) -> dict[str, Any]:
    definition = dict(row.definition)
    return {
        "name": row.name,
        "label": definition.get("label") or row.name,
        "url": definition["url"],
        "format": definition.get("format", "json"),
        "headers": {k: "***" for k in (row.header_values or {})},
        "secret_set": bool(definition.get("has_secret")),
        "timeout": definition.get("timeout", 30.0),
    }


def create_action(store: Store, view_name: str, body: dict[str, Any], *, allow_private: bool) -> dict[str, Any]:
    unknown = set(body) - _FIELDS
    if unknown:
        raise Invalid(f"unknown action fields: {', '.join(sorted(unknown))}", code="invalid_action")
    name = validate_object_name(body.get("name"), "action")
    url = body.get("url")
    if not isinstance(url, str):
        raise Invalid("an action needs a url", code="invalid_action")
    check_url(url, allow_private=allow_private)
    fmt = body.get("format", "json")
    if fmt not in FORMATS:
        raise Invalid(f"format must be one of {', '.join(FORMATS)}", code="invalid_action")
    headers = body.get("headers") or {}
    if not isinstance(headers, dict):
        raise Invalid("headers must map names to text values", code="invalid_action")
    for header, value in headers.items():
        problem = custom_header_problem(header, value)
        if problem is not None:
            raise Invalid(f"headers: {problem}", code="invalid_action", details={"field": "headers", "header": header})
    secret = body.get("secret")
    if secret is not None:
        validate_secret(secret)
    timeout = body.get("timeout", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
        raise Invalid("timeout must be seconds between 0 and 300", code="invalid_action")
    label = body.get("label") or name
    if not isinstance(label, str):
        raise Invalid("label must be text", code="invalid_action")
    # The secret is stored but never shown: answers are built field by field in _public.
    definition = {"label": label, "url": url, "format": fmt, "timeout": float(timeout), "has_secret": secret is not None, "secret": secret}
    values = dict(headers)
    with store.write() as conn:
        view = get_view(store, view_name, conn)
        exists = conn.execute(sa.select(actions_table.c.id).where(actions_table.c.view_id == view.id, actions_table.c.name == name)).first()
        if exists:
            raise Conflict(f"view {view_name!r} already has an action {name!r}", code="exists")
        conn.execute(actions_table.insert().values(view_id=view.id, name=name, definition=definition, header_values=values, created_at=utc_now()))
        row = conn.execute(sa.select(actions_table).where(actions_table.c.view_id == view.id, actions_table.c.name == name)).one()
    return _public(row)


def list_actions(store: Store, view_name: str) -> list[dict[str, Any]]:
    with store.read() as conn:
        view = get_view(store, view_name, conn)
        rows = conn.execute(sa.select(actions_table).where(actions_table.c.view_id == view.id).order_by(actions_table.c.name)).all()
    return [_public(r) for r in rows]


def delete_action(store: Store, view_name: str, name: str) -> None:
    with store.write() as conn:
        view = get_view(store, view_name, conn)
        done = conn.execute(actions_table.delete().where(actions_table.c.view_id == view.id, actions_table.c.name == name)).rowcount
    if not done:
        raise NotFound(f"view {view_name!r} has no action {name!r}")


def _current_rows(store: Store, view_name: str, action: str) -> tuple[View, Any, list[dict[str, Any]]]:
    with store.read() as conn:
        view = get_view(store, view_name, conn)
        row = conn.execute(sa.select(actions_table).where(actions_table.c.view_id == view.id, actions_table.c.name == action)).first()
        if row is None:
            raise NotFound(f"view {view_name!r} has no action {action!r}")
        rows: list[dict[str, Any]] = []
        for batch in view_query(store, view, conn).stream(conn):
            rows.extend(batch)
            if len(rows) > MAX_ACTION_ROWS:
                raise Invalid(f"the view has more than {MAX_ACTION_ROWS} rows; narrow it with filters for an action", code="too_many_rows")
    return view, row, rows


async def run_action(store: Store, client: OutboundClient, view_name: str, action: str, threaded: Any) -> dict[str, Any]:
    """Send the view's current result now; answer with the endpoint's status and response."""
    view, row, rows = await threaded(_current_rows, store, view_name, action)
    definition = row.definition
    secret = definition.get("secret")
    headers = dict(row.header_values or {})
    body = encode_rows(definition.get("format", "json"), rows)
    webhook_id = new_webhook_id()
    headers.update(webhook_headers(webhook_id, utc_now(), body, secret))
    headers["content-type"] = content_type(definition.get("format", "json"))
    attempt = await client.send("POST", definition["url"], headers=headers, data=body, timeout=float(definition.get("timeout", 30)))
    response: Any = None
    if attempt.body:
        try:
            response = orjson.loads(attempt.body)
        except orjson.JSONDecodeError:
            response = attempt.excerpt
    publish(store, view.name, {"view": view.name, "action": action, "rows": len(rows), "webhook_id": webhook_id,
                               "at": attempt.at.isoformat(), "status_code": attempt.status_code})
    return {
        "status_code": attempt.status_code,
        "ok": attempt.ok,
        "error": attempt.error,
        "response": response,
        "rows": len(rows),
        "webhook_id": webhook_id,
        "duration_ms": attempt.duration_ms,
    }
