"""Jinja templates inside task steps: sandboxed, strict, expression-only and bounded.

Every string of a step (URL, header values, query parameters, JSON or form body, pagination
templates, the load's rows) may hold Jinja. The rules:

- Only ``{{ expression }}`` (and ``{# comments #}``) are allowed. Statements such as
  ``{% for %}``, ``{% set %}`` or ``{% macro %}`` are refused when the task is saved: without
  loops, assignments and recursion a template cannot run for long, and an inline
  ``{{ a if cond else b }}`` covers conditionals.
- A string that is exactly one ``{{ expression }}`` (surrounding whitespace allowed) yields the
  expression's value itself: a list, an object, a number. Any other string renders to text.
  A literal ``{{`` is written ``{{ '{{' }}``.
- Names: ``params`` (run parameters over the task's defaults), ``secrets`` (``secrets.NAME``),
  ``views`` (``views.NAME.rows``), each earlier step by its name (``login.data.token``,
  ``login.status``, ``login.headers``), and inside pagination templates ``response`` (the page
  just fetched) and ``page`` (its number, from 1). Globals are only ``range`` (at most 100,000
  items), ``dict`` and ``now()`` (the current UTC datetime).
- Undefined names and attributes fail (``StrictUndefined``); Jinja's sandbox refuses
  internals (``__class__``, ``mro``, function globals) and the immutable sandbox refuses
  changing lists and dicts in place.
- Sizes are bounded: one rendered string or string operation (``*``, ``~``, ``join``,
  ``replace``, padding, ``format``) at most :data:`MAX_TEXT` characters; one expression's value
  about :data:`MAX_VALUE` bytes of JSON; integer powers at most :data:`MAX_INT_BITS` bits.
  Only a vetted list of filters is available (no ``batch``, ``slice``, ``center``, ``indent``,
  ``wordwrap``, ``format``, ``random``...).

Every failure (syntax, undefined, sandbox, limit, anything raised while evaluating) becomes a
:class:`TemplateFailure` naming where it happened (``step 'fetch', headers.Authorization``).
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import functools
import re
import threading
import types
from dataclasses import dataclass, field
from string import Formatter
from typing import Any, Callable, Iterator, Mapping

import orjson
from jinja2 import Environment, meta, nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.environment import Template, TemplateExpression
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.filters import FILTERS
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

from ..errors import Invalid, PushbaseError
from ..exact_json import dumps_exact

__all__ = [
    "TemplateFailure",
    "StepResult",
    "Secrets",
    "Views",
    "Params",
    "build_context",
    "render_value",
    "render_string",
    "to_plain",
    "check_template_syntax",
    "template_names",
    "used_secret_values",
    "secret_derived_values",
    "is_template",
    "GLOBAL_NAMES",
    "MAX_TEXT",
    "MAX_VALUE",
    "MAX_INT_BITS",
]

#: Characters in one rendered string, or produced by one string operation.
MAX_TEXT = 4_000_000
#: Approximate JSON bytes of the value of one expression (for example the rows to load).
MAX_VALUE = 64_000_000
#: Bits of an integer produced by ``**``.
MAX_INT_BITS = 16_384

GLOBAL_NAMES = frozenset({"range", "dict", "now"})


class TemplateFailure(Invalid):
    """A template could not be compiled or evaluated.

    ``kind`` is one of ``syntax``, ``undefined``, ``forbidden`` (sandbox or statement),
    ``limit`` (a size bound) or ``error`` (anything else raised while evaluating).
    """

    code = "template_error"

    def __init__(self, reason: str, *, where: str = "", kind: str = "error") -> None:
        self.reason = reason
        self.where = where
        self.kind = kind
        super().__init__(f"{where}: {reason}" if where else reason, details={"where": where, "reason": reason, "kind": kind})

    def at(self, where: str) -> "TemplateFailure":
        """The same failure, located (keeps an existing location)."""
        return self if self.where or not where else TemplateFailure(self.reason, where=where, kind=self.kind)


class _Limit(SecurityError):
    """A size bound was hit."""


# --- sizes -------------------------------------------------------------------------------

_local = threading.local()
_SCALARS = (bool, float, type(None))


def _weight(value: Any, limit: int) -> int:
    """Approximate JSON size of ``value`` (every node counts at least 8), counting shared
    references each time. Raises :class:`_Limit` as soon as ``limit`` is passed, so the walk
    itself is bounded. During a render, the weights of large containers already measured are
    remembered (nothing can change them: the sandbox is immutable)."""
    cache: dict[int, tuple[Any, int]] | None = getattr(_local, "weights", None)
    if cache is not None and type(value) in (list, dict, tuple):
        known = cache.get(id(value))
        if known is not None and known[0] is value:
            if known[1] > limit:
                raise _Limit(f"value too large (over {limit:,} bytes)")
            return known[1]
    total = 0
    stack = [value]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str:
            total += 8 + len(item)
        elif kind is int:
            total += 8 if -(2**62) < item < 2**62 else 8 + item.bit_length() // 3
        elif kind in _SCALARS:
            total += 8
        elif kind is list or kind is tuple or kind is dict:
            if cache is not None and len(item) > 32:
                known = cache.get(id(item))
                if known is not None and known[0] is item:
                    total += known[1]
                    if total > limit:
                        break
                    continue
            total += 8
            if kind is dict:
                for key, sub in item.items():
                    push(key)
                    push(sub)
            else:
                extend(item)
        elif isinstance(item, str):
            total += 8 + len(item)
        elif isinstance(item, (bytes, bytearray)):
            total += 8 + len(item)
        elif isinstance(item, int):
            total += 8 + item.bit_length() // 3
        elif isinstance(item, dict):
            total += 8
            for key, sub in item.items():
                push(key)
                push(sub)
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 8
            extend(item)
        elif isinstance(item, range):
            total += 8 + 8 * len(item)
        elif isinstance(item, StepResult):
            total += 8
            extend((item.data, item.headers, item.items))
        else:
            total += 8
        if total > limit:
            break
    if total > limit:
        raise _Limit(f"value too large (over {limit:,} bytes)")
    if cache is not None and type(value) in (list, dict, tuple) and len(value) > 32:
        cache[id(value)] = (value, total)
    return total


def _materialize(iterable: Any, limit: int = MAX_VALUE) -> list[Any]:
    """A list of an iterator's items, refusing once their total size passes ``limit``."""
    out: list[Any] = []
    budget = limit
    for item in iterable:
        budget -= _weight(item, budget)
        out.append(item)
    return out


