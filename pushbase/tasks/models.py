"""The definition of a task, as ``POST /api/tasks`` and ``pushbase apply`` give it.

Validation errors are ordinary pydantic ``ValidationError`` s (the API answers them with 422):
names, methods, durations, cron schedules, template syntax, and which names each template may
read — a step's templates may use ``params``, ``secrets``, ``views``, the globals and the steps
*before* it; pagination templates also ``response`` and ``page``; the load's rows any step.
"""
from __future__ import annotations

from enum import Enum
from typing import Annotated, Any
from urllib.parse import urlsplit

from croniter import CroniterBadDateError, croniter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..durations import parse_duration
from ..errors import Invalid
from ..outbound import custom_header_problem
from .templates import GLOBAL_NAMES, TemplateFailure, check_template_syntax, is_template

__all__ = ["Method", "PaginateSpec", "StepSpec", "LoadSpec", "TaskSpec", "RESERVED_NAMES", "NAME_PATTERN"]

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
#: Names a step may not take: they are already names in templates.
RESERVED_NAMES = frozenset({"params", "secrets", "views", "response", "page", "self", "loop", "caller", "varargs", "kwargs"}) | GLOBAL_NAMES

_CONTEXT_NAMES = frozenset({"params", "secrets", "views"}) | GLOBAL_NAMES
_PAGE_NAMES = frozenset({"response", "page"})
_MAX_TIMEOUT = 600.0
_MAX_BACKOFF = 300.0


def _duration(value: Any, info: ValidationInfo) -> float:
    try:
        return parse_duration(value, field=info.field_name or "duration")
    except Invalid as exc:
        raise ValueError(exc.message) from None


Duration = Annotated[float, BeforeValidator(_duration)]


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _templates_ok(value: Any, field: str) -> None:
    try:
        check_template_syntax(value, field=field)
    except TemplateFailure as exc:
        raise ValueError(exc.message) from None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Method(str, Enum):
    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"


