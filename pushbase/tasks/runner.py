"""Running a task: its steps in order, then the optional load into a dataset.

Rules (the docs repeat them):

Requests
    Templates are rendered with the earlier steps, ``params`` (the run's over the task's
    defaults), ``secrets`` and ``views``. ``params`` go into the query string after any query
    the URL already has, replacing parameters of the same name (a list repeats the parameter,
    ``true``/``false`` for booleans, null leaves it out). A ``json`` body is sent as JSON with
    ``Content-Type: application/json``; a ``form`` body urlencoded (objects and lists of
    objects as JSON text). A header set by the step wins over these defaults; JSON steps send
    ``Accept: application/json`` unless they set Accept. A header whose value renders to null
    is left out.

Answers
    A step succeeds on a 2xx answer within its timeout. Its ``.data`` is the parsed JSON
    answer (null for an empty body), or the text when ``expect_json`` is false. A non-2xx
    answer, a network error, a timeout, a non-JSON answer where JSON was expected and a
    template error fail the step; the run then stops as failed at that step, unless the step
    says ``continue_on_error`` (the run goes on, and may still succeed; later templates see
    ``step.ok``, ``step.error`` and, for a non-2xx JSON answer, its ``.data``).

Retries
    ``retries`` extra attempts on network errors, timeouts and 408, 425, 429, 500, 502, 503,
    504, waiting ``retry_backoff`` × 2^(n-1) (at most 60 s). On 429 and 503 a ``Retry-After``
    (seconds or an HTTP date) makes the wait at least that long, still capped at 60 s. A
    non-JSON answer and template errors are not retried.

Pagination
    Each page is one request (with its own retries). ``.data`` of a paged step is the list of
    every page's answer in order; with an ``items`` template, ``.items`` is every page's items
    concatenated (``{{ fetch.items }}`` is what one usually loads), and ``.pages`` is the
    number of pages. The step's ``status`` and ``headers`` are the last page's.

Load
    Runs when no step stopped the run: ``rows`` renders to a list of objects (one object is
    one row) and goes through ``load_rows(dataset, rows)`` — the same ingest job as the Push
    API. The run records what it returns (``jobId``, ``status``...); a job that ended
    ``ErrorExit`` or ``TerminatedExit`` fails the run.

Records
    Each step records its request (method, full URL, headers, body), HTTP status, data,
    duration, attempts and error; skipped steps (after a failure) are recorded as skipped.
    ``data`` over 64 KiB of JSON and request bodies over 16 KiB are stored as
    ``{"truncated": true, "bytes": N}``. Redaction: every secret value a template read (also
    URL-encoded, JSON-escaped and base64), the values sent in credential-like headers, query
    parameters and body fields (Authorization, *token*, *secret*, *password*, api key,
    cookie, signature, session...) — including the bare token after ``Bearer`` — are replaced
    by ``***`` everywhere in the record, and credential-like fields of bodies and data show
    ``***``.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import email.utils
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Protocol
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urljoin, urlsplit, urlunsplit

import orjson

from ..durations import format_duration
from ..errors import Invalid, PushbaseError
from ..netguard import check_url
from ..outbound import custom_header_problem
from ..exact_json import dumps_exact, loads_exact
from .models import StepSpec, TaskSpec
from .templates import Secrets, StepResult, TemplateFailure, Views, build_context, render_string, render_value, secret_derived_values, used_secret_values

__all__ = [
    "HttpSender",
    "HttpAnswer",
    "RunResult",
    "run_task",
    "retry_delay",
    "MAX_DATA_BYTES",
    "MAX_BODY_BYTES",
    "MAX_RETRY_WAIT",
    "REDACTED",
    "is_sensitive_name",
]

MAX_DATA_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024
MAX_RETRY_WAIT = 60.0
#: Extra time given to a sender beyond the step's timeout before the runner gives up on it.
SENDER_GRACE = 5.0
REDACTED = "***"
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_EXCERPT = 300


class HttpAnswer(Protocol):
    """What a sender returns (``pushbase.outbound.Attempt`` fits)."""

    status_code: int | None
    error: str | None
    duration_ms: Any
    headers: Mapping[str, str]
    body: bytes


class HttpSender(Protocol):
    """Sends one request and never raises for network errors (``pushbase.outbound.OutboundClient``
    fits). The runner puts the query into ``url`` and passes ``params=None``."""

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float,
    ) -> HttpAnswer: ...


@dataclass
class RunResult:
    """The record of one run, already redacted. ``to_json()`` gives the API's shape."""

    status: str
    steps: list[dict[str, Any]]
    error: dict[str, Any] | None = None
    load: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "error": self.error,
            "steps": self.steps,
            "load": self.load,
            "params": self.params,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_ms": self.duration_ms,
        }