def _check_text(size: int) -> None:
    if size > MAX_TEXT:
        raise _Limit(f"text too long (over {MAX_TEXT:,} characters)")


_FORMAT_SPEC_NUMBER = re.compile(r"\d+")
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_format_string(fmt: str) -> None:
    """Refuse ``str.format`` specs with huge widths/precisions or nested fields."""
    for _, _, spec, _ in Formatter().parse(fmt):
        if not spec:
            continue
        if "{" in spec:
            raise _Limit("nested format fields are not allowed")
        for number in _FORMAT_SPEC_NUMBER.findall(spec):
            if len(number) > 7 or int(number) > MAX_TEXT:
                raise _Limit("format width or precision too large")


def _check_percent_string(fmt: str) -> None:
    for width, precision in _PERCENT_SPEC.findall(fmt):
        for number in (width, precision):
            if number == "*":
                raise _Limit("'*' widths are not allowed in % formatting")
            if number and (len(number) > 7 or int(number) > MAX_TEXT):
                raise _Limit("format width or precision too large")


# --- the environment --------------------------------------------------------------------

class _CodeGenerator(CodeGenerator):
    """Routes ``~`` through a size check (Jinja would call ``str()`` on each part unchecked)."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


class _TaskEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _CodeGenerator

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str) and isinstance(times, int) and times > 1:
                    _check_text(len(seq) * times)
                elif isinstance(seq, (list, tuple)) and isinstance(times, int) and times > 1:
                    if _weight(seq, MAX_VALUE) * times > MAX_VALUE:
                        raise _Limit(f"value too large (over {MAX_VALUE:,} bytes)")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if right * abs(left).bit_length() > MAX_INT_BITS:
                    raise _Limit(f"power too large (over {MAX_INT_BITS} bits)")
        elif operator == "%":
            if isinstance(left, str):
                _check_percent_string(left)
                _weight(right, MAX_TEXT)
        elif operator == "+":
            if isinstance(left, str) and isinstance(right, str):
                _check_text(len(left) + len(right))
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            _check_format_string(fmt)
            _weight([args, kwargs], MAX_TEXT)
            return wrapped(*args, **kwargs)

        return functools.update_wrapper(checked, wrapped)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Undefined):
            obj._fail_with_undefined_error()
        if isinstance(obj, StepResult) and attribute not in _STEP_FIELDS:
            return _no_step_field(attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, Undefined):
            obj._fail_with_undefined_error()
        if isinstance(obj, StepResult) and argument not in _STEP_FIELDS:
            return _no_step_field(argument)
        return super().getitem(obj, argument)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            if name in _PADDING_METHODS:
                width = args[0] if args else kwargs.get("width", 0)
                if isinstance(width, int):
                    _check_text(width)
            elif name == "expandtabs":
                size = args[0] if args else kwargs.get("tabsize", 8)
                if isinstance(size, int):
                    _check_text(len(owner) * max(size, 1))
            elif name == "join" and args:
                items = _materialize(args[0], MAX_TEXT)
                _check_text(_weight(items, MAX_TEXT) + len(owner) * len(items))
                args = (items, *args[1:])
            elif name == "replace" and len(args) >= 2:
                _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else -1)
        elif isinstance(owner, int) and name == "to_bytes":
            length = args[0] if args else kwargs.get("length", 1)
            if isinstance(length, int):
                _check_text(length)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, (str, list, tuple, dict, set, frozenset)):
            _weight(result, MAX_VALUE)
        elif isinstance(result, (types.GeneratorType, map, filter, zip, reversed)):
            result = _materialize(result)
        return result

    def checked_concat(self, parts: tuple[Any, ...]) -> str:
        _weight(list(parts), MAX_TEXT)
        text = "".join(str(part) for part in parts)
        _check_text(len(text))
        return text


def _check_replace(text: Any, old: Any, new: Any, count: Any) -> None:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    _check_text(len(text) + hits * max(len(new) - len(old), 0))


def _finalize(value: Any) -> Any:
    """Applied to every ``{{ }}`` output of a text template before ``str()``. An output whose
    expression read a secret is remembered for redaction on its own, so that in ``"{{ secrets.USER }}:
    {{ secrets.PW | upper }}"`` the upper-cased password is found, not only the whole string."""
    _weight(value, MAX_TEXT)
    secrets = getattr(_local, "secrets", None)
    if secrets is not None and secrets._reads != _local.secret_reads:
        _local.secret_reads = secrets._reads
        _note_derived(secrets, value if isinstance(value, str) else str(value))
    return value


