"""``pushbase tasks run NAME`` and ``pushbase tasks list``.

``--param k=v`` passes text; ``--param k:=JSON`` passes a JSON value (``n:=3``, ``ids:=[1,2]``).
``tasks run`` prints one line per step and exits 0 when the run succeeded, 1 when it failed and 2
when it could not start (unknown task, bad parameter).
"""
from __future__ import annotations

import asyncio
from typing import Any, Optional

import orjson
import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["register", "parse_params"]

tasks_app = typer.Typer(help="API request tasks.", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
DB_HELP = "SQLite file path or postgresql:// URL (env PUSHBASE_DB; default ./pushbase.db)"


def register(app: typer.Typer) -> None:
    app.add_typer(tasks_app, name="tasks")


def parse_params(values: list[str]) -> dict[str, Any]:
    """``k=v`` (text) and ``k:=JSON`` pairs as a dict; ValueError names the bad one."""
    from ..exact_json import loads_exact

    params: dict[str, Any] = {}
    for item in values:
        json_at = item.find(":=")
        text_at = item.find("=")
        if json_at > 0 and json_at < text_at:
            name, raw = item[:json_at], item[json_at + 2 :]
            try:
                params[name] = loads_exact(raw)  # an integer beyond 64 bits is then refused by name
            except orjson.JSONDecodeError:
                raise ValueError(f"--param {item!r}: the value after := must be JSON") from None
        elif text_at > 0:
            params[item[:text_at]] = item[text_at + 1 :]
        else:
            raise ValueError(f"--param {item!r}: write NAME=TEXT or NAME:=JSON")
    return params


def _settings(db: Optional[str], allow_private_targets: bool) -> Any:
    from ..settings import Settings

    overrides: dict[str, object] = {"db": db}
    if allow_private_targets:
        overrides["allow_private_targets"] = True
    return Settings.from_env(**overrides)


def _step_line(step: dict[str, Any]) -> str:
    outcome = step.get("outcome")
    mark = {"succeeded": "[green]✓[/green]", "failed": "[red]✗[/red]", "skipped": "[dim]-[/dim]"}.get(outcome, "?")
    request = step.get("request") or {}
    target = f"{request.get('method', '')} {request.get('url', '')}".strip()
    status = step.get("status")
    parts = [mark, f"[bold]{escape(step.get('name', ''))}[/bold]", outcome or ""]
    if target:
        parts.append(escape(target))
    if status is not None:
        parts.append(f"→ {status}")
    if step.get("pages"):
        parts.append(f"{len(step['pages'])} page(s)")
    if outcome != "skipped":
        parts.append(f"{step.get('duration_ms', 0)} ms")
    line = "  ".join(parts)
    if step.get("error"):
        line += f"\n    [red]{escape(str(step['error']))}[/red]"
    return line


@tasks_app.command("run")
def run(
    name: str = typer.Argument(..., help="the task's name"),
    param: list[str] = typer.Option([], "--param", "-p", help="a run parameter: NAME=TEXT or NAME:=JSON; repeat for several"),
    db: Optional[str] = typer.Option(None, help=DB_HELP),
    allow_private_targets: bool = typer.Option(False, "--allow-private-targets", help="let the task call loopback and private addresses"),
    json_output: bool = typer.Option(False, "--json", help="print the run record as JSON instead of step lines"),
) -> None:
    """Run a task now and print each step's status; exits non-zero when the run fails."""
    from ..errors import PushbaseError
    from ..exact_json import dumps_exact
    from ..storage import open_store
    from .service import run_now

    try:
        params = parse_params(param)
    except ValueError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    settings = _settings(db, allow_private_targets)
    store = open_store(settings.db)
    try:
        record = asyncio.run(run_now(store, settings, name, params=params, trigger="cli"))
    except PushbaseError as exc:
        err.print(f"[red]{escape(exc.message)}[/red]")
        raise typer.Exit(2) from None
    finally:
        store.close()
    if json_output:
        print(dumps_exact(record, option=orjson.OPT_INDENT_2).decode())
    else:
        out.print(f"task [bold]{escape(name)}[/bold] run {record['run_id']}")
        for step in record["steps"]:
            out.print(_step_line(step))
        load = record.get("load")
        if load:
            job = load.get("jobId")
            counts = ", ".join(f"{k} {load[k]}" for k in ("rows_inserted", "rows_updated") if load.get(k) is not None)
            out.print(
                f"load into [bold]{escape(str(load.get('dataset')))}[/bold]: {load.get('rows', 0)} row(s)"
                + (f", job {job} {load.get('status')}" if job else "")
                + (f" ({counts})" if counts else "")
            )
    error = record.get("error")
    if record["status"] == "succeeded":
        out.print(f"[green]succeeded[/green] in {record.get('duration_ms')} ms")
        return
    reason = (error or {}).get("reason", "failed")
    err.print(f"[red]failed[/red]: {escape(str(reason))}")
    raise typer.Exit(1)


@tasks_app.command("list")
def list_(db: Optional[str] = typer.Option(None, help=DB_HELP)) -> None:
    """List tasks: schedule, next due time and last run."""
    from ..storage import open_store
    from .store import list_tasks

    store = open_store(_settings(db, False).db)
    try:
        tasks = list_tasks(store)
    finally:
        store.close()
    if not tasks:
        out.print("no tasks")
        return
    print("name\tsteps\tschedule\tenabled\tnext run (UTC)\tlast run")
    for task in tasks:
        last = task["state"]["last_run"]
        last_text = f"{last['status']} #{last['run_id']} {last['started_at']}" if last else "-"
        enabled = "yes" if task.get("enabled") else "no"
        print(f"{task['name']}\t{len(task['steps'])}\t{task.get('schedule') or '-'}\t{enabled}\t{task['state']['next_run_at'] or '-'}\t{last_text}")
