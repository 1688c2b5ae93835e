"""Saved views: create, read, change, delete. A view is checked in full (formulas, filters, sort) when saved."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..columns import utc_now, validate_object_name
from ..datasets import Dataset, get_dataset, get_dataset_by_id
from ..errors import Conflict, Invalid, NotFound
from ..storage import Store
from ..storage.schema import actions as actions_table
from ..storage.schema import pushes as pushes_table
from ..storage.schema import views as views_table
from .query import ViewQuery

__all__ = ["View", "create_view", "get_view", "list_views", "update_view", "delete_view", "view_query", "delete_views_of_dataset"]

_FIELDS = ("columns", "calculations", "filters", "sort", "limit", "description")


@dataclass(frozen=True)
class View:
    id: int
    name: str
    dataset_id: int
    dataset_name: str
    definition: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset": self.dataset_name,
            **{k: self.definition.get(k) for k in _FIELDS},
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


# Enough for any real view, and far from the databases' own limits (SQLite's expression depth of
# 1,000, PostgreSQL's 1,664 entries per SELECT list), which must never surface as a 5xx.
MAX_CALCULATIONS = 200
MAX_FILTERS = 100
MAX_SORT_KEYS = 20
MAX_FILTER_VALUES = 10_000  # all `in` lists together: each value is one query parameter


def _at_most(items: list[Any], limit: int, what: str) -> None:
    if len(items) > limit:
        raise Invalid(f"a view has at most {limit} {what}; this one has {len(items)}", code="invalid_view", details={"max": limit, what: len(items)})


def _normalise(body: dict[str, Any]) -> dict[str, Any]:
    definition: dict[str, Any] = {}
    columns = body.get("columns")
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
        raise Invalid("columns must be a list of field names (or null for all)", code="invalid_view")
    definition["columns"] = columns
    calcs = body.get("calculations") or []
    if not isinstance(calcs, list):
        raise Invalid("calculations must be a list of {name, formula}", code="invalid_view")
    _at_most(calcs, MAX_CALCULATIONS, "calculations")
    for i, calc in enumerate(calcs):
        if not isinstance(calc, dict) or not isinstance(calc.get("name"), str) or not isinstance(calc.get("formula"), str):
            raise Invalid(f"calculations[{i}] must be {{name, formula}} with text values", code="invalid_view")
        if not calc["name"].strip() or "{" in calc["name"] or "}" in calc["name"] or calc["name"].endswith("[auto]"):
            raise Invalid(f"calculations[{i}].name {calc['name']!r} is not a usable field name", code="invalid_view")
    definition["calculations"] = [{"name": c["name"], "formula": c["formula"]} for c in calcs]
    filters = body.get("filters") or []
    if not isinstance(filters, list):
        raise Invalid("filters must be a list of {field, op, value}", code="invalid_view")
    _at_most(filters, MAX_FILTERS, "filters")
    in_values = [v for f in filters if isinstance(f, dict) and isinstance(f.get("value"), list) for v in f["value"]]
    _at_most(in_values, MAX_FILTER_VALUES, "filter values")
    definition["filters"] = filters
    sort = body.get("sort") or []
    if not isinstance(sort, list):
        raise Invalid("sort must be a list of {field, direction}", code="invalid_view")
    _at_most(sort, MAX_SORT_KEYS, "sort")
    definition["sort"] = [s if isinstance(s, dict) else {"field": s, "direction": "asc"} for s in sort]
    definition["limit"] = body.get("limit")
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise Invalid("description must be text", code="invalid_view")
    definition["description"] = description
    return definition


def _from_row(row: Any, dataset_name: str) -> View:
    return View(row.id, row.name, row.dataset_id, dataset_name, dict(row.definition), row.created_at, row.updated_at)


def _check(store: Store, dataset: Dataset, definition: dict[str, Any], conn: sa.Connection) -> ViewQuery:
    query = ViewQuery(store, dataset, definition)
    for col in query.indexable_columns():
        store.ensure_index(conn, dataset.physical, col)
    try:
        # Let the database see the whole query once now, so that its own limits are met at save time.
        conn.execute(query.select().limit(0)).close()
    except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
        if not _is_size_limit(exc):
            raise
        raise Invalid(f"this view is too large for the database: {exc.orig}", code="view_too_complex") from None
    return query


def _is_size_limit(exc: sa.exc.DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is not None:
        return str(sqlstate).startswith("54")  # PostgreSQL: program_limit_exceeded and its kin
    message = str(exc.orig).lower()
    return "too large" in message or "too many" in message or "too deep" in message


def create_view(store: Store, body: dict[str, Any]) -> View:
    name = validate_object_name(body.get("name"), "view")
    unknown = set(body) - {"name", "dataset", *_FIELDS}
    if unknown:
        raise Invalid(f"unknown view fields: {', '.join(sorted(unknown))}", code="invalid_view")
    if not isinstance(body.get("dataset"), str):
        raise Invalid("a view needs the name of its dataset", code="invalid_view")
    definition = _normalise(body)
    now = utc_now()
    with store.write() as conn:
        dataset = get_dataset(store, body["dataset"], conn)
        if conn.execute(sa.select(views_table.c.id).where(views_table.c.name == name)).first():
            raise Conflict(f"view {name!r} already exists", code="exists")
        _check(store, dataset, definition, conn)
        view_id = conn.execute(
            views_table.insert().values(name=name, dataset_id=dataset.id, definition=definition, created_at=now, updated_at=now)
        ).inserted_primary_key[0]
        row = conn.execute(sa.select(views_table).where(views_table.c.id == view_id)).one()
        return _from_row(row, dataset.name)


# Built once, so SQLAlchemy reuses their cache keys (every pulled page looks its view up).
_BY_NAME = sa.select(views_table).where(views_table.c.name == sa.bindparam("name"))
_BY_ID = sa.select(views_table).where(views_table.c.id == sa.bindparam("id"))


def get_view(store: Store, name: str, conn: sa.Connection | None = None) -> View:
    if conn is None:
        with store.read() as own:
            return get_view(store, name, own)
    row = conn.execute(_BY_NAME, {"name": name}).first()
    if row is None:
        raise NotFound(f"view {name!r} does not exist", details={"view": name})
    return _from_row(row, get_dataset_by_id(store, row.dataset_id, conn).name)


def get_view_by_id(store: Store, view_id: int, conn: sa.Connection) -> View:
    row = conn.execute(_BY_ID, {"id": view_id}).first()
    if row is None:
        raise NotFound(f"view #{view_id} does not exist")
    return _from_row(row, get_dataset_by_id(store, row.dataset_id, conn).name)


def list_views(store: Store) -> list[View]:
    with store.read() as conn:
        rows = conn.execute(sa.select(views_table).order_by(views_table.c.name)).all()
        return [_from_row(r, get_dataset_by_id(store, r.dataset_id, conn).name) for r in rows]


def view_query(store: Store, view: View, conn: sa.Connection) -> ViewQuery:
    return ViewQuery(store, get_dataset_by_id(store, view.dataset_id, conn), view.definition)


def update_view(store: Store, name: str, body: dict[str, Any]) -> View:
    unknown = set(body) - set(_FIELDS)
    if unknown:
        raise Invalid(f"cannot change {', '.join(sorted(unknown))}; PATCH accepts {', '.join(_FIELDS)}", code="invalid_view")
    with store.write() as conn:
        view = get_view(store, name, conn)
        merged = {**view.definition, **body}
        definition = _normalise(merged)
        dataset = get_dataset_by_id(store, view.dataset_id, conn)
        _check(store, dataset, definition, conn)
        conn.execute(views_table.update().where(views_table.c.id == view.id).values(definition=definition, updated_at=utc_now()))
        # Pushes of this view may now select other rows.
        store.notify(conn, "pushbase_data", str(dataset.id))
        return get_view(store, name, conn)


def pushes_using(conn: sa.Connection, view_id: int) -> list[str]:
    return sorted(r.name for r in conn.execute(sa.select(pushes_table.c.name).where(pushes_table.c.view_id == view_id)))


def delete_view(store: Store, name: str, *, cascade: bool = False) -> None:
    with store.write() as conn:
        view = get_view(store, name, conn)
        users = pushes_using(conn, view.id)
        if users and not cascade:
            raise Conflict(
                f"view {name!r} is used by pushes {', '.join(users)}; delete them first or pass cascade=true",
                code="in_use",
                details={"pushes": users},
            )
        _delete(conn, [view.id])


def _delete(conn: sa.Connection, view_ids: list[int]) -> None:
    from ..storage.schema import deliveries as deliveries_table

    push_ids = [r.id for r in conn.execute(sa.select(pushes_table.c.id).where(pushes_table.c.view_id.in_(view_ids)))]
    if push_ids:
        conn.execute(deliveries_table.delete().where(deliveries_table.c.push_id.in_(push_ids)))
        conn.execute(pushes_table.delete().where(pushes_table.c.id.in_(push_ids)))
    conn.execute(actions_table.delete().where(actions_table.c.view_id.in_(view_ids)))
    conn.execute(views_table.delete().where(views_table.c.id.in_(view_ids)))


def delete_views_of_dataset(store: Store, conn: sa.Connection, dataset_id: int) -> None:
    ids = [r.id for r in conn.execute(sa.select(views_table.c.id).where(views_table.c.dataset_id == dataset_id))]
    if ids:
        _delete(conn, ids)