# --- filters: a vetted list, each guarded ---------------------------------------------

def _guarded(name: str, func: Callable[..., Any], *, text: bool = False) -> Callable[..., Any]:
    @functools.wraps(func)
    def guard(*args: Any, **kwargs: Any) -> Any:
        if text:
            _weight([a for a in args if not _is_jinja_internal(a)] + [kwargs], MAX_TEXT)
        result = func(*args, **kwargs)
        if isinstance(result, (types.GeneratorType, map, filter, zip, reversed)) or type(result).__name__.endswith("iterator"):
            return _materialize(result)
        if isinstance(result, (str, list, tuple, dict)):
            _weight(result, MAX_TEXT if text else MAX_VALUE)
        return result

    guard.__name__ = f"guarded_{name}"
    return guard


def _is_jinja_internal(value: Any) -> bool:
    return isinstance(value, (EvalContext, Context, Environment))


def _filter_join(value: Any, d: Any = "", attribute: Any = None) -> str:
    items = _materialize(value, MAX_TEXT)
    if attribute is not None:
        items = [_ENV.getattr(item, attribute) if isinstance(attribute, str) else _ENV.getitem(item, attribute) for item in items]
    sep = str(d)
    _check_text(_weight(items, MAX_TEXT) + len(sep) * len(items))
    return sep.join(str(item) for item in items)


