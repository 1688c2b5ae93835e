"""bench/ingest: load the same rows into Pushbase (SQLite, PostgreSQL), Datasette's insert API and
``sqlite-utils insert``; print rows/s, Pushbase's ratio to each peer and the server's peak RSS.

Pushbase: ``POST /api/datasets/bench/data`` with ~1 MB JSON-array bodies from 4 concurrent clients
(one httpx AsyncClient, 4 tasks), each answered 202 {jobId}; a fifth connection polls
``GET .../data/{jobId}/status`` (every 20 ms, in the order the jobs were accepted) until every job is
``Complete``. Time = first POST sent -> last job seen Complete.

Datasette 1.0a41: ``POST /peer/rows/-/insert`` {"rows": [...]}, the same batches and concurrency, after
``/peer/-/create`` made the table with the same columns and ``"pk": "id"``; ``max_insert_rows`` raised
to the batch size. Its insert answers when the rows are committed. Time = first POST -> last answer.

sqlite-utils: ``sqlite-utils insert peer.db rows rows.ndjson --nl --pk id --batch-size N`` as one CLI
process (its startup included), N = the same rows per batch as the HTTP loads (its default, 100 rows per
commit, is several times slower here because every commit syncs the disk). Time = the process's wall time.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchlib as B  # noqa: E402

CONCURRENCY = 4
BATCH_BYTES = 1_000_000
POLL_SECONDS = 0.02


async def post_all(url: str, headers: dict[str, str], bodies: list[tuple[int, bytes]], on_answer: Any = None) -> list[Any]:
    """POST every body with CONCURRENCY clients; returns the answers' JSON in body order."""
    answers: list[Any] = [None] * len(bodies)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=600.0, headers={**headers, "content-type": "application/json"}) as client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                response = await client.post(url, content=bodies[i][1])
                if response.status_code >= 300:
                    raise RuntimeError(f"POST {url} -> {response.status_code}: {response.text[:500]}")
                answers[i] = response.json()
                if on_answer:
                    on_answer(i, answers[i])

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return answers


async def pushbase_load(server: B.Pushbase, dataset: str, bodies: list[tuple[int, bytes]]) -> dict[str, Any]:
    url = f"{server.url}/api/datasets/{dataset}/data"
    accepted: list[str | None] = [None] * len(bodies)
    arrived = asyncio.Event()

    def on_answer(i: int, answer: dict[str, Any]) -> None:
        accepted[i] = answer["jobId"]
        arrived.set()

    async def poll() -> list[dict[str, Any]]:
        docs = []
        async with httpx.AsyncClient(timeout=60.0, headers=server.headers) as client:
            for i in range(len(bodies)):
                while accepted[i] is None:
                    arrived.clear()
                    await arrived.wait()
                job = accepted[i]
                while True:
                    doc = (await client.get(f"{server.url}/api/datasets/{dataset}/data/{job}/status")).json()
                    if doc["status"] in ("Complete", "ErrorExit", "TerminatedExit"):
                        break
                    await asyncio.sleep(POLL_SECONDS)
                if doc["status"] != "Complete":
                    raise RuntimeError(f"job {job} ended {doc['status']}: {doc.get('reason')} {doc.get('errors')[:3]}")
                docs.append(doc)
        return docs

    started = time.perf_counter()
    first_answer: list[float] = []

    def note(i: int, answer: dict[str, Any]) -> None:
        if not first_answer:
            first_answer.append(time.perf_counter())
        on_answer(i, answer)

    poller = asyncio.create_task(poll())
    await post_all(url, server.headers, bodies, note)
    accepted_all = time.perf_counter()
    docs = await poller
    finished = time.perf_counter()
    return {
        "seconds": finished - started,
        "seconds_to_accept_all": accepted_all - started,
        "rows_inserted": sum(d["rows_inserted"] for d in docs),
        "jobs": len(docs),
    }


