"""The pull API's output, byte for byte: JSON pages, NDJSON and CSV streams of every column type, with
nulls, unicode, text that CSV must quote, calculations and system fields, on both engines.

The expected output is computed here the slow, obvious way (SQLAlchemy rows, ``RowDecoder``, one
``orjson.dumps`` per row, ``csv.writer``), so the fast paths of the server must give the same bytes.
"""
from __future__ import annotations

import csv
import io
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from pushbase import rows as rows_module
from pushbase.rows import JSON
from pushbase.keys import create_key
from pushbase.storage import cursors, open_store
from pushbase.views import query as query_module
from pushbase.views import store as views
from pushbase.web import create_app

from .conftest import Api, pg_schema_url

COLS = [
    {"name": "s", "type": "string"},
    {"name": "i", "type": "integer"},
    {"name": "n", "type": "number"},
    {"name": "b", "type": "boolean"},
    {"name": "d", "type": "date"},
    {"name": "t", "type": "datetime"},
    {"name": "j", "type": "json"},
]

ROWS: list[dict[str, Any]] = [
    {"s": "plain", "i": 1, "n": 1.0, "b": True, "d": "2024-02-29", "t": "2024-01-01T00:00:00Z", "j": {"a": [1, 2, {"b": None}], "ü": "☃"}},
    {"s": 'comma, "quote"', "i": -5, "n": 0.1, "b": False, "d": "0001-01-01", "t": "1969-12-31T23:59:59.999999Z", "j": [1, "x", 2.5]},
    {"s": "line\nbreak\r\nand cr\r", "i": 2**53, "n": 1e16, "b": None, "d": "9999-12-31", "t": "9999-12-31T23:59:59.999999Z", "j": "just text"},
    {"s": "", "i": 0, "n": 1e-7, "b": True, "d": None, "t": "0001-01-01T00:00:00Z", "j": 5},
    {"s": None, "i": None, "n": None, "b": None, "d": None, "t": None, "j": None},
    {"s": "unicode ✓ ü 日本 😀", "i": 42, "n": 1234.5678, "b": False, "d": "1970-01-01", "t": "2024-06-30T12:34:56.123456+02:00", "j": True},
    {"s": "  spaces  ", "i": 7, "n": 3.0000000000000004, "b": True, "d": "2000-01-01", "t": "1970-01-01T00:00:00Z", "j": {"k": 'v,"q"\n'}},
    {"s": "tab\tsemi;colon", "i": -(2**62), "n": -2.5e-300, "b": False, "d": "1999-12-31", "t": "1900-03-01T01:02:03.000004Z", "j": [{"_id": 1}, {"_id": 2}]},
    {"s": "plain", "i": 1, "n": 1.0, "b": True, "d": "2024-02-29", "t": "2024-01-01T00:00:00Z", "j": {}},
]
for index, row in enumerate(ROWS):
    row["k"] = index + 1  # the unique id

CALCS = [
    {"name": "later", "formula": "add_days({t}, 1)"},
    {"name": "day", "formula": "date({t})"},
    {"name": "yes", "formula": "{b} = true"},
    {"name": "label", "formula": "concat({s}, ',\"', {i})"},
    {"name": "half", "formula": "{n} / 2"},
    {"name": "age", "formula": "days_between({t}, now()) > 0"},
]
VIEWS = {
    "plain": {"columns": ["k", "s", "i", "n", "b", "d", "t", "j"], "sort": ["k"]},
    "calcs": {"columns": ["k", "s", "b", "t"], "calculations": CALCS, "sort": ["k"]},
    "system": {"columns": ["k", "row id [auto]", "created [auto]", "last modified [auto]", "t"]},
    "ties": {"columns": ["k", "b", "s", "t"], "sort": [{"field": "b", "direction": "desc"}, {"field": "s", "direction": "asc"}]},
    "filtered": {"columns": ["k", "s", "n"], "filters": [{"field": "b", "op": "equals", "value": True}], "sort": [{"field": "n", "direction": "desc"}]},
    "limited": {"columns": ["k", "t"], "sort": [{"field": "t", "direction": "desc"}], "limit": 4},
    # no sort keys: page rows hold only the fields, and converted ones (booleans, json) are set per struct
    "unsorted": {"columns": ["k", "b", "j", "s", "t"], "calculations": [{"name": "yes", "formula": "{b} = true"}]},
}
PORTABLE = ("plain", "calcs", "ties", "filtered", "limited", "unsorted")  # the same bytes on both engines