def _filter_replace(value: Any, old: Any, new: Any, count: Any = None) -> str:
    text, old, new = str(value), str(old), str(new)
    _check_replace(text, old, new, -1 if count is None else count)
    return text.replace(old, new, -1 if count is None else count)


def _filter_tojson(value: Any) -> str:
    return dumps_exact(to_plain(value)).decode()


def _filter_b64encode(value: Any) -> str:
    data = value if isinstance(value, bytes) else str(value).encode()
    return base64.b64encode(data).decode()


def _filter_number(name: str) -> Callable[..., Any]:
    base = FILTERS[name]

    @functools.wraps(base)
    def number(value: Any, default: Any = 0, *args: Any, **kwargs: Any) -> Any:
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            raise TypeError(f"{name}(): the default must be a number")
        return base(value, default, *args, **kwargs)

    return number


def _filter_sum(*args: Any, **kwargs: Any) -> Any:
    start = kwargs.get("start", args[3] if len(args) > 3 else 0)
    if isinstance(start, bool) or not isinstance(start, (int, float)):
        raise TypeError("sum(): start must be a number")
    return FILTERS["sum"](*args, **kwargs)


functools.update_wrapper(_filter_sum, FILTERS["sum"], assigned=(), updated=("__dict__",))

_PLAIN_FILTERS = (
    "abs", "attr", "count", "d", "default", "dictsort", "filesizeformat", "first", "groupby",
    "items", "last", "length", "list", "map", "max", "min", "reject", "rejectattr", "reverse",
    "round", "select", "selectattr", "sort", "unique",
)
_TEXT_FILTERS = ("capitalize", "lower", "string", "title", "trim", "truncate", "upper", "urlencode", "wordcount")


def _filters() -> dict[str, Callable[..., Any]]:
    table: dict[str, Callable[..., Any]] = {}
    for name in _PLAIN_FILTERS:
        table[name] = _guarded(name, FILTERS[name])
    for name in _TEXT_FILTERS:
        table[name] = _guarded(name, FILTERS[name], text=True)
    table["int"] = _guarded("int", _filter_number("int"))
    table["float"] = _guarded("float", _filter_number("float"))
    table["sum"] = _guarded("sum", _filter_sum)
    table["join"] = _guarded("join", _filter_join, text=True)
    table["replace"] = _guarded("replace", _filter_replace, text=True)
    table["tojson"] = _guarded("tojson", _filter_tojson, text=True)
    table["b64encode"] = _guarded("b64encode", _filter_b64encode, text=True)
    return table


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _dict(**kwargs: Any) -> dict[str, Any]:
    return dict(kwargs)


def _make_env() -> _TaskEnvironment:
    env = _TaskEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        finalize=_finalize,
        keep_trailing_newline=True,
        line_statement_prefix=None,
        line_comment_prefix=None,
    )
    env.globals.clear()
    env.globals.update({"range": safe_range, "dict": _dict, "now": _now})
    env.filters = _filters()
    return env


_ENV = _make_env()


# --- compiling ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Compiled:
    native: bool
    template: Template
    names: frozenset[str]


_MARKERS = ("{{", "{%", "{#")


