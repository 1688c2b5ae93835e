"""API request tasks: named lists of templated HTTP steps, optionally paged, scheduled and loaded
into a dataset (PushMetrics-style).

- ``models``: the definition (``TaskSpec``, ``StepSpec``, ``PaginateSpec``, ``LoadSpec``).
- ``templates``: the sandboxed, expression-only Jinja the steps are written in.
- ``runner``: ``run_task`` — runs the steps against an ``HttpSender`` and returns a redacted
  ``RunResult``.
- ``store``: stored tasks (``/api/tasks``) and their runs (``pb_task_runs``).
- ``service``: runs a stored task against the database (views, load) and records the run.
- ``schedule``: ``TaskScheduler``, the worker's cron scheduler (once per due time).
- ``cli``: ``pushbase tasks run NAME`` and ``pushbase tasks list``.
"""
from __future__ import annotations

from .models import NAME_PATTERN, RESERVED_NAMES, LoadSpec, Method, PaginateSpec, StepSpec, TaskSpec
from .runner import MAX_BODY_BYTES, MAX_DATA_BYTES, REDACTED, HttpAnswer, HttpSender, RunResult, is_sensitive_name, retry_delay, run_task
from .templates import (
    MAX_TEXT,
    MAX_VALUE,
    Secrets,
    StepResult,
    TemplateFailure,
    Views,
    build_context,
    check_template_syntax,
    render_value,
)

__all__ = [
    "TaskSpec",
    "StepSpec",
    "PaginateSpec",
    "LoadSpec",
    "Method",
    "NAME_PATTERN",
    "RESERVED_NAMES",
    "run_task",
    "RunResult",
    "HttpSender",
    "HttpAnswer",
    "retry_delay",
    "is_sensitive_name",
    "MAX_DATA_BYTES",
    "MAX_BODY_BYTES",
    "REDACTED",
    "TemplateFailure",
    "render_value",
    "check_template_syntax",
    "build_context",
    "StepResult",
    "Secrets",
    "Views",
    "MAX_TEXT",
    "MAX_VALUE",
]
