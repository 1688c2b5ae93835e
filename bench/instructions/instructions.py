"""bench/instructions: CPU instructions per row, Pushbase (SQLite) next to Datasette 1.0a41, counted by
valgrind's callgrind, so that the comparison does not move with the machine's speed.

Wall-clock figures on this shared 2-core machine varied about 2x over a day (Datasette's own insert API
from 36k to 66k rows/s), more than most changes move them. Instructions executed by the server process
(all its threads) for the same work are the same on a busy or a quiet machine, within about 1%.

Each server runs under ``valgrind --tool=callgrind``; after one warm-up request the counters are zeroed
(``callgrind_control -z``), the measured requests run, and the counters are dumped (``-d``):
  - pull: 3 JSON pages of 10,000 bench rows (Pushbase ``/api/views/all_rows/rows?limit=10000`` following
    ``next``; Datasette ``/peer/rows.json?_size=max&_shape=objects`` following ``next_url``, with
    ``max_returned_rows=10000``);
  - ingest: 4 payloads of 5,000 rows (Pushbase ``POST /api/datasets/rows/data?wait=true``, answered when
    loaded; Datasette ``POST /peer/rows/-/insert`` {"rows": [...]}, with ``max_insert_rows=5000``).
Ratio = Datasette's instructions per row ÷ Pushbase's: how many times less work Pushbase does per row.
It is not a throughput ratio (that also depends on how the work spreads over the two cores).

Results: bench/results/instructions.json and instructions.md.
"""
from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchlib as B  # noqa: E402

PAGE = 10_000
PAGES = 3
PAYLOAD = 5_000
PAYLOADS = 4


def counted(command: list[str], out: Path, health: str, port: int, measure: Callable[[str], int]) -> tuple[int, int]:
    """Run ``command`` under callgrind, ``measure(base_url)`` (which warms up, calls ``zero``, works and
    returns its row count), and return (instructions between zero and the dump, rows)."""
    log = open(out.with_suffix(".log"), "wb")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command], stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        B.wait_http(base + health, proc, timeout=600, log=out.with_suffix(".log"))
        measure.zero = lambda: subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)  # type: ignore[attr-defined]
        rows = measure(base)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        dump = Path(f"{out}.1")
        for _ in range(600):
            if dump.exists() and "totals:" in dump.read_text(errors="replace"):
                break
            time.sleep(0.1)
        totals = [line for line in dump.read_text(errors="replace").splitlines() if line.startswith("totals:")]
        return int(totals[0].split()[1]), rows
    finally:
        B.stop_process(proc)
        log.close()