def is_template(text: str) -> bool:
    """Whether a string holds Jinja markup at all (plain strings are used as they are)."""
    return any(marker in text for marker in _MARKERS)


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> _Compiled:
    try:
        return _compile_checked(source)
    except TemplateSyntaxError as exc:  # also TemplateAssertionError: an unknown filter or test
        raise TemplateFailure(f"template syntax error: {exc.message}", kind="syntax") from None


def _compile_checked(source: str) -> _Compiled:
    tree = _ENV.parse(source)
    for stmt in tree.find_all(nodes.Stmt):
        if not isinstance(stmt, nodes.Output):
            raise TemplateFailure(
                "statements ({% ... %}) are not allowed in task templates; use {{ expressions }}, "
                "e.g. {{ a if condition else b }}",
                kind="forbidden",
            )
    for name in tree.find_all(nodes.Name):
        if name.name == "self":
            raise TemplateFailure("'self' is not available in task templates", kind="forbidden")
    names = frozenset(meta.find_undeclared_variables(tree))
    if len(tree.body) == 1 and isinstance(tree.body[0], nodes.Output):
        parts = [n for n in tree.body[0].nodes if not (isinstance(n, nodes.TemplateData) and not n.data.strip())]
        if len(parts) == 1 and not isinstance(parts[0], nodes.TemplateData):
            body = [nodes.Assign(nodes.Name("result", "store"), parts[0], lineno=1)]
            return _Compiled(True, _ENV.from_string(nodes.Template(body, lineno=1)), names)
    return _Compiled(False, _ENV.from_string(tree), names)


def _walk_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, sub in value.items():
            key_path = _field(path, str(key))
            yield from _walk_strings(key, key_path)
            yield from _walk_strings(sub, key_path)
    elif isinstance(value, (list, tuple)):
        for index, sub in enumerate(value):
            yield from _walk_strings(sub, f"{path}[{index}]")


