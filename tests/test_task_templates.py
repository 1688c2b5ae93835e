"""Task templates: native values, the names templates see, the sandbox and its size bounds."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from pushbase.errors import Invalid
from pushbase.tasks import Secrets, StepResult, TemplateFailure, Views, build_context, check_template_syntax, render_value
from pushbase.tasks.templates import MAX_TEXT, render_string, to_plain, used_secret_values


def make_context(*, secrets: dict[str, str] | None = None, view_rows: Any = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
    steps = {
        "login": StepResult(data={"token": "tok-1"}, status=200, headers={"x-request-id": "r1"}),
        "api_call_1": StepResult(data={"results": [{"id": 7, "name": "a"}, {"id": 8, "name": "b"}], "count": 2}, status=200),
    }
    return build_context(
        params=params if params is not None else {"x": 3, "base": "EUR"},
        secrets=Secrets(secrets or {"API_PW": "pw-very-secret"}),
        views=Views(view_rows),
        steps=steps,
    )


def fails(source: Any, context: dict[str, Any] | None = None, **kw: Any) -> TemplateFailure:
    with pytest.raises(TemplateFailure) as info:
        render_value(source, context if context is not None else make_context(), **kw)
    return info.value


# --- values -------------------------------------------------------------------------------

def test_exact_expression_yields_the_value_itself() -> None:
    ctx = make_context()
    assert render_value("{{ api_call_1.data.results }}", ctx) == [{"id": 7, "name": "a"}, {"id": 8, "name": "b"}]
    assert render_value("{{ api_call_1.data.results[0] }}", ctx) == {"id": 7, "name": "a"}
    assert render_value("{{ api_call_1.data.count }}", ctx) == 2
    assert render_value("  {{ params.x }}\n", ctx) == 3
    assert render_value("{{ login.status }}", ctx) == 200
    assert render_value("{{ login.headers['x-request-id'] }}", ctx) == "r1"
    assert render_value("{{ none }}", ctx) is None
    assert render_value("{{ true }}", ctx) is True


def test_mixed_text_renders_to_a_string() -> None:
    ctx = make_context()
    assert render_value("Bearer {{ login.data.token }}", ctx) == "Bearer tok-1"
    assert render_value("{{ params.x }}{{ params.x }}", ctx) == "33"
    assert render_value("{{ params.x }} and {{ params.base }}", ctx) == "3 and EUR"
    assert render_value("n={{ api_call_1.data.count }}", ctx) == "n=2"


def test_render_value_walks_dicts_and_lists_and_leaves_the_rest() -> None:
    ctx = make_context()
    value = {
        "user": "u",
        "token": "{{ login.data.token }}",
        "ids": ["{{ api_call_1.data.results[0].id }}", 5, None, True],
        "nested": {"{{ params.base }}_key": "{{ params.x * 2 }}"},
        "braces": "{not a template}",
    }
    assert render_value(value, ctx) == {
        "user": "u",
        "token": "tok-1",
        "ids": [7, 5, None, True],
        "nested": {"EUR_key": 6},
        "braces": "{not a template}",
    }


def test_expression_results_become_json_values() -> None:
    ctx = make_context()
    assert render_value("{{ range(3) }}", ctx) == [0, 1, 2]
    assert render_value("{{ (1, 2) }}", ctx) == [1, 2]
    assert render_value("{{ dict(a=1) }}", ctx) == {"a": 1}
    assert render_value("{{ api_call_1.data.results | map(attribute='id') | list }}", ctx) == [7, 8]
    assert render_value("{{ api_call_1.data.results | map(attribute='id') }}", ctx) == [7, 8]
    assert render_value("{{ login }}", ctx) == {"data": {"token": "tok-1"}, "status": 200, "headers": {"x-request-id": "r1"}}
    assert render_value("{{ params }}", ctx) == {"x": 3, "base": "EUR"}
    assert isinstance(render_value("{{ now() }}", ctx), str)
    assert to_plain(dt.date(2024, 1, 2)) == "2024-01-02"
    assert render_value("{{ api_call_1.data | tojson }}", ctx) == '{"results":[{"id":7,"name":"a"},{"id":8,"name":"b"}],"count":2}'
    assert render_value("{{ 'u:p' | b64encode }}", ctx) == "dTpw"
    assert "not a JSON value" in fails("{{ secrets }}").message
    assert "not a JSON value" in fails("{{ views }}").message


def test_a_trailing_newline_is_kept() -> None:
    assert render_value("a{{ params.x }}\n", make_context()) == "a3\n"


# --- names --------------------------------------------------------------------------------

def test_secrets_are_read_and_remembered_for_redaction() -> None:
    secrets = Secrets({"API_PW": "pw-very-secret", "OTHER": "unused-value"})
    ctx = build_context(params={}, secrets=secrets, views=Views(None), steps={})
    assert render_value({"password": "{{ secrets.API_PW }}"}, ctx) == {"password": "pw-very-secret"}
    assert used_secret_values(secrets) == ["pw-very-secret"]
    assert render_value("{{ 'API_PW' in secrets }}", ctx) is True


def test_secrets_cannot_be_listed_printed_or_reached_through_internals() -> None:
    ctx = make_context()
    assert render_value("x{{ secrets }}", ctx) == "x<secrets>"
    assert "cannot be listed" in fails("{{ secrets | list }}").message
    assert fails("{{ secrets._values }}").kind == "forbidden"
    assert fails("{{ secrets['_values'] }}").kind in ("forbidden", "undefined")


def test_a_missing_secret_says_where_secrets_come_from() -> None:
    failure = fails("{{ secrets.NOPE }}", where="step 'login'", field="json.password")
    assert failure.kind == "undefined"
    assert failure.message == "step 'login', json.password: secret 'NOPE' is not set (set the environment variable PUSHBASE_SECRET_NOPE for the process that runs the task)"
    assert isinstance(failure, Invalid)


def test_a_missing_param_fails_clearly() -> None:
    failure = fails({"q": "{{ params.nope }}"}, where="step 'fetch'", field="params")
    assert failure.message == "step 'fetch', params.q: run parameter 'nope' is not set (pass it in the run's params or give the task a default)"
    assert render_value("{{ params.nope | default('d') }}", make_context()) == "d"
    assert render_value("{{ params.nope is defined }}", make_context()) is False


def test_undefined_names_and_attributes_fail_strictly() -> None:
    assert fails("{{ logn.data }}").message == "'logn' is undefined"
    assert fails("x {{ login.data.nope }}", where="step 's'", field="url").message == "step 's', url: 'dict object' has no attribute 'nope'"
    assert fails("{{ [login.data.nope] }}").kind == "undefined"
    assert fails("{{ login.data.nope ~ '' }}").kind == "undefined"
    assert fails("{{ api_call_1.data.results[5] }}").kind == "undefined"
    # A step's result names what it has, not an internal class ('...StepResult object').
    assert fails("{{ login.token }}", where="step 'fetch'", field="headers.Authorization").message == (
        "step 'fetch', headers.Authorization: a step has no 'token': it has data, status, headers, items, pages, ok, error "
        "(the answer's fields are under data, e.g. step.data.token)")
    assert "a step has no 'token'" in fails("{{ login['token'] }}").message
    assert render_value("{{ login.token | default('none') }}", make_context()) == "none"


def test_views_are_fetched_lazily_once_per_run() -> None:
    calls: list[str] = []

    def view_rows(name: str) -> list[dict[str, Any]]:
        calls.append(name)
        return [{"order_id": 1}, {"order_id": 2}]

    ctx = make_context(view_rows=view_rows)
    assert render_value("{{ params.x }}", ctx) == 3
    assert calls == []
    assert render_value("{{ views.orders_to_push.rows }}", ctx) == [{"order_id": 1}, {"order_id": 2}]
    assert render_value("{{ views['orders_to_push'].rows | length }}", ctx) == 2
    assert calls == ["orders_to_push"]


def test_views_without_a_source_or_failing_fail_the_template() -> None:
    assert "views are not available" in fails("{{ views.x.rows }}").message
    from pushbase.errors import NotFound

    def missing(name: str) -> list[dict[str, Any]]:
        raise NotFound(f"no view named {name!r}")

    failure = fails("{{ views.x.rows }}", make_context(view_rows=missing), where="step 'a'", field="json")
    assert failure.message == "step 'a', json: view 'x': no view named 'x'"


# --- definition-time checks ---------------------------------------------------------------

def test_check_template_syntax_returns_names_and_names_the_bad_field() -> None:
    names = check_template_syntax({"url": "https://x/{{ params.a }}", "h": {"Authorization": "Bearer {{ login.data.token }}"}})
    assert names == {"params", "login"}
    with pytest.raises(TemplateFailure) as info:
        check_template_syntax({"headers": {"A": "{{ oops }", "B": "x"}}, where="step 'a'")
    assert info.value.kind == "syntax"
    assert info.value.message.startswith("step 'a', headers.A: template syntax error")


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(10) %}x{% endfor %}",
        "{% set x = 1 %}{{ x }}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "{% if true %}x{% endif %}",
        "{% include 'other' %}",
        "{% import 'os' as os %}",
    ],
)
def test_statements_are_refused(source: str) -> None:
    with pytest.raises(TemplateFailure) as info:
        check_template_syntax(source)
    assert info.value.kind == "forbidden"
    assert "statements" in info.value.message
    assert fails(source).kind == "forbidden"


@pytest.mark.parametrize("name", ["batch", "slice", "center", "indent", "wordwrap", "format", "random", "pprint", "xmlattr", "safe", "urlize"])
def test_risky_filters_do_not_exist(name: str) -> None:
    with pytest.raises(TemplateFailure) as info:
        check_template_syntax("{{ [1, 2] | %s(10) }}" % name)
    assert f"No filter named '{name}'" in info.value.message


# --- the sandbox --------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "x{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ self }}",
    "{{ self._TemplateReference__context }}",
    "{{ config }}",
    "{{ config.items() }}",
    "{{ request.application.__globals__ }}",
    "{{ range.__globals__ }}",
    "{{ now.__globals__ }}",
    "{{ dict.__globals__ }}",
    "{{ now().__class__.__mro__ }}",
    "{{ login.__dict__ }}",
    "{{ login.__class__.__init__.__globals__ }}",
    "{{ login.data.__class__.__subclasses__() }}",
    "{{ params.__class__.mro() }}",
    "{{ ''.format.__self__ }}",
    "{{ '{0.__class__}'.format('') }}",
    "{{ '{0.__class__.__mro__}'.format(login) }}",
    "{{ login.data.token.__len__() }}",
    "{{ api_call_1.data.results.append(1) }}",
    "{{ api_call_1.data.results.pop() }}",
    "{{ api_call_1.data.update(a=1) }}",
    "{{ (1).__class__.__bases__[0].__subclasses__() }}",
    "{{ views._fetch }}",
    "{{ views.x._views }}",
    "{{ getattr }}",
    "{{ __import__('os') }}",
    "{{ ''|attr('__class__') }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escapes_fail_cleanly(source: str, tmp_path: Path) -> None:
    failure = fails(source, where="step 'x'", field="url")
    assert failure.kind in ("forbidden", "undefined", "error")
    assert failure.message.startswith("step 'x', url: ")
    assert failure.details["where"] == "step 'x', url"


def test_nothing_runs_through_an_escape_attempt(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        "{{ ''.__class__.__mro__[1].__subclasses__()[0].__init__.__globals__['os'].system('touch %s') }}" % marker,
        "{{ cycler.__init__.__globals__.os.system('touch %s') }}" % marker,
        "{{ lipsum.__globals__.os.popen('touch %s') }}" % marker,
        "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch %s') }}" % marker,
    ]
    for payload in payloads:
        fails(payload)
    assert not marker.exists()


BOMBS = [
    "{{ range(10**9) }}",
    "{{ range(10**9) | list | length }}",
    "{{ 'a' * 10**9 }}",
    "{{ 10**9 * 'a' }}",
    "x{{ 'a' * 10**9 }}",
    "{{ [1] * 10**9 }}",
    "{{ [range(100000) | list] * 100000 }}",
    "{{ 10 ** 100000 }}",
    "{{ 'a'.ljust(10**9) }}",
    "{{ 'a'.center(10**9) }}",
    "{{ '1'.zfill(10**9) }}",
    "{{ ('\t' * 1000).expandtabs(10**6) }}",
    "{{ (10).to_bytes(10**9, 'big') }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{:{}}'.format(1, 10**9) }}",
    "{{ '%999999999d' % 1 }}",
    "{{ '%*d' % (10**9, 1) }}",
    "{{ ('a' * 3000000) ~ ('a' * 3000000) }}",
    "{{ ('a' * 3000000) + ('a' * 3000000) }}",
    "{{ range(100000) | join('x' * 100000) }}",
    "{{ ('x' * 100000).join(range(100000) | map('string')) }}",
    "{{ 'ab' | replace('', 'x' * 3000000) }}",
    "{{ ('a' * 1000000).replace('a', 'bbbbbbbbbb') }}",
    "{{ range(100000) | map('attr', 'x') | map('default', range(100000) | list) | list }}",
    "{{ {}.fromkeys(range(100000), range(100000) | list) }}",
    "{{ ('x' * 100000) | list | map('int', range(100000) | list) | list }}",
    "{{ range(100000) | list | sum(start=[]) }}",
]


@pytest.mark.parametrize("source", BOMBS)
def test_resource_bombs_fail_cleanly(source: str) -> None:
    failure = fails(source)
    assert failure.kind in ("limit", "error")
    assert len(failure.message) < 500


def test_sizes_below_the_bounds_work() -> None:
    ctx = make_context()
    assert len(render_value("{{ 'a' * 1000 }}", ctx)) == 1000
    assert render_value("{{ [0] * 3 }}", ctx) == [0, 0, 0]
    assert render_value("{{ range(100000) | list | length }}", ctx) == 100000
    assert render_value("{{ 2 ** 64 }}", ctx) == 2**64
    assert render_value("{{ '{:>5}'.format(1) }}", ctx) == "    1"
    assert render_value("{{ '%05d' % 42 }}", ctx) == "00042"
    assert render_value("{{ [1, 2, 3] | join(',') }}", ctx) == "1,2,3"
    assert render_value("{{ 'a-b' | replace('-', '+') }}", ctx) == "a+b"
    assert len(render_value("x{{ 'a' * %d }}" % (MAX_TEXT // 2), ctx)) == MAX_TEXT // 2 + 1
    assert render_value("{{ api_call_1.data.results | sum(attribute='id') }}", ctx) == 15


def test_other_evaluation_errors_become_template_failures() -> None:
    assert fails("{{ 1 / 0 }}").message == "ZeroDivisionError: division by zero"
    assert fails("{{ 'a' + 1 }}").kind == "error"
    assert fails("{{ x").kind == "syntax"
    assert fails("{{ x }").kind == "syntax"


def test_render_string_text_mode_never_gives_native_values() -> None:
    assert render_string("{{ params.x }}", make_context(), text=True) == "3"