def pushbase_key(db: Path) -> str:
    out = subprocess.run([str(B.PRODUCT_BIN / "pushbase"), "keys", "create", "--name", "bench", "--scope", "admin", "--db", str(db)],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def pushbase_dataset(client: httpx.Client) -> None:
    columns = [{"name": n, "type": t} for n, t in B.COLUMNS]
    r = client.post("/api/datasets", json={"name": "rows", "columns": columns, "unique_id": ["id"]})
    assert r.status_code == 201, r.text


def pushbase_load(client: httpx.Client, rows: list[dict[str, Any]]) -> None:
    r = client.post("/api/datasets/rows/data?wait=true", content=orjson.dumps(rows), headers={"content-type": "application/json"})
    assert r.status_code in (200, 202) and r.json()["status"] == "Complete", r.text[:500]


def pushbase_pull(work: Path, rows: list[dict[str, Any]]) -> tuple[int, int]:
    db = work / "pull.db"
    with B.pushbase_server(str(db), work, "fill") as server:
        client = httpx.Client(base_url=server.url, headers=server.headers, timeout=600)
        pushbase_dataset(client)
        for start in range(0, len(rows), PAGE):
            pushbase_load(client, rows[start:start + PAGE])
        r = client.post("/api/views", json={"name": "all_rows", "dataset": "rows", "columns": [n for n, _ in B.COLUMNS]})
        assert r.status_code == 201, r.text
    key, port = pushbase_key(db), B.free_port()

    def measure(base: str) -> int:
        client = httpx.Client(base_url=base, headers={"x-api-key": key}, timeout=600)
        page = client.get("/api/views/all_rows/rows", params={"limit": PAGE}).json()
        measure.zero()  # type: ignore[attr-defined]
        count = 0
        for _ in range(PAGES):
            page = client.get("/api/views/all_rows/rows", params={"limit": PAGE, "after": page["next"]}).json()
            count += len(page["rows"])
        return count

    return counted([str(B.PRODUCT_BIN / "pushbase"), "serve", "--db", str(db), "--port", str(port), "--no-worker"],
                   work / "cg-pushbase-pull", "/healthz", port, measure)


def datasette_command(db: Path, port: int, settings: dict[str, Any]) -> list[str]:
    command = [str(B.PEERS_BIN / "datasette"), "serve", str(db), "--port", str(port), "--root", "--secret", B.DATASETTE_SECRET]
    for name, value in settings.items():
        command += ["--setting", name, str(value)]
    return command


def datasette_pull(work: Path, rows: list[dict[str, Any]]) -> tuple[int, int]:
    import sqlite_utils

    db_path = work / "peer.db"
    db = sqlite_utils.Database(db_path)
    types = {"integer": int, "number": float, "boolean": int, "string": str, "date": str, "datetime": str}
    db["rows"].create({n: types[t] for n, t in B.COLUMNS}, pk="id")
    names = [n for n, _ in B.COLUMNS]
    with db.conn:
        db.conn.executemany(f"INSERT INTO rows ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
                            [tuple(r[n] for n in names) for r in rows])
    db.close()
    port = B.free_port()

    def measure(base: str) -> int:
        client = httpx.Client(timeout=600)
        page = client.get(f"{base}/peer/rows.json", params={"_size": "max", "_shape": "objects"}).json()
        measure.zero()  # type: ignore[attr-defined]
        count = 0
        for _ in range(PAGES):
            page = client.get(page["next_url"]).json()
            count += len(page["rows"])
        return count

    settings = {"max_returned_rows": PAGE, "sql_time_limit_ms": 60000}
    return counted(datasette_command(db_path, port, settings), work / "cg-datasette-pull", "/-/versions.json", port, measure)


def pushbase_ingest(work: Path, rows: list[dict[str, Any]]) -> tuple[int, int]:
    db = work / "ingest.db"
    key, port = pushbase_key(db), B.free_port()

    def measure(base: str) -> int:
        client = httpx.Client(base_url=base, headers={"x-api-key": key}, timeout=600)
        pushbase_dataset(client)
        pushbase_load(client, rows[:PAYLOAD])
        measure.zero()  # type: ignore[attr-defined]
        for i in range(1, PAYLOADS + 1):
            pushbase_load(client, rows[i * PAYLOAD:(i + 1) * PAYLOAD])
        return PAYLOADS * PAYLOAD

    return counted([str(B.PRODUCT_BIN / "pushbase"), "serve", "--db", str(db), "--port", str(port)],
                   work / "cg-pushbase-ingest", "/healthz", port, measure)


def datasette_ingest(work: Path, rows: list[dict[str, Any]]) -> tuple[int, int]:
    (work / "ingest-peer").mkdir()
    db_path = work / "ingest-peer" / "peer.db"  # Datasette names the database after the file: /peer/
    sqlite3.connect(db_path).close()
    token = subprocess.run([str(B.PEERS_BIN / "datasette"), "create-token", "root", "--secret", B.DATASETTE_SECRET],
                           check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    port = B.free_port()

    def measure(base: str) -> int:
        client = httpx.Client(headers={"authorization": f"Bearer {token}"}, timeout=600)
        columns = [{"name": n, "type": B.DATASETTE_TYPES[t]} for n, t in B.COLUMNS]
        r = client.post(f"{base}/peer/-/create", json={"table": "rows", "columns": columns, "pk": "id"})
        assert r.status_code < 300, r.text

        def insert(chunk: list[dict[str, Any]]) -> None:
            r = client.post(f"{base}/peer/rows/-/insert", content=orjson.dumps({"rows": chunk}), headers={"content-type": "application/json"})
            assert r.status_code < 300, r.text[:500]

        insert(rows[:PAYLOAD])
        measure.zero()  # type: ignore[attr-defined]
        for i in range(1, PAYLOADS + 1):
            insert(rows[i * PAYLOAD:(i + 1) * PAYLOAD])
        return PAYLOADS * PAYLOAD

    return counted(datasette_command(db_path, port, {"max_insert_rows": PAYLOAD}), work / "cg-datasette-ingest", "/-/versions.json", port, measure)


def main() -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench/instructions needs valgrind (bench/instructions/run installs the Debian package)")
    rows = B.make_rows((PAGES + 1) * PAGE)
    results: dict[str, Any] = {}
    with B.workdir("instructions") as work:
        for name, fn, data in (("pull", pushbase_pull, rows), ("pull_peer", datasette_pull, rows),
                               ("ingest", pushbase_ingest, rows[:(PAYLOADS + 1) * PAYLOAD]),
                               ("ingest_peer", datasette_ingest, rows[:(PAYLOADS + 1) * PAYLOAD])):
            print(f"bench/instructions: {name} under callgrind", flush=True)
            instructions, count = fn(work, data)
            results[name] = {"instructions": instructions, "rows": count, "per_row": round(instructions / count)}
    pull_ratio = results["pull_peer"]["per_row"] / results["pull"]["per_row"]
    ingest_ratio = results["ingest_peer"]["per_row"] / results["ingest"]["per_row"]
    lines = [
        "# bench/instructions — CPU instructions per row (callgrind), Pushbase on SQLite vs Datasette 1.0a41",
        "",
        f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}, versions {B.versions()}.",
        "",
        "| work | Pushbase instructions/row | Datasette instructions/row | Datasette ÷ Pushbase |",
        "|---|---:|---:|---:|",
        f"| pull: {PAGES} JSON pages of {PAGE:,} rows | {results['pull']['per_row']:,} | {results['pull_peer']['per_row']:,} | {pull_ratio:.2f}x |",
        f"| ingest: {PAYLOADS} payloads of {PAYLOAD:,} rows | {results['ingest']['per_row']:,} | {results['ingest_peer']['per_row']:,} | {ingest_ratio:.2f}x |",
        "",
        "All threads of the server process, between a warm-up request and the end of the measured ones.",
        "Not a throughput ratio: it says how much less work per row, not how it spreads over two cores.",
    ]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    B.write_results("instructions", {"results": results, "pull_ratio": round(pull_ratio, 2), "ingest_ratio": round(ingest_ratio, 2)}, markdown)


if __name__ == "__main__":
    main()
