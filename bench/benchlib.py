"""Shared helpers of the benchmarks: the data, the servers (Pushbase, Datasette), RSS sampling, results.

Runs in bench/.venv-peers (httpx, psutil, psycopg, orjson, sqlite-utils, datasette); the Pushbase server
itself runs from the product's .venv, as a separate process, exactly as a user starts it.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import orjson
import psutil

ROOT = Path(os.environ.get("BENCH_ROOT") or Path(__file__).resolve().parent.parent)
PRODUCT_BIN = ROOT / ".venv" / "bin"
PEERS_BIN = ROOT / "bench" / ".venv-peers" / "bin"
RESULTS = ROOT / "bench" / "results"
PG_BASE_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

# ------------------------------------------------------------------------------------------------
# The data: 10 columns of mixed types, deterministic.

COLUMNS = [
    ("id", "integer"),
    ("name", "string"),
    ("email", "string"),
    ("city", "string"),
    ("amount", "number"),
    ("quantity", "integer"),
    ("active", "boolean"),
    ("signup_date", "date"),
    ("updated_at", "datetime"),
    ("note", "string"),
]
CITIES = [f"city_{i:03d}" for i in range(100)]  # ~1% of rows per city: the filtered view's filter
FILTER_CITY = "city_042"
DATASETTE_TYPES = {"integer": "integer", "number": "float", "boolean": "integer", "string": "text", "date": "text", "datetime": "text"}
_WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def make_rows(n: int, seed: int = 42) -> list[dict[str, Any]]:
    return list(iter_rows(n, seed))


def iter_rows(n: int, seed: int = 42) -> Iterator[dict[str, Any]]:
    """Row i has id i (1..n); the same seed gives the same rows."""
    rnd = random.Random(seed)
    base_day = dt.date(2000, 1, 1).toordinal()
    base_ts = int(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    for i in range(1, n + 1):
        first, last = rnd.choice(_WORDS), rnd.choice(_WORDS)
        ts = base_ts + rnd.randrange(0, 365 * 86400)
        yield (
            {
                "id": i,
                "name": f"{first.title()} {last.title()} {i}",
                "email": f"{first}.{last}{i}@example.com",
                "city": rnd.choice(CITIES),
                "amount": round(rnd.uniform(0, 10000), 2),
                "quantity": rnd.randrange(0, 1000),
                "active": rnd.random() < 0.5,
                "signup_date": dt.date.fromordinal(base_day + rnd.randrange(0, 9000)).isoformat(),
                "updated_at": dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                # Commas and quotes on purpose: CSV has to quote them.
                "note": " ".join(rnd.choice(_WORDS) for _ in range(rnd.randrange(2, 10))) + (', "quoted"' if i % 7 == 0 else ""),
            }
        )


def batch_bodies(rows: list[dict[str, Any]], target_bytes: int, wrap: str | None = None) -> list[tuple[int, bytes]]:
    """Split rows into JSON bodies of about ``target_bytes`` each: [(row count, body)].
    ``wrap="rows"`` makes ``{"rows": [...]}`` bodies (Datasette's insert API)."""
    sample = orjson.dumps(rows[:1000])
    per_row = len(sample) / min(len(rows), 1000)
    size = max(1, int(target_bytes / per_row))
    out = []
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        out.append((len(chunk), orjson.dumps({wrap: chunk} if wrap else chunk)))
    return out


def write_ndjson(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "wb") as f:
        for start in range(0, len(rows), 10000):
            f.write(b"".join(orjson.dumps(r) + b"\n" for r in rows[start:start + 10000]))


# ------------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}\n{text}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no answer from {url} in {timeout}s")


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class RssSampler:
    """Peak resident memory of a process and its children, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.02, others: tuple[int, ...] = ()) -> None:
        self.proc = psutil.Process(pid)
        self.others = [psutil.Process(o) for o in others]  # more processes of the same system (workers)
        self.interval = interval
        self.peak = 0
        self.peak_main = 0  # the main process alone (on PostgreSQL `serve` also runs a worker child)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        total = 0
        try:
            procs = [self.proc, *self.proc.children(recursive=True), *self.others]
        except psutil.Error:
            return 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the process and its children."""
        total = 0.0
        try:
            procs = [self.proc, *self.proc.children(recursive=True), *self.others]
        except psutil.Error:
            return 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def current_main(self) -> int:
        with contextlib.suppress(psutil.Error):
            return int(self.proc.memory_info().rss)
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self.peak_main = max(self.peak_main, self.current_main())
            self._stop.wait(self.interval)

    def start(self) -> "RssSampler":
        self.peak = self.current()
        self.peak_main = self.current_main()
        self._thread.start()
        return self

    def reset(self) -> int:
        """Start a new peak from now; returns the current RSS."""
        now = self.current()
        self.peak = now
        self.peak_main = self.current_main()
        return now

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=2)
        return self.peak


def mb(n: int) -> float:
    return round(n / 1024 / 1024, 1)


@dataclass
class Pushbase:
    proc: subprocess.Popen
    url: str
    key: str
    db: str
    log: Path
    rss: RssSampler = field(init=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.key}


