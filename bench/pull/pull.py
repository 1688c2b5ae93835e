"""bench/pull: read 1,000,000 rows (and a ~1% filtered view) out of Pushbase (SQLite, PostgreSQL) as
JSON pages, NDJSON and CSV, and the same rows out of Datasette 1.0a41's JSON API and CSV export.

Load (not timed against anyone): the rows go through Pushbase's Push API, ``POST .../data?wait=true``
with ~5 MB bodies (20,000 rows) from 4 concurrent clients, so the server never holds a backlog of
parsed jobs; Datasette's database file is made with sqlite-utils' Python API (table ``rows``, ``pk="id"``)
and filled with the same rows, with an index on ``city`` like the one Pushbase makes for the filter.

Reads (timed, one client at a time, on a freshly started server, so RSS is the pull's own; the
filtered view, one page of ~10,000 rows, is read five times in a row by each system and the run of
median time reported, the first (cold) read included among the five):
- Pushbase ``GET /api/views/{v}/rows?format=json&limit=10000`` following ``next`` (``&after=``);
  ``format=ndjson`` and ``format=csv`` streams. JSON pages are read with httpx; the client checks each
  page as JSON and counts its rows without building Python objects for them (msgspec ``Raw``), and
  decodes only the link to the next page. Building every row as Python objects (orjson.loads) cost
  the client about 1 µs a row, as much as a fast server spends, and the client runs between the
  server's pages, so it would hide the servers' difference. Streams are read by curl, their lines
  counted. Both servers are read the same way.
- Datasette ``GET /peer/rows.json?_size=max&_shape=objects`` following ``next_url`` (1.0a41's
  ``_shape=array`` has no next link, and ``_extra=next`` is refused as unknown); also
  ``?_shape=array&_size=max&_next=<last id>`` with the ``_next`` token built by the client (for a table
  with one integer primary key Datasette's token is that key); the faster of the two is the one our
  ratio uses. ``GET /peer/rows.csv?_stream=on&_size=max``. Filtered: ``&city=city_042``.
  Settings: ``max_returned_rows=10000`` (same page size as ours), ``max_csv_mb=0`` (the default 100 MB
  would truncate the 1,000,000-row CSV), ``sql_time_limit_ms=30000`` (no page may time out).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import msgspec
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchlib as B  # noqa: E402

PAGE = 10000
LOAD_BATCH_ROWS = 20000
LOAD_CONCURRENCY = 4
VIEWS = {
    "all_rows": {"name": "all_rows", "dataset": "bench"},
    "one_city": {"name": "one_city", "dataset": "bench", "filters": [{"field": "city", "op": "equals", "value": B.FILTER_CITY}]},
}
# Reads of each view and format: the filtered view's (~10,000 rows, one page) the median of five.
REPEAT = {"all_rows": 1, "one_city": 5}
DATASETTE_SETTINGS = {"max_returned_rows": PAGE, "max_csv_mb": 0, "sql_time_limit_ms": 30000}
NO_GZIP = {"accept-encoding": "identity"}
CURL = shutil.which("curl")


# ------------------------------------------------------------------------------------------------
# Readers: each returns the number of rows read.


class OurPage(msgspec.Struct):
    rows: list[msgspec.Raw]
    next: str | None = None


class DatasetteObjectsPage(msgspec.Struct):
    rows: list[msgspec.Raw]
    next_url: str | None = None


# Each row is checked as JSON and skipped, not built as Python objects (see the module docstring).
OUR_PAGE = msgspec.json.Decoder(OurPage)
DATASETTE_OBJECTS_PAGE = msgspec.json.Decoder(DatasetteObjectsPage)
DATASETTE_ARRAY_PAGE = msgspec.json.Decoder(list[msgspec.Raw])


def read_pages(client: httpx.Client, first_url: str, decode: Callable[[bytes], Any], next_of: Callable[[Any, str], str | None],
               rows_of: Callable[[Any], list]) -> int:
    url: str | None = first_url
    total = 0
    while url:
        r = client.get(url)
        if r.status_code != 200:
            raise RuntimeError(f"GET {url} -> {r.status_code}: {r.text[:300]}")
        doc = decode(r.content)
        total += len(rows_of(doc))
        url = next_of(doc, url)
    return total


def read_stream(client: httpx.Client, url: str, header_lines: int) -> int:
    """Count the lines of a streamed answer. With curl on the machine, curl reads it (C, whatever the
    server's chunk sizes: Datasette's CSV comes in many small chunks that would cost a Python client
    more than the server) and this process counts newlines in 1 MB reads of its output. curl's output
    is buffered (no --no-buffer): flushing every small chunk to the pipe cost the client a third more
    CPU on Datasette's CSV, on a machine whose two cores the client shares with the server."""
    lines = 0
    last = b"\n"
    if CURL:
        headers = [a for k, v in client.headers.items() if k in ("x-api-key", "accept-encoding") for a in ("-H", f"{k}: {v}")]
        proc = subprocess.Popen([CURL, "-sS", "--fail", *headers, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
        if proc.wait() != 0:
            raise RuntimeError(f"GET {url}: curl exited {proc.returncode}: {proc.stderr.read().decode()[:300] if proc.stderr else ''}")
    else:
        with client.stream("GET", url) as r:
            if r.status_code != 200:
                r.read()
                raise RuntimeError(f"GET {url} -> {r.status_code}: {r.text[:300]}")
            for chunk in r.iter_bytes():
                lines += chunk.count(b"\n")
                if chunk:
                    last = chunk[-1:]
    if last != b"\n":
        lines += 1
    return lines - header_lines


def _client_cpu() -> float:
    """CPU time of this process and its finished children (curl)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn: Callable[[], int], rss: B.RssSampler | None, repeat: int = 1) -> dict[str, Any]:
    """One reading; with ``repeat``, that many, and the one of median time is reported (all rows/s in
    ``runs_rows_per_s``): a filtered view's read takes well under a second, where one run is mostly noise."""
    if repeat > 1:
        runs = sorted((timed(fn, rss) for _ in range(repeat)), key=lambda r: r["seconds"])
        middle = dict(runs[len(runs) // 2])
        middle["runs_rows_per_s"] = [r["rows_per_s"] for r in runs]
        if rss:
            middle["rss_peak_mb"] = max(r["rss_peak_mb"] for r in runs)
            middle["rss_peak_main_mb"] = max(r["rss_peak_main_mb"] for r in runs)
        return middle
    idle = rss.reset() if rss else 0
    cpu = rss.cpu_seconds() if rss else 0.0
    client_cpu = _client_cpu()
    started = time.perf_counter()
    rows = fn()
    seconds = time.perf_counter() - started
    out = {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds) if seconds else None,
           "client_cpu_seconds": round(_client_cpu() - client_cpu, 2)}
    if rss:
        out["server_cpu_seconds"] = round(rss.cpu_seconds() - cpu, 2)
        out["rss_before_mb"] = B.mb(idle)
        out["rss_peak_mb"] = B.mb(rss.peak)
        out["rss_peak_main_mb"] = B.mb(rss.peak_main)
    return out


# ------------------------------------------------------------------------------------------------
# Pushbase


async def _load(server: B.Pushbase, bodies: list[tuple[int, bytes]]) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    async with httpx.AsyncClient(timeout=600.0, headers={**server.headers, "content-type": "application/json"}) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                r = await client.post(f"{server.url}/api/datasets/bench/data?wait=true", content=bodies[i][1])
                doc = r.json()
                if r.status_code != 200 or doc.get("status") != "Complete":
                    raise RuntimeError(f"load batch {i}: {r.status_code} {str(doc)[:500]}")

        await asyncio.gather(*(worker() for _ in range(LOAD_CONCURRENCY)))


def pushbase_load(db: str, work: Path, engine: str, rows: int, bodies: list[tuple[int, bytes]]) -> dict[str, Any]:
    with B.pushbase_server(db, work, f"{engine}-load") as server:
        columns = [{"name": n, "type": t} for n, t in B.COLUMNS]
        r = httpx.post(f"{server.url}/api/datasets", headers=server.headers, json={"name": "bench", "columns": columns, "unique_id": ["id"]}, timeout=60)
        r.raise_for_status()
        started = time.perf_counter()
        asyncio.run(_load(server, bodies))
        load_seconds = time.perf_counter() - started
        count = httpx.get(f"{server.url}/api/datasets/bench", headers=server.headers, timeout=120).json()["row_count"]
        if count != rows:
            raise RuntimeError(f"{engine}: loaded {count} rows, expected {rows}")
        started = time.perf_counter()
        for body in VIEWS.values():
            r = httpx.post(f"{server.url}/api/views", headers=server.headers, json=body, timeout=600)
            if r.status_code != 201:
                raise RuntimeError(f"create view {body['name']}: {r.status_code} {r.text[:500]}")
        views_seconds = time.perf_counter() - started
    return {"load_seconds": round(load_seconds, 2), "load_rows_per_s": round(rows / load_seconds), "create_views_seconds": round(views_seconds, 2)}


def pushbase_reads(db: str, work: Path, engine: str, expected: dict[str, int]) -> dict[str, Any]:
    """Each format in a server of its own (both views, all rows first), so each reading's peak RSS is
    its own: memory a server keeps after serving 10,000-row JSON pages (about 17 MB on PostgreSQL)
    would otherwise count against the NDJSON and CSV streams read after them."""
    out: dict[str, Any] = {view: {} for view in VIEWS}
    for fmt in ("json", "ndjson", "csv"):
        with B.pushbase_server(db, work, f"{engine}-read-{fmt}") as server:
            out.setdefault("rss_idle_mb", B.mb(server.rss.current()))
            with httpx.Client(timeout=600.0, headers={**server.headers, **NO_GZIP}) as client:
                for view in VIEWS:
                    base = f"{server.url}/api/views/{view}/rows"

                    def next_of(doc: OurPage, _url: str, base: str = base) -> str | None:
                        return f"{base}?format=json&limit={PAGE}&after={doc.next}" if doc.next else None

                    if fmt == "json":
                        read = lambda: read_pages(client, f"{base}?format=json&limit={PAGE}", OUR_PAGE.decode, next_of, lambda d: d.rows)  # noqa: E731
                    else:
                        read = lambda: read_stream(client, f"{base}?format={fmt}", 1 if fmt == "csv" else 0)  # noqa: E731
                    r = timed(read, server.rss, REPEAT[view])
                    if r["rows"] != expected[view]:
                        r["error"] = f"read {r['rows']} rows, expected {expected[view]}"
                    out[view][fmt] = r
                    print(f"  {engine} {view} {fmt}: {r['rows_per_s']:,} rows/s (peak RSS {r['rss_peak_mb']} MB)", flush=True)
    return out


def view_sql(db: str, view: str) -> dict[str, Any]:
    r = subprocess.run([str(B.PRODUCT_BIN / "python"), str(Path(__file__).with_name("view_sql.py")), db, view, str(PAGE)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-1500:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def sqlite_plan(db_path: str) -> dict[str, Any]:
    """EXPLAIN QUERY PLAN (sqlite3 on the db file) of the filtered view's page query."""
    conn = sqlite3.connect(db_path)
    try:
        ds_id, columns = conn.execute("select id, columns from pb_datasets where name = 'bench'").fetchone()
        col = next(c["col"] for c in json.loads(columns) if c["name"] == "city")
        table = f"ds_{ds_id}"
        indexes = [dict(zip(("seq", "name", "unique", "origin", "partial"), r)) for r in conn.execute(f'PRAGMA index_list("{table}")')]
        for ix in indexes:
            ix["columns"] = [r[2] for r in conn.execute(f'PRAGMA index_info("{ix["name"]}")')]
        try:
            info = view_sql(db_path, "one_city")
            sql, source = info["sql"], "built by pushbase.views (the server's own query)"
        except Exception as exc:  # noqa: BLE001
            sql = f'SELECT * FROM "{table}" WHERE {col} = \'{B.FILTER_CITY}\' ORDER BY _id LIMIT {PAGE + 1}'
            source = f"hand-written equivalent (pushbase.views could not build it: {str(exc)[-200:]})"
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]
        started = time.perf_counter()
        matched = len(conn.execute(sql).fetchall())
        ms = (time.perf_counter() - started) * 1000
    finally:
        conn.close()
    uses_index = any("USING INDEX" in p and col in p for p in plan)
    return {"table": table, "filter_column": f"city -> {col}", "indexes": indexes, "sql": sql, "sql_source": source,
            "plan": plan, "uses_index": uses_index, "rows_returned": matched, "query_ms": round(ms, 1)}


def pg_plan(url: str) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of the filtered view's page query on PostgreSQL."""
    import psycopg

    with psycopg.connect(url) as conn:
        ds_id, columns = conn.execute("select id, columns from pb_datasets where name = 'bench'").fetchone()
        columns = columns if isinstance(columns, list) else json.loads(columns)
        col = next(c["col"] for c in columns if c["name"] == "city")
        table = f"ds_{ds_id}"
        try:
            sql, source = view_sql(url, "one_city")["sql"], "built by pushbase.views (the server's own query)"
        except Exception as exc:  # noqa: BLE001
            sql = f'SELECT * FROM "{table}" WHERE {col} = \'{B.FILTER_CITY}\' ORDER BY _id LIMIT {PAGE + 1}'
            source = f"hand-written equivalent (pushbase.views could not build it: {str(exc)[-200:]})"
        # Planned as the server's own sessions plan it (pushbase.storage sets random_page_cost on
        # every connection it opens; PUSHBASE_PG_RANDOM_PAGE_COST, 1.1 unless set).
        cost = os.environ.get("PUSHBASE_PG_RANDOM_PAGE_COST", "1.1").strip()
        if cost:
            conn.execute(f"SET random_page_cost = {float(cost)!r}")
        plan = [r[0] for r in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)]
    return {"table": table, "filter_column": f"city -> {col}", "sql": sql, "sql_source": source, "plan": plan,
            "uses_index": any(f"{table}_{col}" in p for p in plan)}


# ------------------------------------------------------------------------------------------------
# Datasette


def datasette_reads(work: Path, db_path: Path, expected: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with B.datasette_server(db_path, work, DATASETTE_SETTINGS) as ds:
        out["rss_idle_mb"] = B.mb(ds.rss.current())
        with httpx.Client(timeout=600.0, headers=NO_GZIP) as client:
            for view, filt in (("all_rows", ""), ("one_city", f"&city={B.FILTER_CITY}")):
                res: dict[str, Any] = {}
                objects_url = f"{ds.url}/peer/rows.json?_size=max&_shape=objects{filt}"
                n = REPEAT[view]
                res["json_objects_next_url"] = timed(
                    lambda: read_pages(client, objects_url, DATASETTE_OBJECTS_PAGE.decode, lambda d, _u: d.next_url, lambda d: d.rows), ds.rss, n)
                array_url = f"{ds.url}/peer/rows.json?_size=max&_shape=array{filt}"

                def array_next(doc: list[msgspec.Raw], _url: str, base: str = array_url) -> str | None:
                    return f"{base}&_next={orjson.loads(bytes(doc[-1]))['id']}" if len(doc) == PAGE else None

                res["json_array_client_next"] = timed(lambda: read_pages(client, array_url, DATASETTE_ARRAY_PAGE.decode, array_next, lambda d: d),
                                                      ds.rss, n)
                res["csv"] = timed(lambda: read_stream(client, f"{ds.url}/peer/rows.csv?_stream=on&_size=max{filt}", 1), ds.rss, n)
                for fmt, r in res.items():
                    if r["rows"] != expected[view]:
                        r["error"] = f"read {r['rows']} rows, expected {expected[view]}"
                out[view] = res
                print(f"  datasette {view}: " + ", ".join(f"{f} {r['rows_per_s']:,} rows/s" for f, r in res.items()), flush=True)
    return out


def build_datasette_db(db_path: Path, chunks: list[list[dict[str, Any]]]) -> float:
    """The table is made by sqlite-utils (``create``, pk id, the types it would pick) and filled in one
    transaction with sqlite3's executemany (sqlite-utils' own insert_all commits every batch, which on
    this disk takes minutes for 1,000,000 rows; the load is not what this benchmark times)."""
    import sqlite_utils

    started = time.perf_counter()
    db = sqlite_utils.Database(db_path)
    types = {"integer": int, "number": float, "boolean": int, "string": str, "date": str, "datetime": str}
    db["rows"].create({n: types[t] for n, t in B.COLUMNS}, pk="id")
    names = [n for n, _ in B.COLUMNS]
    sql = f"INSERT INTO rows ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
    with db.conn:
        for chunk in chunks:
            db.conn.executemany(sql, [tuple(r[n] for n in names) for r in chunk])
    db["rows"].create_index(["city"])
    db.close()
    return time.perf_counter() - started


# ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-pg", action="store_true", help="leave PostgreSQL out")
    args = parser.parse_args()
    n = args.rows
    started_all = time.perf_counter()
    load_avg = os.getloadavg()[0]
    results: dict[str, Any] = {}
    notes: list[str] = []

    with B.workdir("pull") as work:
        print(f"bench/pull: generating {n:,} rows; Datasette's copy via sqlite-utils", flush=True)
        bodies: list[tuple[int, bytes]] = []
        chunks: list[list[dict[str, Any]]] = []
        chunk: list[dict[str, Any]] = []
        for row in B.iter_rows(n):
            chunk.append(row)
            if len(chunk) == LOAD_BATCH_ROWS:
                bodies.append((len(chunk), orjson.dumps(chunk)))
                chunks.append(chunk)
                chunk = []
        if chunk:
            bodies.append((len(chunk), orjson.dumps(chunk)))
            chunks.append(chunk)
        peer_db = work / "peer.db"
        seconds = build_datasette_db(peer_db, chunks)
        del chunks
        with sqlite3.connect(peer_db) as conn:
            expected = {"all_rows": n, "one_city": conn.execute("select count(*) from rows where city = ?", (B.FILTER_CITY,)).fetchone()[0]}
        print(f"  Datasette db: {seconds:.1f} s; filtered view matches {expected['one_city']:,} rows ({expected['one_city'] / n:.2%})", flush=True)

        engines: list[tuple[str, Any]] = [("sqlite", None)]
        if args.skip_pg:
            notes.append("PostgreSQL skipped (--skip-pg)")
        elif (why := B.pg_available()) is not None:
            notes.append(f"PostgreSQL not reachable at {B.PG_BASE_URL}: {why}")
        else:
            engines.append(("postgresql", None))

        for engine, _ in engines:
            print(f"- pushbase-{engine}: loading {n:,} rows ({len(bodies)} batches of {LOAD_BATCH_ROWS}, ?wait=true, {LOAD_CONCURRENCY} clients)", flush=True)
            try:
                if engine == "sqlite":
                    db = str(work / "pushbase.db")
                    load = pushbase_load(db, work, engine, n, bodies)
                    print(f"  loaded at {load['load_rows_per_s']:,} rows/s; views saved in {load['create_views_seconds']} s", flush=True)
                    reads = pushbase_reads(db, work, engine, expected)
                    plan = sqlite_plan(db)
                else:
                    with B.pg_schema("pull") as db:
                        load = pushbase_load(db, work, engine, n, bodies)
                        print(f"  loaded at {load['load_rows_per_s']:,} rows/s; views saved in {load['create_views_seconds']} s", flush=True)
                        reads = pushbase_reads(db, work, engine, expected)
                        plan = pg_plan(db)
                results[f"pushbase-{engine}"] = {**load, **reads, "filtered_query_plan": plan}
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"  FAILED: {exc}", flush=True)
                results[f"pushbase-{engine}"] = {"error": str(exc)[:3000]}
        del bodies

        print("- datasette 1.0a41", flush=True)
        try:
            results["datasette"] = datasette_reads(work, peer_db, expected)
        except Exception as exc:  # noqa: BLE001
            print(f"  FAILED: {exc}", flush=True)
            results["datasette"] = {"error": str(exc)[:3000]}

    ratios, cpu_ratios = compute_ratios(results)
    targets: dict[str, Any] = {}
    for system in ("pushbase-sqlite", "pushbase-postgresql"):
        ours = results.get(system)
        if not ours or "error" in ours:
            continue
        targets[f"{system}: json and csv >= 3x datasette"] = all(
            (ratios.get(f"{system}/{v}/{f}") or 0) >= 3 for v in VIEWS for f in ("json", "csv")) if ratios else None
        stream_peak = max(ours["all_rows"][f]["rss_peak_mb"] for f in ("ndjson", "csv"))
        serving_peak = max(ours["all_rows"][f].get("rss_peak_main_mb", 0) for f in ("ndjson", "csv"))
        # Judged on every process of the server; the process serving the stream is shown beside it
        # (on PostgreSQL `serve` also runs its worker as a child process, about 85 MB idle).
        targets[f"{system}: ndjson/csv stream of all rows < 200 MB RSS (peak {stream_peak} MB, "
                f"of which the process serving the stream {serving_peak} MB)"] = stream_peak < 200
        plan = ours.get("filtered_query_plan", {})
        targets[f"{system}: filtered view uses the index"] = plan.get("uses_index")

    print("\nratios (Pushbase rows/s ÷ Datasette rows/s; in brackets Datasette's server CPU ÷ ours):")
    for k, v in ratios.items():
        print(f"  {k}: {B.fmt_ratio(v)}  ({B.fmt_ratio(cpu_ratios.get(k))})")
    for system in ("pushbase-sqlite", "pushbase-postgresql"):
        plan = results.get(system, {}).get("filtered_query_plan")
        if plan:
            print(f"\n{system} filtered view query ({plan.get('sql_source', 'hand-written equivalent')}):\n  {plan['sql']}")
            if "indexes" in plan:
                print("  indexes on", plan["table"] + ":", ", ".join(f"{ix['name']}({','.join(ix['columns'])})" for ix in plan["indexes"]))
            print("  plan:\n    " + "\n    ".join(plan["plan"]))
    print("\ntargets:", "; ".join(f"{k}: {'met' if v else 'MISSED' if v is False else 'n/a'}" for k, v in targets.items()))

    data = {
        "bench": "pull",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**B.machine(), "load_average_1m_at_start": round(load_avg, 2)},
        "versions": B.versions(),
        "setup": {"rows": n, "columns": [f"{c}:{t}" for c, t in B.COLUMNS], "page": PAGE, "views": VIEWS,
                  "filtered_rows": expected["one_city"], "load_batch_rows": LOAD_BATCH_ROWS,
                  "load_concurrency": LOAD_CONCURRENCY, "datasette_settings": DATASETTE_SETTINGS},
        "results": results,
        "ratios": ratios,
        "cpu_ratios_datasette_cpu_over_ours": cpu_ratios,
        "targets": targets,
        "notes": notes,
        "total_seconds": round(time.perf_counter() - started_all, 1),
    }
    B.write_results("pull", data, markdown(data))
    print(f"\nwrote {B.RESULTS / 'pull.json'} and {B.RESULTS / 'pull.md'} ({data['total_seconds']} s in all)")
    failed = any("error" in r for r in results.values()) or any(
        "error" in f for r in results.values() if isinstance(r, dict) for v in r.values() if isinstance(v, dict) for f in v.values() if isinstance(f, dict))
    return 1 if failed else 0


def compute_ratios(results: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Our rows/s ÷ Datasette's, per view and format; JSON and NDJSON are held against the faster of
    Datasette's two JSON readings (it has no NDJSON), CSV against its CSV stream. Also Datasette's server
    CPU seconds ÷ ours for the same reading (above 1: we spend less CPU per row), which other work on a
    shared machine disturbs much less than wall time."""
    ratios: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    ds = results.get("datasette", {})
    if not ds or "error" in ds:
        return ratios, cpu
    for system in ("pushbase-sqlite", "pushbase-postgresql"):
        ours = results.get(system)
        if not ours or "error" in ours:
            continue
        for view in VIEWS:
            dj = [ds[view]["json_objects_next_url"], ds[view]["json_array_client_next"]]
            best_json = max(dj, key=lambda r: r["rows_per_s"])
            least_cpu_json = min(r["server_cpu_seconds"] for r in dj)
            for fmt, theirs, theirs_cpu, label in (
                ("json", best_json, least_cpu_json, "json"),
                ("ndjson", best_json, least_cpu_json, "ndjson_vs_datasette_json"),
                ("csv", ds[view]["csv"], ds[view]["csv"]["server_cpu_seconds"], "csv"),
            ):
                ratios[f"{system}/{view}/{label}"] = B.ratio(ours[view][fmt]["rows_per_s"], theirs["rows_per_s"])
                cpu[f"{system}/{view}/{label}"] = B.ratio(theirs_cpu, ours[view][fmt]["server_cpu_seconds"])
    return ratios, cpu


def markdown(data: dict[str, Any]) -> str:
    s = data["setup"]
    v = data["versions"]
    md = [
        "# bench/pull — latest run",
        "",
        f"{data['when']}, {data['machine']['cpus']} CPUs, Pushbase {v['pushbase_commit']}, {v['datasette']}, SQLite {v['sqlite']}.",
        f"{s['rows']:,} rows × {len(s['columns'])} columns; view `all_rows` (every row) and `one_city` (city = {B.FILTER_CITY}: "
        f"{s['filtered_rows']:,} rows); JSON pages of {s['page']:,}.",
        "",
        f"Load average at start {data['machine']['load_average_1m_at_start']} (other work on the machine skews the figures).",
        "",
        "| system | view | format | rows/s | seconds | server CPU s | client CPU s | peak RSS (MB), all server processes | of which the serving process |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for system, res in data["results"].items():
        if "error" in res:
            md.append(f"| {system} | — | failed | — | — | — | — | — | — |")
            continue
        for view in VIEWS:
            for fmt, r in res.get(view, {}).items():
                md.append(f"| {system} | {view} | {fmt} | {r['rows_per_s']:,} | {r['seconds']} | {r.get('server_cpu_seconds', '—')} | "
                          f"{r.get('client_cpu_seconds', '—')} | {r.get('rss_peak_mb', '—')} | {r.get('rss_peak_main_mb', '—')} |")
    cpu = data.get("cpu_ratios_datasette_cpu_over_ours", {})
    md += ["", "| reading | rows/s: ours ÷ Datasette | server CPU: Datasette ÷ ours |", "|---|---:|---:|"]
    md += [f"| {k} | {B.fmt_ratio(x)} | {B.fmt_ratio(cpu.get(k))} |" for k, x in data["ratios"].items()]
    for system in ("pushbase-sqlite", "pushbase-postgresql"):
        res = data["results"].get(system, {})
        if "load_rows_per_s" in res:
            md.append(f"\n{system}: loaded at {res['load_rows_per_s']:,} rows/s (?wait=true, {s['load_concurrency']} clients); views saved in {res['create_views_seconds']} s.")
        plan = res.get("filtered_query_plan")
        if plan:
            md += ["", f"{system} filtered view query plan:", "", "```", plan["sql"], *plan["plan"], "```"]
    md += ["", "Targets: " + "; ".join(f"{k}: {'met' if x else 'MISSED' if x is False else 'n/a'}" for k, x in data["targets"].items())]
    md += [*[f"\nNote: {x}" for x in data["notes"]], ""]
    return "\n".join(md)


if __name__ == "__main__":
    sys.exit(main())