def _field(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _where(where: str, field_path: str) -> str:
    if where and field_path:
        return f"{where}, {field_path}"
    return where or field_path


def check_template_syntax(value: Any, *, where: str = "", field: str = "") -> set[str]:
    """Compile every template string in ``value`` (definition-time check).

    Returns the names the templates read (``params``, ``login``...). Raises
    :class:`TemplateFailure` naming the field of the first bad template.
    """
    names: set[str] = set()
    for path, text in _walk_strings(value, field):
        if not is_template(text):
            continue
        try:
            names |= _compile(text).names
        except TemplateFailure as exc:
            raise exc.at(_where(where, path)) from None
    return names


def template_names(value: Any) -> set[str]:
    """The names the templates in ``value`` read; bad templates are ignored here."""
    names: set[str] = set()
    for _, text in _walk_strings(value, ""):
        if is_template(text):
            try:
                names |= _compile(text).names
            except TemplateFailure:
                pass
    return names


# --- rendering ----------------------------------------------------------------------------

def render_value(value: Any, context: Mapping[str, Any], *, where: str = "", field: str = "") -> Any:
    """Render every string inside ``value`` (dict keys render as text, values may be native).

    ``where`` and ``field`` only name the place in error messages
    (``step 'fetch'`` and ``headers.Authorization``).
    """
    if isinstance(value, str):
        return render_string(value, context, where=_where(where, field))
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            key_path = _field(field, str(key))
            rendered_key = render_string(key, context, where=_where(where, key_path), text=True) if isinstance(key, str) else key
            out[rendered_key] = render_value(sub, context, where=where, field=key_path)
        return out
    if isinstance(value, (list, tuple)):
        return [render_value(sub, context, where=where, field=f"{field}[{index}]") for index, sub in enumerate(value)]
    return value


def render_string(source: str, context: Mapping[str, Any], *, where: str = "", text: bool = False) -> Any:
    """Render one string; an exact ``{{ expression }}`` gives its value unless ``text``."""
    if not is_template(source):
        return source
    secrets = context.get("secrets")
    if not isinstance(secrets, Secrets):
        return _render_string(source, context, where=where, text=text)
    reads = secrets._reads
    saved = getattr(_local, "secrets", None), getattr(_local, "secret_reads", 0)
    _local.secrets, _local.secret_reads = secrets, reads  # for _finalize: each output on its own
    try:
        rendered = _render_string(source, context, where=where, text=text)
    finally:
        _local.secrets, _local.secret_reads = saved
    if secrets._reads != reads:
        _note_derived(secrets, rendered)
    return rendered


def _render_string(source: str, context: Mapping[str, Any], *, where: str, text: bool) -> Any:
    outer = getattr(_local, "weights", None) is None
    if outer:
        _local.weights = {}
    try:
        compiled = _compile(source)
        if compiled.native:
            value = TemplateExpression(compiled.template, undefined_to_none=False)(**context)
            if not text:
                return to_plain(value)
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()
            rendered = str(_finalize(value))
            _check_text(len(rendered))
            return rendered
        pieces: list[str] = []
        size = 0
        for piece in compiled.template.generate(**context):
            size += len(piece)
            _check_text(size)
            pieces.append(piece)
        return "".join(pieces)
    except TemplateFailure as exc:
        raise exc.at(where) from None
    except _Limit as exc:
        raise TemplateFailure(f"limit reached: {exc}", where=where, kind="limit") from None
    except SecurityError as exc:
        raise TemplateFailure(f"not allowed: {exc}", where=where, kind="forbidden") from None
    except UndefinedError as exc:
        raise TemplateFailure(exc.message or "undefined value", where=where, kind="undefined") from None
    except TemplateSyntaxError as exc:
        raise TemplateFailure(f"template syntax error: {exc.message}", where=where, kind="syntax") from None
    except PushbaseError as exc:
        raise TemplateFailure(exc.message, where=where) from None
    except RecursionError:
        raise TemplateFailure("value nested too deeply", where=where, kind="limit") from None
    except MemoryError:
        raise TemplateFailure("out of memory", where=where, kind="limit") from None
    except Exception as exc:  # anything the expression itself raised: TypeError, ZeroDivisionError...
        raise TemplateFailure(f"{type(exc).__name__}: {exc}", where=where) from None
    finally:
        if outer:
            _local.weights = None


def to_plain(value: Any) -> Any:
    """The JSON value of an expression's result (tuples and ranges become lists, datetimes
    ISO strings, step results ``{data, status, headers}``); refuses undefined values, values
    that are not JSON and values over :data:`MAX_VALUE`."""
    _weight(value, MAX_VALUE)
    return _plain(value)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, dict):
        return {_plain_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, range, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, StepResult):
        return {"data": _plain(value.data), "status": value.status, "headers": _plain(value.headers)}
    if isinstance(value, (type({}.keys()), type({}.values()), type({}.items()))):
        return [_plain(v) for v in value]
    raise TypeError(f"the expression gives a {type(value).__name__}, which is not a JSON value")


def _plain_key(key: Any) -> str:
    if isinstance(key, str):
        return str(key)
    if key is None or isinstance(key, (bool, int, float)):
        return dumps_exact(key).decode()
    if isinstance(key, Undefined):
        key._fail_with_undefined_error()
    raise TypeError(f"an object key must be a string, not {type(key).__name__}")


# --- what templates see ------------------------------------------------------------------

@dataclass
class StepResult:
    """One finished step as templates see it: ``.data`` (the parsed JSON answer; for a paged
    step the list of every page's answer), ``.items`` (paged steps with an ``items`` template:
    every page's items, concatenated), ``.status``, ``.headers`` (lower-case names),
    ``.pages``, ``.ok`` and ``.error``."""

    data: Any = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    items: list[Any] | None = None
    pages: int | None = None
    ok: bool = True
    error: str | None = None


_STEP_FIELDS = tuple(f.name for f in dataclasses.fields(StepResult))