# --- retries ------------------------------------------------------------------------------

def retry_delay(step: StepSpec, attempt: int, status: int | None, error: str | None, headers: Mapping[str, str]) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or None to stop retrying."""
    if error is None and status is not None and 200 <= status < 300:
        return None
    if attempt > step.retries:
        return None
    if error is None and status not in RETRYABLE_STATUSES:
        return None
    delay = min(step.retry_backoff * (2 ** (attempt - 1)), MAX_RETRY_WAIT)
    if status in (429, 503):
        after = _retry_after(_header(headers, "retry-after"))
        if after is not None:
            delay = max(delay, after)
    return min(delay, MAX_RETRY_WAIT)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return max((when - _dt.datetime.now(_dt.timezone.utc)).total_seconds(), 0.0)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


# --- requests -----------------------------------------------------------------------------

@dataclass
class _Request:
    method: str
    base_url: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes | None
    body_record: Any

    def url(self, extra: Mapping[str, str] | None = None) -> str:
        return _with_query(self.base_url, self.query, extra or {})

    def record(self, url: str) -> dict[str, Any]:
        return {"method": self.method, "url": url, "headers": dict(self.headers), "body": self.body_record}


def _with_query(url: str, query: list[tuple[str, str]], extra: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    replace = {k for k, _ in query} | set(extra)
    pairs = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in replace]
    pairs += [(k, v) for k, v in query if k not in extra]
    pairs += list(extra.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(pairs), parts.fragment))


def _check_url(url: Any, where: str) -> str:
    if not isinstance(url, str):
        raise TemplateFailure(f"the URL must be text, got {type(url).__name__}", where=where)
    try:
        # Private addresses are refused where the call connects (the guarded resolver), not here.
        check_url(url, allow_private=True)
        _check_text(url, "the URL")
    except Invalid as exc:
        raise TemplateFailure(exc.message, where=where) from None
    return url


def _check_text(text: str, what: str, where: str = "") -> None:
    """Text that goes into a request must be UTF-8: a lone surrogate (``\\ud800``) cannot be sent."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise TemplateFailure(f"{what} is not valid Unicode text (it holds a lone surrogate such as \\ud800)", where=where) from None


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _query_pairs(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            if item is None:
                continue
            if isinstance(item, (dict, list)):
                raise TemplateFailure(f"query parameter {name!r}: an object or nested list cannot go in a query string")
            pairs.append((str(name), _scalar_text(item)))
    for name, text in pairs:
        _check_text(name + text, f"query parameter {name!r}")
    return pairs


def _form_pairs(form: Mapping[str, Any]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name, value in form.items():
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)):
            pairs.append((str(name), dumps_exact(value).decode()))
            continue
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                pairs.append((str(name), _scalar_text(item)))
    return pairs


