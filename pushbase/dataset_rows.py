"""A dataset's raw rows: read them in pages, and update one row (a receipt written back by a third party)."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .columns import flatten_row, modification_time, validator_for
from .datasets import Dataset, get_dataset
from .errors import Invalid, NotFound
from .loading import excerpt, same_stored_value, stored_encoder
from .rows import RowDecoder, decode_cursor, encode_cursor, page_limit
from .storage import Store, codecs

__all__ = ["list_rows", "get_row", "update_row", "row_decoder"]

DATA_CHANNEL = "pushbase_data"


def row_decoder(store: Store, dataset: Dataset) -> RowDecoder:
    fields = [(c.name, c.type) for c in dataset.columns]
    fields += [("created [auto]", "datetime"), ("last modified [auto]", "datetime")]
    return RowDecoder(store.dialect, fields)


def _columns(table: sa.Table, dataset: Dataset) -> list[Any]:
    return [table.c._id, *[table.c[c.col] for c in dataset.columns], table.c._created, table.c._modified]


def list_rows(store: Store, dataset_name: str, *, limit: int | None = None, after: str | None = None) -> dict[str, Any]:
    size = page_limit(limit)
    with store.read() as conn:
        dataset = get_dataset(store, dataset_name, conn)
        table = store.dataset_table(dataset.physical)
        query = sa.select(*_columns(table, dataset)).order_by(table.c._id).limit(size + 1)
        if after:
            values = decode_cursor(after)
            if len(values) != 1 or not isinstance(values[0], int):
                raise Invalid("the 'after' cursor does not belong to this dataset", code="invalid_cursor")
            query = query.where(table.c._id > values[0])
        result = conn.execute(query).all()
    decode = row_decoder(store, dataset)
    rows = [decode(r) for r in result[:size]]
    return {"rows": rows, "next": encode_cursor([rows[-1]["_id"]]) if len(result) > size else None}


def get_row(store: Store, conn: sa.Connection, dataset: Dataset, row_id: int) -> dict[str, Any]:
    return row_decoder(store, dataset)(_stored_row(store, conn, dataset, row_id))


def _stored_row(store: Store, conn: sa.Connection, dataset: Dataset, row_id: int) -> Any:
    """The row as stored (``_columns``' order); NotFound when there is none."""
    table = store.dataset_table(dataset.physical)
    found = conn.execute(sa.select(*_columns(table, dataset)).where(table.c._id == row_id)).first()
    if found is None:
        raise _no_row(dataset, row_id)
    return found


def _no_row(dataset: Dataset, row_id: int) -> NotFound:
    return NotFound(f"dataset {dataset.name!r} has no row {row_id}", details={"row_id": row_id})


def update_row(store: Store, dataset_name: str, row_id: int, fields: dict[str, Any]) -> dict[str, Any]:
    """Set some fields of one row; ``last modified [auto]`` moves forward so views see the change
    (unless nothing changes: then the row stays as it was, as an unchanged upsert does)."""
    if not isinstance(fields, dict) or not fields:
        raise Invalid("send a JSON object with the fields to set", code="invalid_update")
    with store.write() as conn:
        dataset = get_dataset(store, dataset_name, conn)
        fields = flatten_row(fields, dataset.nested)
        values: dict[str, Any] = {}
        json_texts: dict[str, str] = {}  # PostgreSQL's json values as loads store them (text), to compare
        errors = []
        for name, value in fields.items():
            try:
                column = dataset.column(name)
            except Invalid as exc:
                errors.append({"column": name, "message": exc.message, "value": excerpt(value)})
                continue
            if value is None:
                if name in dataset.unique_id:
                    errors.append({"column": name, "message": "a unique-id value is required", "value": None})
                values[column.col] = None
                continue
            try:
                valid = validator_for(column.type)(value)
                values[column.col] = codecs.encoder(store.dialect, column.type)(valid)
                if column.type == "json" and store.dialect != "sqlite":  # SQLite's encoder gives the text
                    json_texts[column.col] = stored_encoder(store.dialect, column.type)(valid)
            except ValueError as exc:
                errors.append({"column": name, "message": str(exc), "value": excerpt(value), "expected": column.type})
        if errors:
            raise Invalid("the update does not match the dataset; nothing was changed", code="invalid_row", details=errors)
        table = store.dataset_table(dataset.physical)
        current = _stored_row(store, conn, dataset, row_id)
        stored = {c.col: (c.type, current[1 + i]) for i, c in enumerate(dataset.columns)}
        if all(same_stored_value(store.dialect, stored[col][0], stored[col][1], json_texts.get(col, new)) for col, new in values.items()):
            # Nothing changes (a receipt written again): the row keeps its last modified, so views
            # comparing it with a log-time field do not see it as new and push it once more.
            return row_decoder(store, dataset)(current)
        values["_modified"] = codecs.encoder(store.dialect, "datetime")(modification_time())
        try:
            updated = conn.execute(table.update().where(table.c._id == row_id).values(values)).rowcount
        except sa.exc.IntegrityError:
            raise Invalid("another row already has that unique id", code="duplicate_unique_id") from None
        if not updated:  # deleted meanwhile (PostgreSQL: another transaction)
            raise _no_row(dataset, row_id)
        store.notify(conn, DATA_CHANNEL, str(dataset.id))
        return get_row(store, conn, dataset, row_id)