def _no_step_field(name: Any) -> Undefined:
    # Jinja's own message would name our class ('...StepResult object' has no attribute 'token').
    return StrictUndefined(hint=f"a step has no {name!r}: it has {', '.join(_STEP_FIELDS)} "
                                f"(the answer's fields are under data, e.g. step.data.{name})")


class Params(dict):  # type: ignore[type-arg]
    """Run parameters; a missing one is an undefined value with a clear message."""

    def __missing__(self, key: Any) -> Any:
        return StrictUndefined(hint=f"run parameter {key!r} is not set (pass it in the run's params or give the task a default)")


class Secrets:
    """``secrets.NAME`` in templates. Remembers every value it handed out so the runner can
    redact them; it cannot be listed, printed or turned into JSON."""

    __slots__ = ("_values", "_used", "_reads", "_derived")

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self._used: dict[str, str] = {}
        self._reads = 0
        # What templates that read a secret made of it (``"Basic " ~ (user ~ ":" ~ secrets.PW) | b64encode``):
        # no encoding of the secret alone would find it in the record.
        self._derived: list[str] = []

    def __getitem__(self, name: Any) -> Any:
        if isinstance(name, str) and name in self._values:
            value = self._values[name]
            self._used[name] = value
            self._reads += 1
            return value
        return StrictUndefined(hint=f"secret {name!r} is not set (set the environment variable PUSHBASE_SECRET_{name} for the process that runs the task)")

    def __contains__(self, name: Any) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        raise TypeError("secrets cannot be listed")

    def __repr__(self) -> str:
        return "<secrets>"

    __str__ = __repr__


def used_secret_values(secrets: Secrets) -> list[str]:
    """The values of the secrets that templates read so far."""
    return list(secrets._used.values())


def secret_derived_values(secrets: Secrets) -> list[str]:
    """The text that templates made from secrets so far (each rendered string that read one)."""
    return list(secrets._derived)


def _note_derived(secrets: Secrets, value: Any) -> None:
    if isinstance(value, str):
        secrets._derived.append(value)
    elif isinstance(value, dict):
        for key, sub in value.items():
            _note_derived(secrets, key)
            _note_derived(secrets, sub)
    elif isinstance(value, (list, tuple)):
        for sub in value:
            _note_derived(secrets, sub)


class _View:
    __slots__ = ("_name", "_views")

    def __init__(self, name: str, views: "Views") -> None:
        self._name = name
        self._views = views

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self._views._rows(self._name)

    def __repr__(self) -> str:
        return f"<view {self._name}>"


class Views:
    """``views.NAME.rows``: calls ``view_rows(NAME)`` the first time, then reuses the rows."""

    __slots__ = ("_fetch", "_cache")

    def __init__(self, view_rows: Callable[[str], list[dict[str, Any]]] | None) -> None:
        self._fetch = view_rows
        self._cache: dict[str, list[dict[str, Any]]] = {}

    def __getitem__(self, name: Any) -> Any:
        if not isinstance(name, str):
            return StrictUndefined(hint=f"no view named {name!r}")
        return _View(name, self)

    def __iter__(self) -> Iterator[str]:
        raise TypeError("views cannot be listed")

    def __repr__(self) -> str:
        return "<views>"

    def _rows(self, name: str) -> list[dict[str, Any]]:
        if name not in self._cache:
            if self._fetch is None:
                raise TemplateFailure("views are not available here")
            try:
                rows = self._fetch(name)
            except PushbaseError as exc:
                raise TemplateFailure(f"view {name!r}: {exc.message}") from None
            self._cache[name] = list(rows)
        return self._cache[name]


def build_context(
    *,
    params: Mapping[str, Any],
    secrets: Secrets,
    views: Views,
    steps: Mapping[str, StepResult],
) -> dict[str, Any]:
    """The names a step's templates see: earlier steps, ``params``, ``secrets``, ``views``."""
    context: dict[str, Any] = dict(steps)
    context.update({"params": Params(params), "secrets": secrets, "views": views})
    return context