def _build_request(step: StepSpec, context: Mapping[str, Any], where: str) -> _Request:
    url = _check_url(render_value(step.url, context, where=where, field="url"), f"{where}, url")
    headers: dict[str, str] = {}
    for name, value in render_value(step.headers, context, where=where, field="headers").items():
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            raise TemplateFailure(f"header {name!r} must be text, got {type(value).__name__}", where=where)
        text = _scalar_text(value)
        problem = custom_header_problem(name, text, reserved=frozenset())
        if problem is not None:
            raise TemplateFailure(f"headers: {problem}", where=where)
        _check_text(text, f"header {name!r}", where)
        headers[name] = text
    params = render_value(step.params, context, where=where, field="params")
    try:
        query = _query_pairs(params)
    except TemplateFailure as exc:
        raise exc.at(where) from None
    body: bytes | None = None
    body_record: Any = None
    content_type: str | None = None
    if step.json_body is not None:
        body_record = render_value(step.json_body, context, where=where, field="json")
        body = _json_bytes(body_record, f"{where}, json")
        content_type = "application/json"
    elif step.form is not None:
        body_record = render_value(step.form, context, where=where, field="form")
        try:
            body = urlencode(_form_pairs(body_record)).encode()
        except (TypeError, UnicodeEncodeError) as exc:
            raise TemplateFailure(f"cannot encode the form: {exc}", where=f"{where}, form") from None
        content_type = "application/x-www-form-urlencoded"
    lower = {name.lower() for name in headers}
    if content_type and "content-type" not in lower:
        headers["Content-Type"] = content_type
    if step.expect_json and "accept" not in lower:
        headers["Accept"] = "application/json"
    return _Request(step.method.value, url, query, headers, body, body_record)


def _json_bytes(value: Any, where: str) -> bytes:
    try:
        return dumps_exact(value)  # integers beyond 64 bits (an id read from an answer) as they are
    except TypeError as exc:
        raise TemplateFailure(f"cannot encode as JSON: {exc}", where=where) from None


# --- answers ------------------------------------------------------------------------------

@dataclass
class _Answer:
    status: int | None
    error: str | None
    headers: dict[str, str]
    body: bytes
    fatal: bool = False  # refused (e.g. a private address): retrying cannot help


async def _send_once(sender: HttpSender, request: _Request, url: str, timeout: float) -> _Answer:
    try:
        attempt = await asyncio.wait_for(
            sender.send(request.method, url, headers=request.headers, data=request.body, params=None, timeout=timeout),
            timeout + SENDER_GRACE,
        )
    except asyncio.TimeoutError:
        return _Answer(None, f"timed out after {format_duration(timeout)}", {}, b"")
    except PushbaseError as exc:
        return _Answer(None, exc.message, {}, b"", fatal=True)
    except Exception as exc:  # a sender should not raise; record it rather than lose the run
        return _Answer(None, f"request failed: {type(exc).__name__}: {exc}", {}, b"")
    headers = {str(k).lower(): str(v) for k, v in dict(attempt.headers or {}).items()}
    refused = bool(attempt.error and attempt.error.startswith("target refused"))
    return _Answer(attempt.status_code, attempt.error, headers, attempt.body or b"", fatal=refused)


async def _send_with_retries(
    sender: HttpSender, step: StepSpec, request: _Request, url: str, sleep: Callable[[float], Awaitable[Any]]
) -> tuple[_Answer, int]:
    attempt = 0
    while True:
        attempt += 1
        answer = await _send_once(sender, request, url, step.timeout)
        if answer.fatal:
            return answer, attempt
        delay = retry_delay(step, attempt, answer.status, answer.error, answer.headers)
        if delay is None:
            return answer, attempt
        await sleep(delay)


def _excerpt(body: bytes) -> str:
    text = body[: _EXCERPT * 4].decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text[:_EXCERPT] + ("…" if len(text) > _EXCERPT else "")


def _interpret(answer: _Answer, expect_json: bool) -> tuple[Any, str | None]:
    """(data, error) of one answer."""
    if answer.error is not None:
        return None, answer.error
    if answer.status is None:
        return None, "no answer"
    body = answer.body
    data: Any = None
    parse_error: str | None = None
    if body.strip():
        if expect_json:
            try:
                data = loads_exact(body)  # an id beyond 64 bits stays exact for the next step
            except orjson.JSONDecodeError:
                content_type = answer.headers.get("content-type") or "no content type"
                parse_error = f"expected a JSON answer, got {content_type}: {_excerpt(body)!r}"
        else:
            data = body.decode("utf-8", errors="replace")
    if not 200 <= answer.status < 300:
        if parse_error is not None:
            data = body.decode("utf-8", errors="replace")
        suffix = f": {_excerpt(body)}" if body.strip() else ""
        return data, f"HTTP {answer.status}{suffix}"
    if parse_error is not None:
        return None, parse_error
    return data, None


