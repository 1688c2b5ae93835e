"""Configuration as code: ``pushbase apply FILE.yaml`` creates or updates datasets, views (with their
actions), pushes and tasks, idempotently, through the same domain functions as the HTTP API.

The file has up to four lists, applied in dependency order::

    datasets: [{name, sample | columns, unique_id, ignore_unknown_fields}]
    views:    [{name, dataset, columns, calculations, filters, sort, limit, actions: [{name, label, url, ...}]}]
    pushes:   [{name, view, url, log_time_field, format, min_interval, ...}]
    tasks:    [{name, steps, load, schedule, ...}]

An existing dataset gains the columns the file lists that it lacks (columns are never dropped by
apply); an existing view, push or task is updated to the file's definition, and reported
``unchanged`` when the file leaves it as it is. Re-applying an unchanged file leaves the same objects
(actions are saved again). Secrets can come from the environment: any string ``${ENV_NAME}`` is replaced
by that variable's value (an unset variable is an error), so files can be committed without them.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, Optional

import typer
import yaml
from rich.console import Console

from . import actions, datasets
from .errors import Invalid, NotFound, PushbaseError
from .push import definitions as pushes
from .settings import Settings
from .storage import Store, open_store
from .tasks import store as tasks
from .views import store as views

__all__ = ["apply_config", "register"]

_ENV = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
_SECTIONS = ("datasets", "views", "pushes", "tasks")


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise Invalid(f"${{{name}}} is used in the file but not set in the environment", code="missing_env")
            return os.environ[name]

        return _ENV.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def _named(section: str, items: Any) -> list[dict[str, Any]]:
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        raise Invalid(f"{section} must be a list of objects, each with a name", code="invalid_config")
    return items


def apply_config(store: Store, config: Any, settings: Settings, progress: Callable[[str], None] = lambda _: None) -> list[str]:
    """Apply a parsed configuration; returns one line per object saying what happened."""
    if not isinstance(config, dict):
        raise Invalid("the file must be a mapping with datasets, views, pushes and/or tasks", code="invalid_config")
    unknown = set(config) - set(_SECTIONS)
    if unknown:
        raise Invalid(f"unknown sections: {', '.join(sorted(unknown))}", code="invalid_config")
    config = _expand(config)
    allow = settings.allow_private_targets
    report: list[str] = []

    def note(line: str) -> None:
        report.append(line)
        progress(line)

    for body in _named("datasets", config.get("datasets")):
        try:
            current = datasets.get_dataset(store, body["name"])
        except NotFound:
            datasets.create_dataset(store, body)
            note(f"dataset {body['name']}: created")
            continue
        wanted = datasets.create_columns_of(body)
        have = {c.name for c in current.columns}
        missing = [{"name": c.name, "type": c.type} for c in wanted if c.name not in have]
        change: dict[str, Any] = {}
        if missing:
            change["add_columns"] = missing
        if "ignore_unknown_fields" in body and bool(body["ignore_unknown_fields"]) != current.ignore_unknown_fields:
            change["ignore_unknown_fields"] = bool(body["ignore_unknown_fields"])
        if change:
            datasets.update_dataset(store, body["name"], change)
            note(f"dataset {body['name']}: updated ({', '.join(change)})")
        else:
            note(f"dataset {body['name']}: unchanged")

    for body in _named("views", config.get("views")):
        body = dict(body)
        wanted_actions = _named("actions", body.pop("actions", None))
        try:
            current = views.get_view(store, body["name"])
        except NotFound:
            views.create_view(store, body)
            note(f"view {body['name']}: created")
        else:
            change = {k: v for k, v in body.items() if k not in ("name", "dataset")}
            if any(current.definition.get(k) != v for k, v in change.items()):
                views.update_view(store, body["name"], change)
                note(f"view {body['name']}: updated")
            else:
                note(f"view {body['name']}: unchanged")
        existing = {a["name"] for a in actions.list_actions(store, body["name"])}
        for action in wanted_actions:
            if action["name"] in existing:
                actions.delete_action(store, body["name"], action["name"])
            actions.create_action(store, body["name"], action, allow_private=allow)
            note(f"action {body['name']}/{action['name']}: saved")

    # A push or task that the file leaves as it is keeps its updated_at (its update writes nothing).
    for body in _named("pushes", config.get("pushes")):
        try:
            before = pushes.show_push(store, body["name"])["updated_at"]
        except NotFound:
            pushes.create_push(store, body, allow_private=allow)
            note(f"push {body['name']}: created")
        else:
            after = pushes.update_push(store, body["name"], {k: v for k, v in body.items() if k != "name"}, allow_private=allow)
            note(f"push {body['name']}: {'unchanged' if after['updated_at'] == before else 'updated'}")

    for body in _named("tasks", config.get("tasks")):
        try:
            before = tasks.show_task(store, body["name"])["updated_at"]
        except NotFound:
            tasks.create_task(store, body, allow_private=allow)
            note(f"task {body['name']}: created")
        else:
            after = tasks.update_task(store, body["name"], {k: v for k, v in body.items() if k != "name"}, allow_private=allow)
            note(f"task {body['name']}: {'unchanged' if after['updated_at'] == before else 'updated'}")
    return report


def register(app: typer.Typer) -> None:
    @app.command("apply")
    def apply_command(
        file: str = typer.Argument(..., help="a YAML (or JSON) file with datasets, views, pushes and tasks"),
        db: Optional[str] = typer.Option(None, help="SQLite file path or postgresql:// URL (env PUSHBASE_DB)"),
        allow_private_targets: bool = typer.Option(False, "--allow-private-targets", help="allow loopback/private URLs"),
    ) -> None:
        """Create or update objects from a file, idempotently."""
        err = Console(stderr=True)
        out = Console(highlight=False)
        try:
            with open(file, encoding="utf-8") as handle:
                config = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError) as exc:
            err.print(f"[red]cannot read {file}: {exc}[/red]")
            raise typer.Exit(2) from None
        overrides: dict[str, Any] = {"db": db}
        if allow_private_targets:
            overrides["allow_private_targets"] = True
        settings = Settings.from_env(**overrides)
        store = open_store(settings.db)
        try:
            apply_config(store, config, settings, progress=lambda line: out.print(line))
        except PushbaseError as exc:
            err.print(f"[red]{exc.message}[/red]")
            if exc.details is not None:
                err.print(exc.details)
            raise typer.Exit(1) from None
        finally:
            store.close()
