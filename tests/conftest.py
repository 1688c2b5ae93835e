"""Shared fixtures: real stores on SQLite files and on PostgreSQL (one schema per test), real apps,
real server processes, and keys."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import httpx
import psycopg
import pytest
from starlette.testclient import TestClient

from pushbase.keys import create_key
from pushbase.settings import Settings
from pushbase.storage import Store, open_store
from pushbase.web import create_app

from .receivers import Receiver

PG_URL = os.environ.get("PUSHBASE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
ENGINES = ["sqlite", "postgresql"]


def pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"


def pg_sqlalchemy_url(url: str = PG_URL) -> str:
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


@contextlib.contextmanager
def fresh_pg_schema(prefix: str = "t") -> Iterator[str]:
    """A new PostgreSQL schema, dropped afterwards, so tests never see each other's tables.

    PostgreSQL being down fails the test (never skips it): CI must run every engine."""
    schema = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_pg_schema() as schema:
        yield schema


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL for each engine: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield str(tmp_path / "pushbase.db")
        return
    with fresh_pg_schema() as schema:
        yield pg_schema_url(schema)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = open_store(db_url)
    yield opened
    opened.close()


@pytest.fixture
def pg_store() -> Iterator[Store]:
    """A store on PostgreSQL only, for what only PostgreSQL has (LISTEN/NOTIFY, storage settings)."""
    with fresh_pg_schema() as schema:
        opened = open_store(pg_schema_url(schema))
        yield opened
        opened.close()


class Api:
    """A TestClient bound to one key, with the helpers tests keep needing."""

    def __init__(self, client: TestClient, key: str | None) -> None:
        self.client = client
        self.key = key

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"x-api-key": self.key} if self.key else {}
        headers.update(extra or {})
        return headers

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.post(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def patch(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.patch(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.delete(path, headers=self._headers(kw.pop("headers", None)), **kw)

    def with_key(self, key: str | None) -> "Api":
        return Api(self.client, key)

    def load(self, dataset: str, rows: Any, **kw: Any) -> dict[str, Any]:
        r = self.post(f"/api/datasets/{dataset}/data?wait=true", json=rows, **kw)
        assert r.status_code in (200, 202), r.text
        return r.json()

    def all_rows(self, path: str, **params: Any) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        after = None
        while True:
            query = dict(params)
            if after:
                query["after"] = after
            page = self.get(path, params=query)
            assert page.status_code == 200, page.text
            body = page.json()
            rows += body["rows"]
            after = body["next"]
            if not after:
                return rows


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP receiver on 127.0.0.1 that can answer, hang or drop (see receivers.py)."""
    with Receiver() as running:
        yield running


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(db=db_url, allow_private_targets=True, max_body_bytes=2 * 1024 * 1024, sweep_seconds=1.0)


@pytest.fixture
def api(store: Store, settings: Settings) -> Iterator[Api]:
    """The real ASGI app with its worker, over a real database, and an admin key."""
    key, _ = create_key(store, "admin", ["admin"])
    app = create_app(settings, store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PUSHBASE_BIN = str(Path(sys.executable).with_name("pushbase"))


def pushbase_cli(*args: str, db: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PUSHBASE_BIN, *args, "--db", db], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


class ServerProcess:
    """``pushbase serve`` (or ``worker``) as a real process."""

    def __init__(self, db: str, tmp: Path, *args: str, env: dict[str, str] | None = None, command: str = "serve") -> None:
        self.db = db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"{command}-{self.port}.log"
        self.command = command
        self.args = args
        self.env = {**os.environ, "PUSHBASE_ALLOW_PRIVATE_TARGETS": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "ServerProcess":
        log = open(self.log_path, "ab")
        cmd = [PUSHBASE_BIN, self.command, "--db", self.db, *self.args]
        if self.command == "serve":
            cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        if self.command == "serve":
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.log()
                try:
                    if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            raise AssertionError("server did not start: " + self.log())
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[ServerProcess] = []

    def make(db: str, *args: str, env: dict[str, str] | None = None, command: str = "serve") -> ServerProcess:
        proc = ServerProcess(db, tmp_path, *args, env=env, command=command)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


def admin_key(db: str) -> str:
    out = pushbase_cli("keys", "create", "--name", "admin", "--scope", "admin", db=db)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def chromium_path() -> str:
    return shutil.which("chromium") or "/usr/bin/chromium"