# --- steps ---------------------------------------------------------------------------------

@dataclass
class _StepOutcome:
    result: StepResult
    record: dict[str, Any]


def _elapsed_ms(started: float) -> int:
    return int(round((time.monotonic() - started) * 1000))


async def _run_step(
    step: StepSpec, context: dict[str, Any], sender: HttpSender, sleep: Callable[[float], Awaitable[Any]]
) -> _StepOutcome:
    where = f"step {step.name!r}"
    started = time.monotonic()
    record: dict[str, Any] = {"name": step.name, "outcome": "failed", "request": None, "status": None, "data": None, "duration_ms": 0, "attempts": 0, "error": None}

    def finish(result: StepResult) -> _StepOutcome:
        record["outcome"] = "succeeded" if result.ok else "failed"
        record["status"] = result.status
        record["data"] = result.data
        record["error"] = result.error
        record["duration_ms"] = _elapsed_ms(started)
        return _StepOutcome(result, record)

    try:
        request = _build_request(step, context, where)
    except TemplateFailure as exc:
        return finish(StepResult(ok=False, error=exc.at(where).message))

    if step.paginate is None:
        url = request.url()
        record["request"] = request.record(url)
        answer, attempts = await _send_with_retries(sender, step, request, url, sleep)
        record["attempts"] = attempts
        data, error = _interpret(answer, step.expect_json)
        return finish(StepResult(data=data, status=answer.status, headers=answer.headers, ok=error is None, error=error))

    return finish(await _paginate(step, request, context, sender, sleep, record, where))


async def _paginate(
    step: StepSpec,
    request: _Request,
    context: dict[str, Any],
    sender: HttpSender,
    sleep: Callable[[float], Awaitable[Any]],
    record: dict[str, Any],
    where: str,
) -> StepResult:
    spec = step.paginate
    assert spec is not None
    pages: list[Any] = []
    items: list[Any] | None = [] if spec.items is not None else None
    page_log: list[dict[str, Any]] = []
    record["pages"] = page_log
    value = spec.first
    url = request.url({spec.param: str(value)} | _size(spec)) if spec.param else request.url()
    record["request"] = request.record(url)
    status: int | None = None
    headers: dict[str, str] = {}
    error: str | None = None
    stopped = "max_pages"
    for number in range(1, spec.max_pages + 1):
        answer, attempts = await _send_with_retries(sender, step, request, url, sleep)
        record["attempts"] += attempts
        status, headers = answer.status, answer.headers
        page_log.append({"url": url, "status": answer.status, "attempts": attempts})
        data, error = _interpret(answer, True)
        if error is not None:
            error = f"page {number}: {error}"
            stopped = "error"
            break
        pages.append(data)
        page_context = {**context, "response": StepResult(data=data, status=answer.status, headers=answer.headers), "page": number}
        try:
            if spec.items is not None:
                page_items = render_value(spec.items, page_context, where=where, field="paginate.items")
                if page_items is None:
                    page_items = []
                if not isinstance(page_items, list):
                    raise TemplateFailure(f"paginate.items must give a list, got {type(page_items).__name__}", where=where)
                assert items is not None
                items.extend(page_items)
                empty = not page_items
            else:
                empty = data is None or data == [] or data == {} or data == ""
            if empty:
                stopped = "empty"
                break
            following = _next_url(spec.next_url, page_context, url, where) if spec.next_url is not None else None
            if spec.next_url is not None and following is None:
                stopped = "no_next"
                break
            if number == spec.max_pages:
                break
            if following is not None:
                url = following
            else:
                value += spec.increment
                url = request.url({spec.param or "": str(value)} | _size(spec))
        except TemplateFailure as exc:
            error = exc.at(where).message
            stopped = "error"
            break
    record["stopped"] = stopped
    return StepResult(data=pages, status=status, headers=headers, items=items, pages=len(pages), ok=error is None, error=error)


