"""Bodies and batches: exact Agilebase form encoding, JSON, NDJSON, limits by rows and by bytes."""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlencode

import pytest

from pushbase.push.formats import BatchCutter, content_type, encode_rows

ROWS = [{"_id": i, "name": f"Zoë & co / {i}", "total": i * 1.5, "tags": ["a", "b"], "when": None} for i in range(1, 8)]


def cut(fmt: str, max_rows: int, max_bytes: int, rows=ROWS):
    cutter = BatchCutter(fmt, max_rows, max_bytes)
    batches = [b for b in (cutter.add(r, r["_id"] * 10) for r in rows) if b is not None]
    last = cutter.finish()
    return batches + ([last] if last else [])


def decode(fmt: str, body: bytes):
    if fmt == "form":
        return json.loads(parse_qs(body.decode())["json"][0])
    if fmt == "ndjson":
        return [json.loads(line) for line in body.decode().splitlines()]
    return json.loads(body)


def test_form_body_is_what_a_form_post_of_one_json_parameter_is():
    body = encode_rows("form", ROWS[:2])
    assert body == urlencode({"json": json.dumps(ROWS[:2], separators=(",", ":"), ensure_ascii=False)}).encode()
    assert content_type("form") == "application/x-www-form-urlencoded"
    assert list(parse_qs(body.decode())) == ["json"]


@pytest.mark.parametrize("fmt", ["form", "json", "ndjson"])
def test_batches_keep_order_and_keys(fmt):
    batches = cut(fmt, 3, 1_000_000)
    assert [b.rows for b in batches] == [3, 3, 1]
    assert [row for b in batches for row in decode(fmt, b.body)] == ROWS
    assert [k for b in batches for k in b.keys] == [[r["_id"], r["_id"] * 10] for r in ROWS]
    assert encode_rows(fmt, ROWS[:3]) == batches[0].body


@pytest.mark.parametrize("fmt", ["form", "json", "ndjson"])
@pytest.mark.parametrize("limit", [200, 333, 500, 1000])
def test_byte_limit_is_exact(fmt, limit):
    batches = cut(fmt, 1000, limit)
    assert all(len(b.body) <= limit for b in batches)
    assert [row for b in batches for row in decode(fmt, b.body)] == ROWS
    # Each batch is as full as the limit allows: one more row would pass it.
    for batch, following in zip(batches, batches[1:]):
        bigger = encode_rows(fmt, decode(fmt, batch.body) + decode(fmt, following.body)[:1])
        assert len(bigger) > limit


def test_a_row_larger_than_the_limit_goes_alone():
    rows = [{"_id": 1, "x": "a" * 50}, {"_id": 2, "x": "b" * 500}, {"_id": 3, "x": "c"}]
    batches = cut("json", 1000, 200, rows)
    assert [b.rows for b in batches] == [1, 1, 1]
    assert len(batches[1].body) > 200


@pytest.mark.parametrize("fmt", ["form", "json", "ndjson"])
def test_whole_batch_is_byte_for_byte_what_add_builds(fmt):
    (expected,) = cut(fmt, 100, 1_000_000)
    whole = BatchCutter(fmt, 100, 1_000_000).whole(ROWS, [[r["_id"], r["_id"] * 10] for r in ROWS])
    if fmt == "ndjson":
        assert whole is None  # nothing to save: fed row by row
        return
    assert whole is not None and whole.body == expected.body and whole.keys == expected.keys
    # Too many rows or too many bytes for one batch: left to ``add``.
    assert BatchCutter(fmt, 6, 1_000_000).whole(ROWS, [[r["_id"], 0] for r in ROWS]) is None
    assert BatchCutter(fmt, 100, len(expected.body) - 1).whole(ROWS, [[r["_id"], 0] for r in ROWS]) is None
    assert BatchCutter(fmt, 100, len(expected.body)).whole(ROWS, [[r["_id"], 0] for r in ROWS]) is not None