def run_pushbase(engine: str, db: str, work: Path, rows: int, bodies: list[tuple[int, bytes]]) -> dict[str, Any]:
    with B.pushbase_server(db, work, engine) as server:
        columns = [{"name": n, "type": t} for n, t in B.COLUMNS]
        r = httpx.post(f"{server.url}/api/datasets", headers=server.headers,
                       json={"name": "bench", "columns": columns, "unique_id": ["id"]}, timeout=60)
        r.raise_for_status()
        idle = server.rss.reset()
        cpu = server.rss.cpu_seconds()
        result = asyncio.run(pushbase_load(server, "bench", bodies))
        peak = server.rss.peak
        cpu = server.rss.cpu_seconds() - cpu
        count = httpx.get(f"{server.url}/api/datasets/bench", headers=server.headers, timeout=60).json()["row_count"]
    if count != rows or result["rows_inserted"] != rows:
        raise RuntimeError(f"{engine}: expected {rows} rows, the dataset has {count} ({result['rows_inserted']} inserted)")
    return {
        "system": f"pushbase-{engine}",
        "rows": rows,
        "seconds": round(result["seconds"], 3),
        "rows_per_s": round(rows / result["seconds"]),
        "seconds_to_accept_all": round(result["seconds_to_accept_all"], 3),
        "jobs": result["jobs"],
        "server_cpu_seconds": round(cpu, 2),
        "rss_idle_mb": B.mb(idle),
        "rss_peak_mb": B.mb(peak),
    }


def run_datasette(work: Path, rows: int, batch_rows: int, bodies: list[tuple[int, bytes]]) -> dict[str, Any]:
    db_path = work / "peer.db"
    import sqlite3

    sqlite3.connect(db_path).close()
    settings = {"max_insert_rows": batch_rows}
    with B.datasette_server(db_path, work, settings) as ds:
        auth = {"authorization": f"Bearer {ds.token}"}
        columns = [{"name": n, "type": B.DATASETTE_TYPES[t]} for n, t in B.COLUMNS]
        r = httpx.post(f"{ds.url}/peer/-/create", headers=auth, json={"table": "rows", "columns": columns, "pk": "id"}, timeout=60)
        if r.status_code >= 300:
            raise RuntimeError(f"datasette create: {r.status_code} {r.text[:500]}")
        idle = ds.rss.reset()
        cpu = ds.rss.cpu_seconds()
        started = time.perf_counter()
        asyncio.run(post_all(f"{ds.url}/peer/rows/-/insert", auth, bodies))
        seconds = time.perf_counter() - started
        cpu = ds.rss.cpu_seconds() - cpu
        peak = ds.rss.peak
    import sqlite3

    count = sqlite3.connect(db_path).execute("select count(*) from rows").fetchone()[0]
    if count != rows:
        raise RuntimeError(f"datasette: expected {rows} rows, found {count}")
    return {"system": "datasette-insert-api", "rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds),
            "server_cpu_seconds": round(cpu, 2), "rss_idle_mb": B.mb(idle), "rss_peak_mb": B.mb(peak)}


