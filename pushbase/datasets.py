"""Datasets: typed tables made from a sample JSON object or a column list, with an optional unique id.

Each dataset is a real table ``ds_<id>``; user column names map to generated physical names (``c1``,
``c2`` ...), kept in the dataset's metadata, so any Unicode name works and no user text reaches SQL.
"""
from __future__ import annotations

import datetime as dt
import difflib
import re
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from .columns import (
    COLUMN_TYPES,
    SYSTEM_FIELDS,
    Column,
    columns_from_sample,
    nested_prefixes,
    parse_columns,
    utc_now,
    validate_object_name,
)
from .errors import Conflict, Invalid, NotFound
from .storage import DatasetColumns, Store
from .storage.schema import datasets as datasets_table
from .storage.schema import pushes as pushes_table
from .storage.schema import views as views_table

__all__ = ["Dataset", "DatasetColumn", "create_dataset", "get_dataset", "list_datasets", "update_dataset", "delete_dataset", "suggest"]


@dataclass(frozen=True)
class DatasetColumn:
    name: str
    type: str
    col: str  # physical column name


@dataclass(frozen=True)
class Dataset:
    id: int
    name: str
    columns: tuple[DatasetColumn, ...]
    unique_id: tuple[str, ...]
    options: dict[str, Any] = field(hash=False, compare=False)
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    next_col: int = 1

    @property
    def physical(self) -> DatasetColumns:
        by_name = {c.name: c.col for c in self.columns}
        return DatasetColumns(self.id, tuple((c.name, c.type, c.col) for c in self.columns), tuple(by_name[n] for n in self.unique_id))

    def column(self, name: str) -> DatasetColumn:
        for column in self.columns:
            if column.name == name:
                return column
        raise Invalid(
            f"dataset {self.name!r} has no column {name!r}" + _did_you_mean(name, [c.name for c in self.columns]),
            code="unknown_column",
            details={"column": name, "suggestion": suggest(name, [c.name for c in self.columns])},
        )

    @property
    def nested(self) -> frozenset[str]:
        return nested_prefixes(Column(c.name, c.type) for c in self.columns)

    @property
    def ignore_unknown_fields(self) -> bool:
        return bool(self.options.get("ignore_unknown_fields"))

    def to_json(self, row_count: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "columns": [{"name": c.name, "type": c.type} for c in self.columns],
            "unique_id": list(self.unique_id),
            "ignore_unknown_fields": self.ignore_unknown_fields,
            "system_fields": [{"name": n, "type": t} for n, t in SYSTEM_FIELDS.items()],
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }
        if row_count is not None:
            body["row_count"] = row_count
        return body


def suggest(name: str, candidates: list[str]) -> str | None:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return close[0] if close else None


def _did_you_mean(name: str, candidates: list[str]) -> str:
    hint = suggest(name, candidates)
    return f"; did you mean {hint!r}?" if hint else ""


def _from_row(row: Any) -> Dataset:
    return Dataset(
        id=row.id,
        name=row.name,
        columns=tuple(DatasetColumn(c["name"], c["type"], c["col"]) for c in row.columns),
        unique_id=tuple(row.unique_id),
        options=dict(row.options or {}),
        created_at=row.created_at,
        updated_at=row.updated_at,
        next_col=row.next_col,
    )


def _check_unique_id(unique_id: object, columns: list[Column]) -> list[str]:
    if unique_id is None:
        return []
    if isinstance(unique_id, str):
        unique_id = [unique_id]
    if not isinstance(unique_id, list) or not all(isinstance(u, str) for u in unique_id):
        raise Invalid("unique_id must be a list of column names", code="invalid_unique_id")
    by_name = {c.name: c for c in columns}
    for name in unique_id:
        if name not in by_name:
            raise Invalid(
                f"unique_id names {name!r}, which is not a column" + _did_you_mean(name, list(by_name)),
                code="invalid_unique_id",
                details={"column": name},
            )
        if by_name[name].type == "json":
            raise Invalid(f"unique_id column {name!r} is a json column; json columns cannot identify rows", code="invalid_unique_id")
    if len(set(unique_id)) != len(unique_id):
        raise Invalid("unique_id names a column twice", code="invalid_unique_id")
    return list(unique_id)