@contextlib.contextmanager
def pushbase_server(db: str, workdir: Path, name: str, workers: int = 0, env: dict[str, str] | None = None) -> Iterator[Pushbase]:
    """``pushbase keys create`` then ``pushbase serve`` on a free port, from the product's .venv (``env``:
    more environment for it). With ``workers``, the API runs ``--no-worker`` and that many ``pushbase
    worker`` processes do the background work (PostgreSQL's scale-out set-up). RSS and CPU count every
    process of the server (``serve``'s own worker child on PostgreSQL too)."""
    exe = str(PRODUCT_BIN / "pushbase")
    env = {**os.environ, "PUSHBASE_LOG_LEVEL": "WARNING", **(env or {})}
    out = subprocess.run([exe, "keys", "create", "--name", "bench", "--scope", "admin", "--db", db],
                         check=True, capture_output=True, text=True, env=env)
    key = out.stdout.strip().splitlines()[-1]
    port = free_port()
    log = workdir / f"pushbase-{name}.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([exe, "serve", "--db", db, "--port", str(port), *(["--no-worker"] if workers else [])],
                                stdout=logf, stderr=subprocess.STDOUT, env=env)
        worker_procs = [subprocess.Popen([exe, "worker", "--db", db], stdout=logf, stderr=subprocess.STDOUT, env=env) for _ in range(workers)]
    server = Pushbase(proc, f"http://127.0.0.1:{port}", key, db, log)
    spy = None
    try:
        wait_http(server.url + "/healthz", proc, log=log)
        server.rss = RssSampler(proc.pid, others=tuple(w.pid for w in worker_procs)).start()
        if PROFILE_DIR:
            spy = start_profiler(proc.pid, name)
        yield server
    finally:
        if hasattr(server, "rss"):
            server.rss.stop()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        for w in worker_procs:
            stop_process(w)
        stop_process(proc)


PROFILE_DIR = os.environ.get("BENCH_PROFILE")  # a folder: py-spy records each Pushbase server into it


def start_profiler(pid: int, name: str) -> subprocess.Popen:
    """py-spy (pip install py-spy into bench/.venv-peers) sampling every thread of the server
    (``BENCH_PROFILE_ARGS``, default ``--idle``: py-spy's sampling options, e.g. ``--gil --native``)."""
    out = Path(PROFILE_DIR) / f"pushbase-{name}-{int(time.time())}"
    Path(PROFILE_DIR).mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen([str(PEERS_BIN / "py-spy"), "record", "--pid", str(pid), "--format", "raw",
                            *os.environ.get("BENCH_PROFILE_ARGS", "--idle").split(), "-o", f"{out}.txt"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return spy


@contextlib.contextmanager
def pg_schema(tag: str) -> Iterator[str]:
    """A fresh schema in the benchmark PostgreSQL; yields the URL that points the server at it."""
    import psycopg

    schema = f"bench_{tag}_{os.getpid()}"
    with psycopg.connect(PG_BASE_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_BASE_URL else "?"
    try:
        yield f"{PG_BASE_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_BASE_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def pg_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import psycopg

        psycopg.connect(PG_BASE_URL, connect_timeout=3).close()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


DATASETTE_SECRET = "bench-secret-not-for-production"


@dataclass
class Datasette:
    proc: subprocess.Popen
    url: str
    token: str
    rss: RssSampler


@contextlib.contextmanager
def datasette_server(db_path: Path, workdir: Path, settings: dict[str, Any]) -> Iterator[Datasette]:
    """Datasette 1.0a41 with ``--root`` (so the ``root`` actor holds every permission) and a signed
    token for ``root`` made by ``datasette create-token root --secret S``."""
    exe = str(PEERS_BIN / "datasette")
    token = subprocess.run([exe, "create-token", "root", "--secret", DATASETTE_SECRET],
                           check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    port = free_port()
    args = [exe, "serve", str(db_path), "--port", str(port), "--root", "--secret", DATASETTE_SECRET]
    for k, v in settings.items():
        args += ["--setting", k, str(v)]
    log = workdir / "datasette.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/-/versions.json", proc, log=log)
        rss = RssSampler(proc.pid).start()
        try:
            yield Datasette(proc, f"http://127.0.0.1:{port}", token, rss)
        finally:
            rss.stop()
    finally:
        stop_process(proc)


# ------------------------------------------------------------------------------------------------
# Results


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def versions() -> dict[str, str]:
    def ver(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[-1]
        except Exception as exc:  # noqa: BLE001
            return f"unknown ({exc})"

    git = ver(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    return {
        "pushbase_commit": git + ("+dirty" if dirty else ""),
        "datasette": ver([str(PEERS_BIN / "datasette"), "--version"]),
        "sqlite_utils": ver([str(PEERS_BIN / "sqlite-utils"), "--version"]),
        "sqlite": ver([str(PRODUCT_BIN / "python"), "-c", "import sqlite3; print(sqlite3.sqlite_version)"]),
    }


def write_results(name: str, data: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / f"{name}.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(RESULTS / f"{name}.json")
    (RESULTS / f"{name}.md").write_text(markdown)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if not ours or not theirs:
        return None
    return round(ours / theirs, 2)


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


@contextlib.contextmanager
def workdir(tag: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"pushbase-bench-{tag}-"))
    try:
        yield path
    finally:
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)