def run_sqlite_utils(work: Path, rows: int, ndjson: Path, batch_rows: int) -> dict[str, Any]:
    db_path = work / "sqlite-utils.db"
    cmd = [str(B.PEERS_BIN / "sqlite-utils"), "insert", str(db_path), "rows", str(ndjson), "--nl", "--pk", "id", "--batch-size", str(batch_rows)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    import sqlite3

    count = sqlite3.connect(db_path).execute("select count(*) from rows").fetchone()[0]
    if count != rows:
        raise RuntimeError(f"sqlite-utils: expected {rows} rows, found {count}")
    return {"system": "sqlite-utils-insert", "rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds),
            "command": f"sqlite-utils insert DB rows rows.ndjson --nl --pk id --batch-size {batch_rows}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--skip-pg", action="store_true", help="leave PostgreSQL out")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each system's best round is reported")
    args = parser.parse_args()
    rows_n = args.rows

    load = os.getloadavg()[0]
    print(f"bench/ingest: generating {rows_n:,} rows of {len(B.COLUMNS)} columns (load average {load:.2f})", flush=True)
    rows = B.make_rows(rows_n)
    bodies = B.batch_bodies(rows, BATCH_BYTES)
    batch_rows = bodies[0][0]
    ds_bodies = B.batch_bodies(rows, BATCH_BYTES, wrap="rows")
    assert [n for n, _ in ds_bodies] == [n for n, _ in bodies]
    mean_bytes = sum(len(b) for _, b in bodies) / len(bodies)
    print(f"  {len(bodies)} batches of {batch_rows} rows (~{mean_bytes / 1e6:.2f} MB), {CONCURRENCY} concurrent clients", flush=True)

    runs: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    systems = ["pushbase-sqlite", "pushbase-postgresql", "datasette-insert-api", "sqlite-utils-insert"]
    if args.skip_pg:
        systems.remove("pushbase-postgresql")
        notes.append("PostgreSQL skipped (--skip-pg)")
    elif (why := B.pg_available()) is not None:
        systems.remove("pushbase-postgresql")
        notes.append(f"PostgreSQL not reachable at {B.PG_BASE_URL}: {why}")
        print(f"- pushbase-postgresql skipped: {why}")
    with B.workdir("ingest") as work:
        ndjson = work / "rows.ndjson"
        B.write_ndjson(rows, ndjson)
        del rows

        def fresh(*names: str) -> None:
            for name in names:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    (work / f"{name}{suffix}").unlink(missing_ok=True)

        def pushbase_sqlite() -> dict[str, Any]:
            fresh("pushbase.db")
            return run_pushbase("sqlite", str(work / "pushbase.db"), work, rows_n, bodies)

        def pushbase_pg() -> dict[str, Any]:
            with B.pg_schema("ingest") as url:
                return run_pushbase("postgresql", url, work, rows_n, bodies)

        def datasette() -> dict[str, Any]:
            fresh("peer.db")
            return run_datasette(work, rows_n, batch_rows, ds_bodies)

        def sqlite_utils() -> dict[str, Any]:
            fresh("sqlite-utils.db")
            return run_sqlite_utils(work, rows_n, ndjson, batch_rows)

        runners = {"pushbase-sqlite": pushbase_sqlite, "pushbase-postgresql": pushbase_pg,
                   "datasette-insert-api": datasette, "sqlite-utils-insert": sqlite_utils}
        # Round-robin, so a burst of other work on the machine hits every system alike; best of N each.
        for rep in range(1, args.repeat + 1):
            print(f"round {rep}/{args.repeat} (load average {os.getloadavg()[0]:.2f})", flush=True)
            for label in systems:
                print(f"- {label} ...", end=" ", flush=True)
                try:
                    res = runners[label]()
                except Exception as exc:  # noqa: BLE001 - report it and go on with the others
                    print(f"FAILED: {exc}", flush=True)
                    runs.setdefault(label, []).append({"system": label, "error": str(exc)[:2000]})
                    continue
                extra = f", server CPU {res['server_cpu_seconds']} s, peak RSS {res['rss_peak_mb']} MB" if "rss_peak_mb" in res else ""
                print(f"{res['rows_per_s']:,} rows/s ({res['seconds']} s{extra})", flush=True)
                runs.setdefault(label, []).append(res)

    results: list[dict[str, Any]] = []
    for label in systems:
        good = [r for r in runs.get(label, []) if "error" not in r]
        failed = [r for r in runs.get(label, []) if "error" in r]
        if failed:
            results.append({**failed[0], "runs": runs[label]})
            continue
        best = dict(max(good, key=lambda r: r["rows_per_s"]))
        best["runs_rows_per_s"] = [r["rows_per_s"] for r in good]
        best["median_rows_per_s"] = round(statistics.median(best["runs_rows_per_s"]))
        if "rss_peak_mb" in best:
            best["rss_peak_mb_max_of_runs"] = max(r["rss_peak_mb"] for r in good)
            best["server_cpu_seconds_min_of_runs"] = min(r["server_cpu_seconds"] for r in good)
        results.append(best)

    by = {r["system"]: r for r in results}
    ours = [s for s in ("pushbase-sqlite", "pushbase-postgresql") if s in by and "rows_per_s" in by[s]]
    peers = [s for s in ("datasette-insert-api", "sqlite-utils-insert") if s in by and "rows_per_s" in by[s]]
    ratios = {f"{o}/{p}": B.ratio(by[o]["rows_per_s"], by[p]["rows_per_s"]) for o in ours for p in peers}
    cpu_ratios = {}
    if "pushbase-sqlite" in ours and "datasette-insert-api" in peers:
        # Server CPU per row, which other work on the machine disturbs less than wall time.
        cpu_ratios["datasette-insert-api server CPU ÷ pushbase-sqlite server CPU"] = B.ratio(
            by["datasette-insert-api"]["server_cpu_seconds_min_of_runs"], by["pushbase-sqlite"]["server_cpu_seconds_min_of_runs"])
    sqlite_rps = by.get("pushbase-sqlite", {}).get("rows_per_s")
    rss_peak = max((by[o]["rss_peak_mb_max_of_runs"] for o in ours), default=None)
    targets = {
        "sqlite_rows_per_s>=100000": None if sqlite_rps is None else sqlite_rps >= 100_000,
        "sqlite_vs_datasette>=3x": None if ratios.get("pushbase-sqlite/datasette-insert-api") is None else ratios["pushbase-sqlite/datasette-insert-api"] >= 3,
        "rss_peak<300MB": None if rss_peak is None else rss_peak < 300,
    }

    print(f"\nbest of {args.repeat} (rows/s; all runs):")
    for r in results:
        if "error" not in r:
            print(f"  {r['system']}: {r['rows_per_s']:,} ({', '.join(f'{x:,}' for x in r['runs_rows_per_s'])})")
    print("\nratios (Pushbase rows/s ÷ peer rows/s):")
    for k, v in ratios.items():
        print(f"  {k}: {B.fmt_ratio(v)}")
    for k, v in cpu_ratios.items():
        print(f"  {k}: {B.fmt_ratio(v)}")
    print("targets:", ", ".join(f"{k}: {'met' if v else 'MISSED' if v is False else 'n/a'}" for k, v in targets.items()))

    data = {
        "bench": "ingest",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**B.machine(), "load_average_1m_at_start": round(load, 2)},
        "versions": B.versions(),
        "setup": {"rows": rows_n, "columns": [f"{n}:{t}" for n, t in B.COLUMNS], "batch_rows": batch_rows,
                  "batch_bytes_mean": round(mean_bytes), "batches": len(bodies), "concurrency": CONCURRENCY,
                  "status_poll_seconds": POLL_SECONDS, "datasette_settings": {"max_insert_rows": batch_rows}},
        "results": results,
        "repeat": args.repeat,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "targets": targets,
        "notes": notes,
    }
    md = [
        "# bench/ingest — latest run",
        "",
        f"{data['when']}, {data['machine']['cpus']} CPUs, Pushbase {data['versions']['pushbase_commit']}, "
        f"{data['versions']['datasette']}, {data['versions']['sqlite_utils']}, SQLite {data['versions']['sqlite']}.",
        f"Load average at start {load:.2f} (other work on the machine skews the figures).",
        f"{rows_n:,} rows × {len(B.COLUMNS)} columns, {len(bodies)} batches of {batch_rows} rows (~{mean_bytes / 1e6:.2f} MB), {CONCURRENCY} concurrent clients.",
        "",
        f"Best of {args.repeat} round-robin rounds (all rounds' rows/s in the last column).",
        "",
        "| system | seconds | rows/s | server CPU s | peak RSS (MB, max of rounds) | rows/s of each round |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if "error" in r:
            md.append(f"| {r['system']} | failed | — | — | — | — |")
        else:
            md.append(f"| {r['system']} | {r['seconds']} | {r['rows_per_s']:,} | {r.get('server_cpu_seconds', '—')} | "
                      f"{r.get('rss_peak_mb_max_of_runs', '—')} | {', '.join(f'{x:,}' for x in r['runs_rows_per_s'])} |")
    md += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {B.fmt_ratio(v)} |" for k, v in ratios.items()]
    md += [f"| {k} | {B.fmt_ratio(v)} |" for k, v in cpu_ratios.items()]
    md += ["", "Targets: " + ", ".join(f"{k} {'met' if v else 'MISSED' if v is False else 'n/a'}" for k, v in targets.items())]
    md += [f"", *[f"Note: {n}" for n in notes], ""]
    B.write_results("ingest", data, "\n".join(md))
    print(f"\nwrote {B.RESULTS / 'ingest.json'} and {B.RESULTS / 'ingest.md'}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