def make_views(api: Api) -> None:
    r = api.post("/api/datasets", json={"name": "typed", "columns": [{"name": "k", "type": "integer"}, *COLS], "unique_id": ["k"]})
    assert r.status_code == 201, r.text
    assert api.load("typed", ROWS)["status"] == "Complete"
    for name, body in VIEWS.items():
        r = api.post("/api/views", json={"name": name, "dataset": "typed", **body})
        assert r.status_code == 201, r.text


@pytest.fixture
def typed(api: Api) -> Api:
    make_views(api)
    return api


def csv_value(value: Any) -> Any:
    """What the pull API has always written for a decoded value."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


def reference(store: Any, name: str) -> tuple[list[dict[str, Any]], bytes, bytes]:
    """Rows, NDJSON and CSV of a view computed the slow way: SQLAlchemy rows and RowDecoder."""
    with store.read() as conn:
        query = views.view_query(store, views.get_view(store, name, conn), conn)
        select = query.select()
        if query.limit is not None:
            select = select.limit(query.limit)
        decoded = [query.decoder(tuple(r)) for r in conn.execute(select)]
        header = ["_id", *[f.name for f in query.output]]
    # The same JSON writer as the API (msgspec: ``1e16``, where orjson wrote ``1e+16``): what is
    # compared is which values the fast path writes, against SQLAlchemy rows and RowDecoder.
    ndjson = JSON.encode_lines(decoded)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([[csv_value(v) for v in r.values()] for r in decoded])
    return decoded, ndjson, buffer.getvalue().encode()


def pulled(api: Api, name: str, limit: int = 2) -> tuple[list[dict[str, Any]], bytes, bytes]:
    rows = api.all_rows(f"/api/views/{name}/rows", limit=limit)
    nd = api.get(f"/api/views/{name}/rows", params={"format": "ndjson"})
    assert nd.status_code == 200 and nd.headers["content-type"].startswith("application/x-ndjson")
    cs = api.get(f"/api/views/{name}/rows", params={"format": "csv"})
    assert cs.status_code == 200 and cs.headers["content-type"] == "text/csv; charset=utf-8"
    return rows, nd.content, cs.content


@pytest.mark.parametrize("name", list(VIEWS))
def test_every_format_gives_the_reference_bytes(typed: Api, store: Any, name: str) -> None:
    want_rows, want_ndjson, want_csv = reference(store, name)
    assert want_rows, "the view selects rows"
    for limit in (1, 2, 3, 1000):
        rows, ndjson, csv_bytes = pulled(typed, name, limit)
        assert orjson.dumps(rows) == orjson.dumps(want_rows)
    assert ndjson == want_ndjson
    assert csv_bytes == want_csv


def test_values_as_clients_see_them(typed: Api) -> None:
    rows, ndjson, csv_bytes = pulled(typed, "plain")
    assert rows[1] == {"_id": 2, "k": 2, "s": 'comma, "quote"', "i": -5, "n": 0.1, "b": False, "d": "0001-01-01",
                       "t": "1969-12-31T23:59:59.999999Z", "j": [1, "x", 2.5]}
    assert rows[4] == {"_id": 5, "k": 5, **{c["name"]: None for c in COLS}}
    assert rows[5]["t"] == "2024-06-30T10:34:56.123456Z" and rows[3]["t"] == "0001-01-01T00:00:00.000000Z"
    lines = csv_bytes.decode().split("\r\n")
    assert lines[0] == "_id,k,s,i,n,b,d,t,j"
    assert lines[1] == '1,1,plain,1,1.0,true,2024-02-29,2024-01-01T00:00:00.000000Z,"{""a"":[1,2,{""b"":null}],""ü"":""☃""}"'
    assert lines[2] == '2,2,"comma, ""quote""",-5,0.1,false,0001-01-01,1969-12-31T23:59:59.999999Z,"[1,""x"",2.5]"'
    assert '5,5,,,,,,,' in lines
    assert ndjson.splitlines()[5] == ('{"_id":6,"k":6,"s":"unicode ✓ ü 日本 😀","i":42,"n":1234.5678,"b":false,"d":"1970-01-01",'
                                      '"t":"2024-06-30T10:34:56.123456Z","j":true}').encode()