def _size(spec: Any) -> dict[str, str]:
    return {spec.size_param: str(spec.size)} if spec.size_param and spec.size else {}


def _next_url(template: str, context: Mapping[str, Any], current: str, where: str) -> str | None:
    try:
        value = render_string(template, context, where=f"{where}, paginate.next_url")
    except TemplateFailure as exc:
        if exc.kind == "undefined":
            return None
        raise
    if value is None or value == "" or value is False:
        return None
    if not isinstance(value, str):
        raise TemplateFailure(f"paginate.next_url must give a URL, got {type(value).__name__}", where=where)
    following = urljoin(current, value.strip())
    if following == current:
        return None
    return _check_url(following, f"{where}, paginate.next_url")


# --- the run -------------------------------------------------------------------------------

async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def run_task(
    spec: TaskSpec,
    *,
    sender: HttpSender,
    params: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str] | None = None,
    view_rows: Callable[[str], list[dict[str, Any]]] | None = None,
    load_rows: Callable[[str, list[dict[str, Any]]], Awaitable[dict[str, Any]]] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = _sleep,
) -> RunResult:
    """Run ``spec``'s steps in order, then its load. Never raises for a failing step: the
    result says ``failed`` with the step and the reason. ``sleep`` waits between retries
    (tests pass a recorder)."""
    started_at = _now()
    started = time.monotonic()
    run_params = {**spec.params, **dict(params or {})}
    secret_box = Secrets(secrets or {})
    views = Views(view_rows)
    results: dict[str, StepResult] = {}
    records: list[dict[str, Any]] = []
    error: dict[str, Any] | None = None

    for step in spec.steps:
        if error is not None:
            records.append({"name": step.name, "outcome": "skipped", "request": None, "status": None, "data": None, "duration_ms": 0, "attempts": 0, "error": None})
            continue
        context = build_context(params=run_params, secrets=secret_box, views=views, steps=results)
        outcome = await _run_step(step, context, sender, sleep)
        results[step.name] = outcome.result
        records.append(outcome.record)
        if not outcome.result.ok and not step.continue_on_error:
            error = {"at": "step", "step": step.name, "reason": outcome.result.error}

    load_record: dict[str, Any] | None = None
    if spec.load is not None and error is None:
        load_record, load_error = await _load(spec, run_params, secret_box, views, results, load_rows)
        if load_error is not None:
            error = {"at": "load", "step": None, "reason": load_error}

    redactor = _Redactor(used_secret_values(secret_box))
    for derived in secret_derived_values(secret_box):
        # Text made from a secret but no longer holding it (encoded, changed case) is redacted whole;
        # text that holds it keeps the rest ("pw is ***"). Six characters or more: a short one (a
        # length, "7") would hide too much of the record.
        if not any(form in derived for form in redactor.values):
            redactor.add(derived)
    for rec in records:
        redactor.collect_request(rec.get("request"))
    for rec in records:
        rec["data"] = _cap(rec["data"], MAX_DATA_BYTES)
        if rec.get("request"):
            rec["request"]["body"] = _cap(rec["request"]["body"], MAX_BODY_BYTES)
    result = RunResult(
        status="failed" if error is not None else "succeeded",
        steps=redactor.redact(records),
        error=redactor.redact(error),
        load=redactor.redact(load_record),
        params=redactor.redact(run_params),
        started_at=started_at,
        finished_at=_now(),
        duration_ms=_elapsed_ms(started),
    )
    return result