def create_columns_of(body: dict[str, Any]) -> list[Column]:
    """The columns a create request asks for: from its sample (with optional type overrides) or its list."""
    if body.get("sample") is not None and body.get("columns") is not None:
        raise Invalid("give either sample or columns, not both", code="invalid_dataset")
    if body.get("sample") is not None:
        columns = columns_from_sample(body["sample"])
        overrides = body.get("types") or {}
        if not isinstance(overrides, dict):
            raise Invalid("types must map column names to types", code="invalid_dataset")
        for col_name, col_type in overrides.items():
            if col_type not in COLUMN_TYPES:
                raise Invalid(f"types[{col_name!r}] must be one of {', '.join(COLUMN_TYPES)}", code="invalid_columns")
            if col_name not in {c.name for c in columns}:
                raise Invalid(f"types names {col_name!r}, which is not in the sample", code="invalid_columns")
        columns = [Column(c.name, overrides.get(c.name, c.type)) for c in columns]
    elif body.get("columns") is not None:
        columns = parse_columns(body["columns"])
    else:
        raise Invalid("a dataset needs a sample object or a columns list", code="invalid_dataset")
    return columns


def create_dataset(store: Store, body: dict[str, Any]) -> Dataset:
    name = validate_object_name(body.get("name"), "dataset")
    columns = create_columns_of(body)
    unique_id = _check_unique_id(body.get("unique_id"), columns)
    options = {"ignore_unknown_fields": bool(body.get("ignore_unknown_fields", False))}
    stored = [{"name": c.name, "type": c.type, "col": f"c{i}"} for i, c in enumerate(columns, start=1)]
    _check_column_count(store, len(stored))
    now = utc_now()
    with store.write() as conn:
        if conn.execute(sa.select(datasets_table.c.id).where(datasets_table.c.name == name)).first():
            raise Conflict(f"dataset {name!r} already exists", code="exists")
        dataset_id = conn.execute(
            datasets_table.insert().values(
                name=name, columns=stored, unique_id=unique_id, options=options, next_col=len(stored) + 1, created_at=now, updated_at=now
            )
        ).inserted_primary_key[0]
        dataset = _from_row(conn.execute(sa.select(datasets_table).where(datasets_table.c.id == dataset_id)).one())
        store.create_dataset_table(conn, dataset.physical)
    return dataset


# Built once: SQLAlchemy then reuses their cache keys and compiled forms (every ingest request looks its
# dataset up twice; a statement built per call cost about half of each lookup).
_BY_NAME = sa.select(datasets_table).where(datasets_table.c.name == sa.bindparam("name"))
_BY_ID = sa.select(datasets_table).where(datasets_table.c.id == sa.bindparam("id"))


def get_dataset(store: Store, name: str, conn: sa.Connection | None = None) -> Dataset:
    if conn is None:
        with store.read() as own:
            return get_dataset(store, name, own)
    row = conn.execute(_BY_NAME, {"name": name}).first()
    if row is None:
        raise NotFound(f"dataset {name!r} does not exist", details={"dataset": name})
    return _from_row(row)


def get_dataset_by_id(store: Store, dataset_id: int, conn: sa.Connection) -> Dataset:
    row = conn.execute(_BY_ID, {"id": dataset_id}).first()
    if row is None:
        raise NotFound(f"dataset #{dataset_id} does not exist")
    return _from_row(row)


def list_datasets(store: Store) -> list[Dataset]:
    with store.read() as conn:
        return [_from_row(r) for r in conn.execute(sa.select(datasets_table).order_by(datasets_table.c.name))]


def row_count(store: Store, dataset: Dataset, conn: sa.Connection | None = None) -> int:
    if conn is None:
        with store.read() as own:
            return row_count(store, dataset, own)
    table = store.dataset_table(dataset.physical)
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() or 0)