def test_pages_and_streams_keep_one_order_over_ties(typed: Api) -> None:
    rows, ndjson, csv_bytes = pulled(typed, "ties", limit=1)
    streamed = [orjson.loads(line) for line in ndjson.splitlines()]
    assert [r["_id"] for r in rows] == [r["_id"] for r in streamed]
    # true first (desc), then false, then null; within each, text ascending with nulls last, then _id.
    assert [(r["b"], r["s"]) for r in rows][:4] == [(True, ""), (True, "  spaces  "), (True, "plain"), (True, "plain")]
    assert [r["_id"] for r in rows][2:4] == [1, 9]
    assert rows[-1]["b"] is None and rows[-1]["s"] is None


def test_streams_and_pages_cross_many_fetches(typed: Api, store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 2 rows: every row arrives once, whichever batch boundary it falls on."""
    monkeypatch.setattr(query_module, "STREAM_BATCH", 2)
    monkeypatch.setattr(query_module, "PAGE_BATCH", 2)
    for name in VIEWS:
        want_rows, want_ndjson, want_csv = reference(store, name)
        for limit in (1, 2, 3, 4, 5):
            rows, ndjson, csv_bytes = pulled(typed, name, limit)
            assert orjson.dumps(rows) == orjson.dumps(want_rows)
        assert ndjson == want_ndjson and csv_bytes == want_csv
        with store.read() as conn:
            query = views.view_query(store, views.get_view(store, name, conn), conn)
            assert [r for batch in query.stream(conn, batch=3) for r in batch] == want_rows


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked_rows", "one_result"])
def test_pages_are_the_bytes_of_one_encode(typed: Api, store: Any, monkeypatch: pytest.MonkeyPatch, chunked: bool) -> None:
    """A page is built a batch at a time, yet its bytes are those of the whole page encoded at once. On PostgreSQL
    rows come in libpq's chunks, or (an older libpq) as one client-side result: the same pages."""
    monkeypatch.setattr(query_module, "PAGE_BATCH", 2)
    if not chunked:
        monkeypatch.setattr(cursors, "_chunked_rows", lambda: False)
    for name in VIEWS:
        want_rows = reference(store, name)[0]
        for limit in (1, 3, 1000):
            got: list[dict[str, Any]] = []
            after = None
            while True:
                r = typed.get(f"/api/views/{name}/rows", params={"limit": limit, **({"after": after} if after else {})})
                assert r.status_code == 200, r.text
                page = orjson.loads(r.content)
                assert r.content == JSON.encode(page)
                got += page["rows"]
                after = page["next"]
                if after is None:
                    break
            assert orjson.dumps(got) == orjson.dumps(want_rows)


def test_empty_view_streams_only_the_header(typed: Api) -> None:
    assert typed.post("/api/views", json={"name": "none", "dataset": "typed", "columns": ["k", "s"],
                                         "filters": [{"field": "k", "op": "gt", "value": 1000}]}).status_code == 201
    assert typed.get("/api/views/none/rows", params={"format": "csv"}).content == b"_id,k,s\r\n"
    assert typed.get("/api/views/none/rows", params={"format": "ndjson"}).content == b""
    assert typed.get("/api/views/none/rows").json() == {"rows": [], "next": None}


def test_both_engines_give_the_same_bytes(tmp_path: Any, pg_schema: str) -> None:
    outputs = []
    for url in (str(tmp_path / "pull.db"), pg_schema_url(pg_schema)):
        store = open_store(url)
        key, _ = create_key(store, "admin", ["admin"])
        try:
            with TestClient(create_app(store=store), raise_server_exceptions=False) as client:
                api = Api(client, key)
                make_views(api)
                got = {}
                for name in PORTABLE:
                    rows, ndjson, csv_bytes = pulled(api, name)
                    # now() differs between the two runs, not what it decides.
                    got[name] = (orjson.dumps(rows), ndjson, csv_bytes)
                outputs.append(got)
        finally:
            store.close()
    sqlite_out, pg_out = outputs
    for name in PORTABLE:
        assert sqlite_out[name] == pg_out[name], name


# -- the CSV writer ----------------------------------------------------------------------------

CSV_TEXT = st.text(st.sampled_from(list('ab ,"\r\n\t;é😀')) | st.characters(blacklist_categories=("Cs",)), max_size=12)
CSV_VALUE = st.none() | st.booleans() | st.integers() | st.floats() | CSV_TEXT


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=1, max_value=5).flatmap(lambda width: st.lists(st.tuples(*[CSV_VALUE] * width), max_size=8)))
def test_csv_text_matches_the_csv_module(rows: list[tuple[Any, ...]]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    assert rows_module.csv_text(rows) == buffer.getvalue()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(), CSV_TEXT, st.floats(), st.none() | CSV_TEXT), max_size=20))
def test_csv_text_matches_for_typed_columns(rows: list[tuple[Any, ...]]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    assert rows_module.csv_text(rows) == buffer.getvalue()


def _read_ahead_served() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("pushbase_pull_read_ahead_total", {"result": "served"}) or 0.0


def test_pages_read_ahead_give_every_row_once_and_skip_views_that_read_the_clock(typed: Api, store: Any) -> None:
    before = _read_ahead_served()
    # 9 rows in pages of 2: from the third page on, each page may have been read ahead.
    assert [r["k"] for r in typed.all_rows("/api/views/plain/rows", limit=2)] == list(range(1, 10))
    after_plain = _read_ahead_served()
    assert after_plain > before, "no page was served from the read-ahead"
    # ``calcs`` uses now(): its rows depend on when they are read, so nothing is read ahead.
    assert len(typed.all_rows("/api/views/calcs/rows", limit=2)) == len(ROWS)
    assert _read_ahead_served() == after_plain


def test_a_change_committed_between_pages_is_in_the_next_page(typed: Api, store: Any) -> None:
    ids = {r["k"]: r["_id"] for r in typed.all_rows("/api/datasets/typed/rows")}
    first = typed.get("/api/views/plain/rows", params={"limit": 3}).json()
    second = typed.get("/api/views/plain/rows", params={"limit": 3, "after": first["next"]}).json()
    ahead = typed.client.app.state.read_ahead
    # The third page has been read ahead, before the change below: it must not be served.
    assert len(ahead._pages) == 1
    for prepared in list(ahead._pages.values()):
        prepared.future.result(timeout=60)
    assert typed.patch(f"/api/datasets/typed/rows/{ids[8]}", json={"s": "changed after"}).status_code == 200
    third = typed.get("/api/views/plain/rows", params={"limit": 3, "after": second["next"]}).json()
    assert [r["k"] for r in third["rows"]] == [7, 8, 9]
    assert next(r for r in third["rows"] if r["k"] == 8)["s"] == "changed after"


def test_read_ahead_pauses_while_its_pages_keep_going_stale(tmp_path: Any) -> None:
    """On a database written all the time, read-ahead would read most pages twice: it stops trying for
    a while once most of its recent pages went stale, and never serves a stale one."""
    import sqlite3

    from pushbase.views.query import JsonPage
    from pushbase.views.readahead import ReadAhead, _SqliteVersion

    path = str(tmp_path / "ahead.db")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (x)")
    ahead = ReadAhead(_SqliteVersion(path))
    try:
        def cycle(i: int, write: bool) -> JsonPage | None:
            ahead.prepare(("v", None, str(i)), lambda: JsonPage(b"[]", None))
            if ("v", None, str(i)) in ahead._pages:
                ahead._pages[("v", None, str(i))].future.result(timeout=30)  # read, as by a slower client
            prepared = ahead.take(("v", None, str(i)))
            if prepared is None:
                return None
            if write:
                writer.execute("INSERT INTO t VALUES (1)")
            return ahead.served(prepared)

        assert cycle(0, write=False) == JsonPage(b"[]", None)  # nothing committed: served
        for i in range(1, ReadAhead.RECENT):
            assert cycle(i, write=True) is None  # a commit after its read began: never served
        assert ahead.paused
        assert cycle(99, write=False) is None and ahead.take(("v", None, "99")) is None  # nothing prepared while paused
    finally:
        ahead.close()
        writer.close()


def test_read_ahead_queues_at_most_one_read_behind_the_one_running(tmp_path: Any) -> None:
    """Clients paging faster than the reader reads must not pile up reads of pages nobody will take."""
    import sqlite3
    import threading

    from pushbase.views.query import JsonPage
    from pushbase.views.readahead import ReadAhead, _SqliteVersion

    path = str(tmp_path / "ahead.db")
    sqlite3.connect(path).close()
    ahead = ReadAhead(_SqliteVersion(path))
    gate = threading.Event()
    reads: list[int] = []

    def slow(i: int) -> JsonPage:
        reads.append(i)
        gate.wait(30)
        return JsonPage(b"[]", None)

    try:
        for i in range(20):
            ahead.prepare(("v", None, str(i)), lambda i=i: slow(i))
        gate.set()
        ahead._reader.submit(lambda: None).result(timeout=30)  # every read still queued has run by now
        assert len(reads) <= 2, reads
    finally:
        gate.set()
        ahead.close()