async def _load(
    spec: TaskSpec,
    run_params: Mapping[str, Any],
    secrets: Secrets,
    views: Views,
    results: Mapping[str, StepResult],
    load_rows: Callable[[str, list[dict[str, Any]]], Awaitable[dict[str, Any]]] | None,
) -> tuple[dict[str, Any], str | None]:
    assert spec.load is not None
    record: dict[str, Any] = {"dataset": spec.load.dataset, "rows": 0}
    context = build_context(params=run_params, secrets=secrets, views=views, steps=results)
    try:
        rows = render_value(spec.load.rows, context, where="load", field="rows")
    except TemplateFailure as exc:
        return record, exc.message
    if isinstance(rows, dict):
        rows = [rows]
    if not isinstance(rows, list):
        return record, f"load, rows: expected a list of objects, got {type(rows).__name__}"
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            return record, f"load, rows: row {index} is a {type(row).__name__}, expected an object"
    record["rows"] = len(rows)
    if load_rows is None:
        return record, "load: loading into a dataset is not available here"
    try:
        answer = await load_rows(spec.load.dataset, rows)
    except PushbaseError as exc:
        return record, f"load into {spec.load.dataset!r}: {exc.message}"
    except Exception as exc:
        return record, f"load into {spec.load.dataset!r}: {type(exc).__name__}: {exc}"
    record.update(dict(answer or {}))
    status = record.get("status")
    if status in ("ErrorExit", "TerminatedExit"):
        return record, f"load job {record.get('jobId')} ended with {status}"
    return record, None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _cap(value: Any, limit: int) -> Any:
    if value is None:
        return None
    try:
        size = len(dumps_exact(value))
    except TypeError:
        return {"truncated": True, "bytes": None}
    if size > limit:
        return {"truncated": True, "bytes": size}
    return value


# --- redaction -----------------------------------------------------------------------------

_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_SENSITIVE_WORDS = frozenset({
    "authorization", "auth", "token", "secret", "password", "passwd", "pwd", "passphrase", "apikey",
    "cookie", "signature", "credential", "credentials", "session", "sessionid", "jwt", "bearer",
})
_SENSITIVE_PAIRS = frozenset({("api", "key"), ("private", "key"), ("access", "key"), ("client", "secret")})
_SCHEME = re.compile(r"^(?:bearer|basic|token|digest|apikey|api-key)\s+(.+)$", re.I)


def is_sensitive_name(name: str) -> bool:
    """Whether a header, query parameter or body field name looks like a credential."""
    words = [w.lower() for w in _WORD.findall(name)]
    if any(w in _SENSITIVE_WORDS for w in words):
        return True
    return any(pair in _SENSITIVE_PAIRS for pair in zip(words, words[1:]))


class _Redactor:
    def __init__(self, secret_values: list[str]) -> None:
        self.values: set[str] = set()
        for value in secret_values:
            self.add(value, min_length=1)

    def add(self, value: Any, *, min_length: int = 6) -> None:
        if not isinstance(value, str) or len(value) < min_length:
            return
        self.values.add(value)
        for form in (quote(value, safe=""), quote_plus(value), orjson.dumps(value).decode()[1:-1], base64.b64encode(value.encode()).decode()):
            if len(form) >= min_length:
                self.values.add(form)
        match = _SCHEME.match(value.strip())
        if match:
            self.add(match.group(1), min_length=min_length)

    def collect_request(self, request: Mapping[str, Any] | None) -> None:
        """Values sent as credentials are secrets for the whole record."""
        if not request:
            return
        for name, value in (request.get("headers") or {}).items():
            if is_sensitive_name(name):
                self.add(value)
        for name, value in parse_qsl(urlsplit(request.get("url") or "").query, keep_blank_values=True):
            if is_sensitive_name(name):
                self.add(value)
        self._collect_fields(request.get("body"))

    def _collect_fields(self, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                if isinstance(key, str) and is_sensitive_name(key) and isinstance(sub, str):
                    self.add(sub)
                else:
                    self._collect_fields(sub)
        elif isinstance(value, list):
            for sub in value:
                self._collect_fields(sub)

    def redact(self, value: Any) -> Any:
        ordered = sorted(self.values, key=len, reverse=True)
        return self._redact(value, ordered)

    def _redact(self, value: Any, ordered: list[str]) -> Any:
        if isinstance(value, str):
            for secret in ordered:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, sub in value.items():
                if isinstance(key, str) and is_sensitive_name(key) and isinstance(sub, str):
                    out[self._redact(key, ordered)] = REDACTED
                else:
                    out[self._redact(key, ordered) if isinstance(key, str) else key] = self._redact(sub, ordered)
            return out
        if isinstance(value, list):
            return [self._redact(sub, ordered) for sub in value]
        return value