def update_dataset(store: Store, name: str, body: dict[str, Any]) -> Dataset:
    """PATCH: ``add_columns``, ``drop_columns`` (refused while a view uses them), ``ignore_unknown_fields``."""
    allowed = {"add_columns", "drop_columns", "ignore_unknown_fields", "cascade"}
    unknown = set(body) - allowed
    if unknown:
        raise Invalid(f"cannot change {', '.join(sorted(unknown))}; PATCH accepts {', '.join(sorted(allowed))}", code="invalid_patch")
    with store.write() as conn:
        dataset = get_dataset(store, name, conn)
        stored = [{"name": c.name, "type": c.type, "col": c.col} for c in dataset.columns]
        next_col = dataset.next_col
        options = dict(dataset.options)
        if "ignore_unknown_fields" in body:
            options["ignore_unknown_fields"] = bool(body["ignore_unknown_fields"])
        if body.get("drop_columns"):
            drop = body["drop_columns"]
            if not isinstance(drop, list) or not all(isinstance(d, str) for d in drop):
                raise Invalid("drop_columns must be a list of column names", code="invalid_patch")
            for col_name in drop:
                dataset.column(col_name)
                if col_name in dataset.unique_id:
                    raise Conflict(f"column {col_name!r} is part of the unique id", code="in_use")
            users = views_using(conn, dataset.id, columns=set(drop))
            if users:
                raise Conflict(
                    f"columns {', '.join(drop)} are used by views {', '.join(users)}; change those views first",
                    code="in_use",
                    details={"views": users},
                )
            stampers = pushes_stamping(conn, dataset.id, columns=set(drop))
            if stampers:
                raise Conflict(
                    f"columns {', '.join(drop)} are the log-time field of pushes {', '.join(stampers)}; change or delete those pushes first",
                    code="in_use",
                    details={"pushes": stampers},
                )
            stored = [c for c in stored if c["name"] not in drop]
            # Dropping the physical column needs table rebuilds on old SQLite; we keep it and forget it.
        if body.get("add_columns"):
            new = parse_columns(body["add_columns"])
            existing = {c["name"] for c in stored}
            added = []
            for column in new:
                if column.name in existing:
                    raise Conflict(f"column {column.name!r} already exists", code="exists", details={"column": column.name})
                entry = {"name": column.name, "type": column.type, "col": f"c{next_col}"}
                next_col += 1
                stored.append(entry)
                added.append((entry["name"], entry["type"], entry["col"]))
            _check_column_count(store, next_col - 1)
            store.add_dataset_columns(conn, dataset.physical, added)
        conn.execute(
            datasets_table.update()
            .where(datasets_table.c.id == dataset.id)
            .values(columns=stored, options=options, next_col=next_col, updated_at=utc_now())
        )
        return get_dataset(store, name, conn)


# Physical columns per dataset table, system columns and dropped (kept) columns included, stay well
# below SQLite's 2,000 and PostgreSQL's 1,600 per table (and PostgreSQL's 1,664 per SELECT list).
MAX_COLUMNS = 1000


def _check_column_count(store: Store, physical_columns: int) -> None:
    if physical_columns > MAX_COLUMNS:
        raise Invalid(
            f"a dataset holds at most {MAX_COLUMNS} columns over its life (dropped ones count: they are kept); "
            f"this would make {physical_columns}",
            code="too_many_columns",
            details={"max": MAX_COLUMNS, "columns": physical_columns},
        )


def pushes_stamping(conn: sa.Connection, dataset_id: int, columns: set[str]) -> list[str]:
    """Names of pushes whose log-time field is one of ``columns`` of the dataset."""
    query = (
        sa.select(pushes_table.c.name, pushes_table.c.definition)
        .join(views_table, views_table.c.id == pushes_table.c.view_id)
        .where(views_table.c.dataset_id == dataset_id)
    )
    return sorted(row.name for row in conn.execute(query) if (row.definition or {}).get("log_time_field") in columns)


def views_using(conn: sa.Connection, dataset_id: int, columns: set[str] | None = None) -> list[str]:
    """Names of views over the dataset (only those that mention one of ``columns`` when given)."""
    names = []
    for row in conn.execute(sa.select(views_table.c.name, views_table.c.definition).where(views_table.c.dataset_id == dataset_id)):
        if columns is None or _fields_mentioned(row.definition) & columns:
            names.append(row.name)
    return sorted(names)


def _fields_mentioned(definition: dict[str, Any]) -> set[str]:
    names = {c for c in definition.get("columns") or [] if isinstance(c, str)}
    names |= {f.get("field") for f in definition.get("filters") or [] if isinstance(f, dict)}
    names |= {s.get("field") for s in definition.get("sort") or [] if isinstance(s, dict)}
    for calc in definition.get("calculations") or []:
        names |= set(re.findall(r"\{([^{}]+)\}", str(calc.get("formula", ""))))
    return {n for n in names if isinstance(n, str)}


def delete_dataset(store: Store, name: str, *, cascade: bool = False) -> None:
    with store.write() as conn:
        dataset = get_dataset(store, name, conn)
        users = views_using(conn, dataset.id)
        if users and not cascade:
            raise Conflict(
                f"dataset {name!r} is used by views {', '.join(users)}; delete them first or pass cascade=true",
                code="in_use",
                details={"views": users},
            )
        if users:
            from .views.store import delete_views_of_dataset  # views depend on datasets, not the reverse

            delete_views_of_dataset(store, conn, dataset.id)
        conn.execute(datasets_table.delete().where(datasets_table.c.id == dataset.id))
        store.drop_dataset_table(conn, dataset.id)