class PaginateSpec(_Model):
    """How a step pages. Exactly one of:

    - ``next_url``: a template giving the next page's URL from ``response`` (the page just
      fetched), e.g. ``"{{ response.data.next }}"``. Missing, null or empty ends the paging.
      Relative URLs are resolved against the current page's URL; the next URL is used as it
      is (the step's ``params`` are not added again).
    - ``page_param``: a query parameter counting pages from ``start`` (default 1) by ``step``
      (default 1).
    - ``offset_param``: a query parameter counting items from ``start`` (default 0) by ``step``
      (default ``size``).

    ``size`` with ``size_param`` also sends the page size. ``items`` is a template giving the
    page's items (e.g. ``"{{ response.data.results }}"``). Paging stops after ``max_pages``,
    on a page whose items — or, without ``items``, whose whole answer — are empty, or when
    the next URL is missing.
    """

    next_url: str | None = None
    page_param: str | None = Field(default=None, min_length=1, max_length=200)
    offset_param: str | None = Field(default=None, min_length=1, max_length=200)
    start: int | None = None
    step: int | None = Field(default=None, ge=1)
    size: int | None = Field(default=None, ge=1, le=1_000_000)
    size_param: str | None = Field(default=None, min_length=1, max_length=200)
    items: str | None = None
    max_pages: int = Field(default=10, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_style(self) -> "PaginateSpec":
        styles = [name for name in ("next_url", "page_param", "offset_param") if getattr(self, name) is not None]
        if len(styles) != 1:
            raise ValueError("paginate needs exactly one of next_url, page_param or offset_param")
        if self.next_url is not None and (self.start is not None or self.step is not None):
            raise ValueError("start and step go with page_param or offset_param, not next_url")
        if self.offset_param is not None and self.size is None and self.step is None:
            raise ValueError("offset_param needs size (the page size) or step")
        if self.size_param is not None and self.size is None:
            raise ValueError("size_param needs size")
        if self.next_url is not None:
            _templates_ok(self.next_url, "paginate.next_url")
        if self.items is not None:
            _templates_ok(self.items, "paginate.items")
        return self

    @property
    def mode(self) -> str:
        return "next_url" if self.next_url is not None else "page" if self.page_param is not None else "offset"

    @property
    def param(self) -> str | None:
        return self.page_param or self.offset_param

    @property
    def first(self) -> int:
        if self.start is not None:
            return self.start
        return 1 if self.page_param is not None else 0

    @property
    def increment(self) -> int:
        if self.step is not None:
            return self.step
        return 1 if self.page_param is not None else int(self.size or 1)


class StepSpec(_Model):
    """One HTTP request of a task. Every string may hold a template (see ``templates``)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    method: Annotated[Method, BeforeValidator(_upper)] = Method.GET
    url: str = Field(min_length=1, max_length=8192)
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    form: dict[str, Any] | None = None
    timeout: Duration = 30.0
    expect_json: bool = True
    continue_on_error: bool = False
    retries: int = Field(default=0, ge=0, le=10)
    retry_backoff: Duration = 1.0
    paginate: PaginateSpec | None = None

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_NAMES:
            raise ValueError(f"{value!r} is a reserved name in templates; choose another step name")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        _templates_ok(value, "url")
        if not is_template(value):
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"url must be an http:// or https:// URL, got {value!r}")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header in value.items():
            problem = custom_header_problem(name, header, reserved=frozenset())
            if problem is not None:
                raise ValueError(problem)
        _templates_ok(value, "headers")
        return value

    @field_validator("params", "form")
    @classmethod
    def _templated(cls, value: Any, info: ValidationInfo) -> Any:
        _templates_ok(value, info.field_name or "")
        return value

    @field_validator("json_body")
    @classmethod
    def _json_templates(cls, value: Any) -> Any:
        _templates_ok(value, "json")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if not 0 < value <= _MAX_TIMEOUT:
            raise ValueError(f"timeout must be more than 0 and at most {_MAX_TIMEOUT:g} seconds")
        return value

    @field_validator("retry_backoff")
    @classmethod
    def _backoff(cls, value: float) -> float:
        if value > _MAX_BACKOFF:
            raise ValueError(f"retry_backoff must be at most {_MAX_BACKOFF:g} seconds")
        return value

    @model_validator(mode="after")
    def _body(self) -> "StepSpec":
        if self.json_body is not None and self.form is not None:
            raise ValueError("a step sends either a json body or a form body, not both")
        if self.paginate is not None and not self.expect_json:
            raise ValueError("paginate needs expect_json: pages are read as JSON")
        return self

    def request_templates(self) -> dict[str, Any]:
        """Every templated field of the request (not the pagination templates)."""
        return {"url": self.url, "headers": self.headers, "params": self.params, "json": self.json_body, "form": self.form}

    def page_templates(self) -> dict[str, Any]:
        if self.paginate is None:
            return {}
        return {"paginate.next_url": self.paginate.next_url, "paginate.items": self.paginate.items}


class LoadSpec(_Model):
    """Load rows into a dataset through the Push API's ingest job, after the steps ran.

    ``rows`` is usually one expression (``"{{ fetch.data.results }}"``) giving a list of
    objects (a single object loads as one row)."""

    dataset: str = Field(min_length=1, max_length=200)
    rows: Any

    @field_validator("rows")
    @classmethod
    def _rows(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("rows is required: a template such as '{{ fetch.data.results }}' or a list of objects")
        _templates_ok(value, "load.rows")
        return value


class TaskSpec(_Model):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str = Field(default="", max_length=4000)
    steps: list[StepSpec] = Field(min_length=1, max_length=50)
    load: LoadSpec | None = None
    schedule: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            return None
        if not croniter.is_valid(value):
            raise ValueError(f"schedule {value!r} is not a valid cron expression (e.g. '*/15 * * * *')")
        try:
            croniter(value).get_next(float)
        except CroniterBadDateError:
            # Valid syntax, but no such day ever comes ("0 0 31 2 *"): the task would never run.
            raise ValueError(f"schedule {value!r} never comes due (no such date)") from None
        return value

    @model_validator(mode="after")
    def _unique_steps(self) -> "TaskSpec":
        seen: set[str] = set()
        for step in self.steps:
            if step.name in seen:
                raise ValueError(f"step names must be unique: {step.name!r} appears twice")
            seen.add(step.name)
        return self

    def name_problems(self) -> list[dict[str, Any]]:
        """Every name a template reads that it may not (a later step, its own, an unknown one), each
        with its place (``{"loc": ["steps", "1", "url"], "message"}``): checked on a definition that is
        otherwise valid, since which names exist depends on its steps."""
        problems: list[dict[str, Any]] = []
        seen: list[str] = []
        all_names = [step.name for step in self.steps]
        for index, step in enumerate(self.steps):
            allowed = _CONTEXT_NAMES | set(seen)
            where, loc = f"step {step.name!r}", ["steps", str(index)]
            problems += _name_problems(step.request_templates(), allowed, all_names, where, step.name, loc)
            problems += _name_problems(step.page_templates(), allowed | _PAGE_NAMES, all_names, where, step.name, loc)
            seen.append(step.name)
        if self.load is not None:
            problems += _name_problems({"load.rows": self.load.rows}, _CONTEXT_NAMES | set(seen), all_names, "load", None, [])
        return problems


def _name_problems(fields: dict[str, Any], allowed: set[str] | frozenset[str], steps: list[str], where: str, own: str | None,
                   loc: list[str]) -> list[dict[str, Any]]:
    """Each name a template reads that it may not: ``{"loc", "message"}``."""
    problems = []
    for field, value in fields.items():
        if value is None:
            continue
        names = check_template_syntax(value)
        for name in sorted(names - set(allowed)):
            if name == own:
                reason = f"refers to its own step {name!r}; a step can only read the steps before it"
            elif name in steps:
                reason = f"refers to step {name!r}, which runs later"
            else:
                known = ", ".join(sorted(allowed))
                reason = f"unknown name {name!r} (known here: {known})"
            problems.append({"loc": [*loc, *field.split(".")], "message": f"{where}, {field}: {reason}"})
    return problems
