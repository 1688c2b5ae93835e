"""The ``pushbase`` command: serve, worker, keys, and the commands later parts add (tasks, apply)."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from typing import Optional

import typer
from rich.console import Console

from .settings import Settings

app = typer.Typer(help="Pushbase: a self-hosted data hub with push APIs in both directions.", no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

DB_HELP = "SQLite file path or postgresql:// URL (env PUSHBASE_DB; default ./pushbase.db)"
err = Console(stderr=True)


def _settings(db: Optional[str], allow_private_targets: bool = False) -> Settings:
    overrides: dict[str, object] = {"db": db}
    if allow_private_targets:
        overrides["allow_private_targets"] = True
    return Settings.from_env(**overrides)


def _logging() -> None:
    logging.basicConfig(
        level=os.environ.get("PUSHBASE_LOG_LEVEL", "INFO"),
        format='{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","message":"%(message)s"}',
    )


def _settle_heap() -> None:
    """Garbage-collector settings for a long-running process. What is loaded at start (modules, the app,
    settings) lives as long as the process: frozen, the collector's full passes no longer walk it again
    and again (they did, every few JSON pages or ingest jobs). A JSON page or an ingest job makes tens of
    thousands of short-lived containers, and each 700 of them started a collection: the first generation
    is allowed 10,000. Measured with callgrind on a server answering JSON pages: 31.2k -> 30.5k
    instructions per row (about 2-5%, run to run)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port to listen on"),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    no_worker: bool = typer.Option(False, "--no-worker", help="API only; run `pushbase worker` elsewhere"),
    allow_private_targets: bool = typer.Option(False, "--allow-private-targets", help="let pushes, actions and tasks call private addresses"),
) -> None:
    """Run the API, the web console and (unless --no-worker) the background worker."""
    import uvicorn

    from .keys import create_key, has_keys
    from .storage import open_store
    from .web import create_app
    from .worker import WorkerProcess

    _logging()
    settings = _settings(db, allow_private_targets)
    store = open_store(settings.db)
    if not has_keys(store):
        key, _ = create_key(store, "first admin", ["admin"])
        err.print(f"[bold]No API keys yet: created an admin key. Keep it; it is shown once:[/bold]\n{key}")
    # On PostgreSQL the worker gets a process (and a core) of its own; see pushbase.worker.
    own_process = not no_worker and store.dialect == "postgresql" and os.environ.get("PUSHBASE_WORKER_PROCESS", "1") != "0"
    application = create_app(settings, store=store, run_worker=not no_worker and not own_process)
    err.print(f"Pushbase on http://{host}:{port}  (database: {store.dialect}; console at /console)")
    _settle_heap()
    worker_process = WorkerProcess(settings).start() if own_process else None
    try:
        uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False, limit_concurrency=2000, timeout_keep_alive=30)
    finally:
        if worker_process is not None:
            worker_process.stop()


@app.command()
def worker(
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    allow_private_targets: bool = typer.Option(False, "--allow-private-targets", help="let pushes and tasks call private addresses"),
) -> None:
    """Run only the background worker (jobs, pushes, schedules). Several may share one PostgreSQL."""
    from .storage import open_store
    from .worker import Worker, end_with_parent, tell_ready

    end_with_parent()
    _logging()
    settings = _settings(db, allow_private_targets)
    store = open_store(settings.db)

    async def run() -> None:
        runtime = Worker(store, settings)
        await runtime.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        err.print(f"Pushbase worker running (database: {store.dialect})")
        tell_ready()
        await stop.wait()
        await runtime.stop()

    _settle_heap()
    asyncio.run(run())
    store.close()


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., help="a name to recognise the key by"),
    scope: list[str] = typer.Option(..., help="admin, ingest:DATASET or read:VIEW; repeat for several"),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
) -> None:
    """Create a key; the key is printed alone on the last line of stdout."""
    from .keys import create_key
    from .storage import open_store

    key, info = create_key(open_store(_settings(db).db), name, scope)
    print(f"created key #{info['id']} {name!r} with scopes {', '.join(info['scopes'])}")
    print(key)


@keys_app.command("list")
def keys_list(db: Optional[str] = typer.Option(None, help=DB_HELP)) -> None:
    """List keys (never the keys themselves: only their first characters)."""
    from .keys import list_keys
    from .storage import open_store

    for info in list_keys(open_store(_settings(db).db)):
        state = "revoked" if info["revoked"] else "active"
        print(f"#{info['id']}\t{info['prefix']}…\t{info['name']}\t{','.join(info['scopes'])}\t{state}")


@keys_app.command("revoke")
def keys_revoke(key_id: int = typer.Argument(..., help="the key's number from `keys list`"), db: Optional[str] = typer.Option(None, help=DB_HELP)) -> None:
    """Revoke a key."""
    from .keys import revoke_key
    from .storage import open_store

    revoke_key(open_store(_settings(db).db), key_id)
    print(f"revoked key #{key_id}")


def _register_optional_commands() -> None:
    import importlib

    for name in ("pushbase.tasks.cli", "pushbase.config_apply"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not (exc.name and name.startswith(exc.name)):
                raise
            continue
        module.register(app)


def main() -> None:
    from .errors import PushbaseError

    _register_optional_commands()
    try:
        app(prog_name="pushbase")
    except PushbaseError as exc:
        # A user's mistake or an unreachable database: one line, no traceback.
        err.print(f"[red]error:[/red] {exc.message}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
