"""bench/push: how fast pushes deliver, on SQLite and PostgreSQL, next to a bare aiohttp loop.

Each engine gets a fresh ``pushbase serve`` (API and worker in one process) and a local aiohttp receiver
(``receiver.py``, a separate process) that answers 200 at once and records every row's arrival.

(a) Throughput, 20 pushes with ``min_interval`` 0 (views ``last pushed is_empty``), one dataset each:
  - *arriving*: 100,000 rows arrive in small loads (100 rows, round robin over the 20 datasets, 4
    concurrent clients, each load ``?wait=true`` so it is answered once Complete). Time = first load
    sent -> the receiver has every row. The bare loop faces the very same arrival in the same server:
    the same loads go to 20 other datasets that have no pushes, and as each load is Complete the
    client itself POSTs its rows to the receiver (aiohttp). Both sides use one loader
    (``receiver.py arrive``), so the only difference is who sends the rows on: Pushbase's push engine
    (which stores each batch, sends it, stamps its rows) or the bare loop. Rows cannot go out faster
    than they arrive, so this ratio says how close the pushes come to "as soon as data arrives".
  - *backlog*: the same rows are loaded with the pushes disabled, then all 20 are enabled at once.
    Time = enable -> the receiver has every row. Its bare loop (``receiver.py replay``: aiohttp, one
    task per push path posting that path's bodies in order, 20 at once) posts exactly the bodies the
    pushes sent, already in memory: no view to read, nothing to store or stamp.
  - *arriving, worker inside the API process* (PostgreSQL only): the arriving scenario again with
    ``PUSHBASE_WORKER_PROCESS=0``: on PostgreSQL ``pushbase serve`` runs its worker as a child process
    (docs/configuration.md); this shows what that gives. Its bare loop runs in the same set-up.
    Server CPU and RSS count every process of the server.
  Both scenarios also record the replay of their bodies (``replay_rows_per_s``), the raw capacity of
  the receiver and the network path.
(b) Latency at low load: one push, one row per load (``?wait=true``), 50 ms apart. Latency = the job's
  ``finished_at`` (``Complete``) -> the row's arrival at the receiver (same host, same clock). A quiet
  push calls at once; ``PUSHBASE_LINGER_SECONDS`` (0.05 s) only holds back data that comes within
  that time of the push's previous call.

Results: bench/results/push.json and push.md.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchlib as B  # noqa: E402

PUSHES = 20
LOAD_ROWS = 100
LOAD_CONCURRENCY = 4
RECEIVER = Path(__file__).resolve().parent / "receiver.py"
COLUMNS = [{"name": "id", "type": "integer"}, {"name": "name", "type": "string"}, {"name": "amount", "type": "number"},
           {"name": "last pushed", "type": "datetime"}]


class Receiver:
    def __init__(self, work: Path) -> None:
        self.port = B.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(work / "receiver.log", "wb")
        self.proc = subprocess.Popen([str(B.PRODUCT_BIN / "python"), str(RECEIVER), "serve", "--port", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        B.wait_http(self.url + "/_stats", self.proc)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def stats(self) -> dict[str, Any]:
        return self.client.get("/_stats").json()

    def reset(self) -> None:
        self.client.post("/_reset")

    def wait_rows(self, n: int, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.stats()
            if stats["distinct"] >= n:
                return stats
            time.sleep(0.02)
        raise RuntimeError(f"the receiver has {self.stats()} rows, expected {n}")

    def replay(self, work: Path) -> dict[str, Any]:
        dump = work / "bodies.ndjson"
        self.client.post("/_dump", params={"file": str(dump)})
        out = subprocess.run([str(B.PRODUCT_BIN / "python"), str(RECEIVER), "replay", "--url", self.url, "--file", str(dump),
                              "--concurrency", str(PUSHES)], check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        B.stop_process(self.proc)
        self.log.close()


def setup(api: httpx.Client, rx: Receiver, prefix: str, n: int, *, enabled: bool, batch_rows: int, pushes: bool = True) -> None:
    for i in range(n):
        name = f"{prefix}{i:02d}"
        steps: list[tuple[str, dict[str, Any]]] = [("/api/datasets", {"name": name, "columns": COLUMNS, "unique_id": ["id"]})]
        if pushes:
            steps += [
                ("/api/views", {"name": f"v_{name}", "dataset": name, "filters": [{"field": "last pushed", "op": "is_empty"}],
                                "sort": [{"field": "id", "direction": "asc"}]}),
                ("/api/pushes", {"name": f"p_{name}", "view": f"v_{name}", "url": f"{rx.url}/{name}", "log_time_field": "last pushed",
                                 "format": "json", "min_interval": 0, "max_batch_rows": batch_rows, "enabled": enabled}),
            ]
        for path, body in steps:
            r = api.post(path, json=body)
            if r.status_code != 201:
                raise RuntimeError(f"POST {path} -> {r.status_code}: {r.text[:300]}")


def arrive(server: B.Pushbase, prefix: str, total: int, forward: str | None = None) -> dict[str, Any]:
    """The loads (``receiver.py arrive``); with ``forward``, the bare loop sends each load on itself."""
    cmd = [str(B.PRODUCT_BIN / "python"), str(RECEIVER), "arrive", "--api", server.url, "--key", server.key, "--prefix", prefix,
           "--total", str(total), "--datasets", str(PUSHES), "--rows-per-load", str(LOAD_ROWS), "--concurrency", str(LOAD_CONCURRENCY)]
    if forward:
        cmd += ["--forward", forward]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def loads(prefix: str, total: int, n: int) -> list[tuple[str, list[dict[str, Any]]]]:
    out = []
    for k, start in enumerate(range(0, total, LOAD_ROWS)):
        rows = [{"id": i, "name": f"row {i}", "amount": i * 0.5} for i in range(start, min(start + LOAD_ROWS, total))]
        out.append((f"{prefix}{k % n:02d}", rows))
    return out


async def post_loads(url: str, headers: dict[str, str], items: list[tuple[str, list[dict[str, Any]]]], wait: bool) -> list[str]:
    queue: asyncio.Queue[tuple[str, list[dict[str, Any]]]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    job_ids: list[str] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        async def worker() -> None:
            while not queue.empty():
                dataset, rows = queue.get_nowait()
                r = await client.post(f"/api/datasets/{dataset}/data" + ("?wait=true" if wait else ""), json=rows)
                if r.status_code not in (200, 202):
                    raise RuntimeError(f"load -> {r.status_code}: {r.text[:300]}")
                job_ids.append(r.json()["jobId"])
        await asyncio.gather(*(worker() for _ in range(LOAD_CONCURRENCY)))
    return job_ids


def throughput(engine: str, db: str, work: Path, total: int, batch_rows: int, in_process: bool = False) -> list[dict[str, Any]]:
    """The arriving and backlog scenarios in one ``pushbase serve``; with ``in_process`` (PostgreSQL),
    only the arriving one, with the worker inside the API process (``PUSHBASE_WORKER_PROCESS=0``)."""
    results = []
    rx = Receiver(work)
    try:
        env = {"PUSHBASE_WORKER_PROCESS": "0"} if in_process else None
        with B.pushbase_server(db, work, f"push-{engine}{'-in-process' if in_process else ''}", env=env) as server:
            api = httpx.Client(base_url=server.url, headers=server.headers, timeout=120)
            # (a0) the bare loop, facing the same arrival: datasets without pushes, the client sends each load on
            setup(api, rx, "c", PUSHES, enabled=False, batch_rows=batch_rows, pushes=False)
            cpu0 = server.rss.cpu_seconds()
            done = arrive(server, "c", total, forward=rx.url)
            stats = rx.wait_rows(total)
            bare = {"seconds": stats["last"] - done["started"], "calls": stats["calls"], "cpu": server.rss.cpu_seconds() - cpu0,
                    "loads_seconds": done["loaded"] - done["started"]}
            rx.reset()
            # (a1) rows arriving while the pushes run
            setup(api, rx, "a", PUSHES, enabled=True, batch_rows=batch_rows)
            cpu0 = server.rss.cpu_seconds()
            done = arrive(server, "a", total)
            stats = rx.wait_rows(total)
            seconds = stats["last"] - done["started"]
            scenario = "arriving, worker inside the API process" if in_process else "arriving"
            res = measure(engine, scenario, rx, work, total, seconds, stats, server.rss.cpu_seconds() - cpu0)
            res.update(loads_seconds=round(done["loaded"] - done["started"], 3), loop_seconds=round(bare["seconds"], 3),
                       loop_rows_per_s=round(total / bare["seconds"]), loop_calls=bare["calls"],
                       loop_loads_seconds=round(bare["loads_seconds"], 3), loop_server_cpu_seconds=round(bare["cpu"], 2),
                       loop="same arrival: each load sent on by the client once Complete")
            res["ratio_rows_per_s"] = B.ratio(res["rows_per_s"], res["loop_rows_per_s"])
            results.append(res)
            if in_process:
                results[-1]["rss_peak_mb"] = B.mb(server.rss.peak)
                return results
            # (a2) a backlog, pushes enabled at once
            rx.reset()
            setup(api, rx, "b", PUSHES, enabled=False, batch_rows=batch_rows)
            asyncio.run(post_loads(server.url, server.headers, loads("b", total, PUSHES), wait=True))
            cpu0 = server.rss.cpu_seconds()
            started = time.perf_counter()
            for i in range(PUSHES):
                api.patch(f"/api/pushes/p_b{i:02d}", json={"enabled": True}).raise_for_status()
            stats = rx.wait_rows(total)
            seconds = time.perf_counter() - started
            res = measure(engine, "backlog", rx, work, total, seconds, stats, server.rss.cpu_seconds() - cpu0)
            res.update(loop_seconds=res["replay_seconds"], loop_rows_per_s=res["replay_rows_per_s"], loop_calls=stats["calls"],
                       loop="replay of the same bodies from memory")
            res["ratio_rows_per_s"] = B.ratio(res["rows_per_s"], res["loop_rows_per_s"])
            results.append(res)
            results[-1]["rss_peak_mb"] = B.mb(server.rss.peak)
    finally:
        rx.close()
    return results


def measure(engine: str, scenario: str, rx: Receiver, work: Path, total: int, seconds: float, stats: dict[str, Any], cpu: float) -> dict[str, Any]:
    replay = rx.replay(work)
    res = {
        "engine": engine, "scenario": scenario, "pushes": PUSHES, "rows": total, "calls": stats["calls"],
        "seconds": round(seconds, 3), "rows_per_s": round(total / seconds), "calls_per_s": round(stats["calls"] / seconds, 1),
        "server_cpu_seconds": round(cpu, 2), "server_cpu_ms_per_call": round(cpu * 1000 / max(1, stats["calls"]), 2),
        "replay_seconds": round(replay["seconds"], 3), "replay_rows_per_s": round(total / replay["seconds"]),
        "replay_calls_per_s": round(replay["calls"] / replay["seconds"], 1),
    }
    res["ratio_vs_replay"] = B.ratio(res["rows_per_s"], res["replay_rows_per_s"])
    return res


def latency(engine: str, db: str, work: Path, samples: int) -> dict[str, Any]:
    rx = Receiver(work)
    try:
        with B.pushbase_server(db, work, f"push-latency-{engine}") as server:
            api = httpx.Client(base_url=server.url, headers=server.headers, timeout=60)
            setup(api, rx, "l", 1, enabled=True, batch_rows=1000)
            finished: dict[int, float] = {}
            for i in range(samples):
                r = api.post("/api/datasets/l00/data?wait=true", json=[{"id": i, "name": "x", "amount": 1.0}])
                doc = r.json()
                if doc.get("status") != "Complete":
                    raise RuntimeError(f"load {i}: {doc}")
                finished[i] = dt.datetime.fromisoformat(doc["finished_at"]).timestamp()
                time.sleep(0.05)
            rx.wait_rows(samples, timeout=60)
            arrivals = rx.client.get("/_arrivals").json()
    finally:
        rx.close()
    lat = sorted((arrivals[f"/l00:{i}"] - finished[i]) * 1000 for i in range(samples))
    q = statistics.quantiles(lat, n=100)
    return {"engine": engine, "samples": samples, "p50_ms": round(statistics.median(lat), 1), "p90_ms": round(q[89], 1),
            "p99_ms": round(q[98], 1), "max_ms": round(lat[-1], 1), "min_ms": round(lat[0], 1),
            "linger_seconds": float(os.environ.get("PUSHBASE_LINGER_SECONDS", "0.05"))}


def markdown(data: dict[str, Any]) -> str:
    lines = ["# bench/push", "", f"{data['when']} · {data['machine']['cpus']} CPUs · commit {data['versions']['pushbase_commit']}", "",
             "## Throughput: 20 pushes, min_interval 0, 100-row loads", "",
             "| engine | scenario | rows | calls | s | rows/s | calls/s | bare loop | bare loop rows/s | ratio | server CPU s (bare loop) | replay rows/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["throughput"]:
        if "error" in r:
            lines.append(f"| {r['engine']} | error: {r['error'][:200]} |||||||||||")
            continue
        bare_cpu = f" ({r['loop_server_cpu_seconds']})" if "loop_server_cpu_seconds" in r else ""
        lines.append(f"| {r['engine']} | {r['scenario']} | {r['rows']:,} | {r['calls']:,} | {r['seconds']} | {r['rows_per_s']:,} | "
                     f"{r['calls_per_s']} | {r['loop']} | {r['loop_rows_per_s']:,} | {B.fmt_ratio(r['ratio_rows_per_s'])} | "
                     f"{r['server_cpu_seconds']}{bare_cpu} | {r['replay_rows_per_s']:,} |")
    lines += ["", "## Latency: job Complete -> row at the receiver (low load)", "",
              "| engine | samples | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    for r in data["latency"]:
        if "error" in r:
            lines.append(f"| {r['engine']} | error: {r['error'][:200]} |||||")
            continue
        lines.append(f"| {r['engine']} | {r['samples']} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} |")
    lines += ["", *[f"- {n}" for n in data["notes"]], ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-rows", type=int, default=1000, help="the pushes' max_batch_rows")
    parser.add_argument("--samples", type=int, default=200, help="latency samples")
    parser.add_argument("--skip-pg", action="store_true")
    args = parser.parse_args()
    os.environ["PUSHBASE_ALLOW_PRIVATE_TARGETS"] = "1"  # the receiver is on loopback
    engines: list[tuple[str, Any]] = [("sqlite", None)]
    notes = ["Ratio = Pushbase rows/s over the bare aiohttp loop's. Arriving: the loop faces the same arrival (the same 100-row loads, "
             "?wait=true, into datasets without pushes, each sent on to the receiver by the client once Complete), so both include "
             "ingesting the rows. Backlog: the loop replays the very bodies Pushbase sent, from memory (no view to read, nothing to "
             "store or stamp).",
             "Pushbase's pushes store each batch before sending it and stamp its rows after the 2xx; all on one 2-core machine shared "
             "with the receiver and the loaders. Replay rows/s = the same bodies posted back to back, without any arrival: the "
             "receiver's capacity, not a target.",
             "On PostgreSQL `pushbase serve` runs its worker as a child process (CPU and RSS count both); 'worker inside the API "
             "process' is the same with PUSHBASE_WORKER_PROCESS=0, for comparison."]
    if args.skip_pg:
        notes.append("PostgreSQL skipped (--skip-pg)")
    elif (why := B.pg_available()) is not None:
        notes.append(f"PostgreSQL not reachable: {why}")
    else:
        engines.append(("postgresql", "pg"))
    throughput_results: list[dict[str, Any]] = []
    latency_results: list[dict[str, Any]] = []
    print(f"bench/push: {args.rows:,} rows, {PUSHES} pushes, max_batch_rows {args.batch_rows}", flush=True)
    for engine, _ in engines:
        with B.workdir(f"push-{engine}") as work:
            steps: list[tuple[str, Any, list[dict[str, Any]]]] = [
                ("throughput", lambda db: throughput(engine, db, work, args.rows, args.batch_rows), throughput_results)]
            if engine == "postgresql":
                # For comparison: serve's worker inside the API process, as before it became a child process.
                steps.append(("throughput_in_process", lambda db: throughput(engine, db, work, args.rows, args.batch_rows, in_process=True),
                              throughput_results))
            for label, fn, sink in (
                *steps,
                ("latency", lambda db: [latency(engine, db, work, args.samples)], latency_results),
            ):
                print(f"- {engine} {label} ...", flush=True)
                try:
                    if engine == "sqlite":
                        out = fn(str(work / f"{label}.db"))
                    else:
                        with B.pg_schema(label) as url:
                            out = fn(url)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"  FAILED: {exc}", flush=True)
                    sink.append({"engine": engine, "error": str(exc)[:2000]})
                    continue
                for r in out:
                    print("  " + json.dumps(r), flush=True)
                sink.extend(out)
    data = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": B.machine(), "versions": B.versions(),
            "throughput": throughput_results, "latency": latency_results, "notes": notes}
    B.write_results("push", data, markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
