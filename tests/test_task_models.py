"""Task definitions: what POST /api/tasks accepts and the errors (422) it gives otherwise."""
from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pushbase.errors import Invalid
from pushbase.tasks import Method, TaskSpec
from pushbase.tasks.store import parse_spec


def design_example() -> dict[str, Any]:
    """The POST /api/tasks example of DESIGN.md."""
    return {
        "name": "sync_rates",
        "steps": [
            {"name": "login", "method": "POST", "url": "https://api.example/login", "json": {"user": "u", "password": "{{ secrets.API_PW }}"}},
            {
                "name": "fetch",
                "method": "GET",
                "url": "https://api.example/rates",
                "params": {"base": "EUR"},
                "headers": {"Authorization": "Bearer {{ login.data.token }}"},
            },
        ],
        "load": {"dataset": "rates", "rows": "{{ fetch.data.results }}"},
        "schedule": "*/15 * * * *",
    }


def invalid(body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        TaskSpec.model_validate(body)
    return str(info.value)


def with_step(**step: Any) -> dict[str, Any]:
    return {"name": "t", "steps": [{"name": "s", "url": "https://api.example/x", **step}]}


def test_the_design_example_is_accepted_with_defaults() -> None:
    spec = TaskSpec.model_validate(design_example())
    login, fetch = spec.steps
    assert login.method is Method.POST and login.json_body == {"user": "u", "password": "{{ secrets.API_PW }}"}
    assert fetch.method is Method.GET
    assert (fetch.timeout, fetch.retries, fetch.retry_backoff, fetch.expect_json, fetch.continue_on_error) == (30.0, 0, 1.0, True, False)
    assert spec.load is not None and spec.load.dataset == "rates"
    assert spec.schedule == "*/15 * * * *" and spec.enabled and spec.params == {}
    dumped = spec.model_dump(by_alias=True, mode="json")
    assert dumped["steps"][0]["json"] == {"user": "u", "password": "{{ secrets.API_PW }}"}
    assert TaskSpec.model_validate(dumped) == spec


def test_methods_durations_and_pagination_forms() -> None:
    spec = TaskSpec.model_validate(
        with_step(method="patch", timeout="2m", retry_backoff="500ms", retries=10, paginate={"page_param": "page", "size": 50, "size_param": "per_page"})
    )
    step = spec.steps[0]
    assert step.method is Method.PATCH and step.timeout == 120.0 and step.retry_backoff == 0.5
    assert step.paginate is not None
    assert (step.paginate.mode, step.paginate.first, step.paginate.increment, step.paginate.max_pages) == ("page", 1, 1, 10)
    offset = TaskSpec.model_validate(with_step(paginate={"offset_param": "offset", "size": 100})).steps[0].paginate
    assert offset is not None and (offset.mode, offset.first, offset.increment) == ("offset", 0, 100)
    nxt = TaskSpec.model_validate(with_step(paginate={"next_url": "{{ response.data.next }}", "items": "{{ response.data.results }}", "max_pages": 1000}))
    assert nxt.steps[0].paginate is not None and nxt.steps[0].paginate.mode == "next_url"
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        assert TaskSpec.model_validate(with_step(method=method)).steps[0].method.value == method


@pytest.mark.parametrize(
    "body, message",
    [
        ({**design_example(), "name": "sync rates"}, "String should match pattern"),
        ({**design_example(), "name": "1sync"}, "String should match pattern"),
        ({**design_example(), "steps": []}, "at least 1 item"),
        ({**design_example(), "schedule": "every 15 minutes"}, "not a valid cron expression"),
        ({**design_example(), "unknown": 1}, "Extra inputs are not permitted"),
        (with_step(method="HEAD"), "'GET', 'POST', 'PUT', 'PATCH' or 'DELETE'"),
        (with_step(url="ftp://x/y"), "url must be an http:// or https:// URL"),
        (with_step(url="not a url"), "url must be an http:// or https:// URL"),
        (with_step(json={"a": 1}, form={"b": 2}), "either a json body or a form body"),
        (with_step(timeout="5x"), "cannot read '5x' as a duration"),
        (with_step(timeout=0), "timeout must be more than 0"),
        (with_step(timeout="2h"), "at most 600 seconds"),
        (with_step(retries=11), "less than or equal to 10"),
        (with_step(retries=-1), "greater than or equal to 0"),
        (with_step(retry_backoff=-1), "must be a finite number of seconds"),
        (with_step(headers={"Bad Header": "x"}), "is not a valid header name"),
        (with_step(headers={"X": "a\r\nInjected: 1"}), "the value of X must be text on one line"),
        (with_step(headers={"X": "{{ oops }"}), "headers.X: template syntax error"),
        (with_step(json={"a": ["{% for x in y %}{% endfor %}"]}), "json.a[0]: statements"),
        (with_step(params={"q": "{{ x | center(9) }}"}), "No filter named 'center'"),
        (with_step(paginate={"next_url": "{{ response.data.next }}", "page_param": "p"}), "exactly one of next_url, page_param or offset_param"),
        (with_step(paginate={"max_pages": 3}), "exactly one of next_url, page_param or offset_param"),
        (with_step(paginate={"offset_param": "offset"}), "offset_param needs size"),
        (with_step(paginate={"page_param": "p", "size_param": "n"}), "size_param needs size"),
        (with_step(paginate={"next_url": "{{ response.data.next }}", "start": 2}), "start and step go with page_param"),
        (with_step(paginate={"page_param": "p", "max_pages": 1001}), "less than or equal to 1000"),
        (with_step(paginate={"page_param": "p"}, expect_json=False), "paginate needs expect_json"),
        (with_step(paginate={"page_param": "p", "items": "{{ response.data.results"}), "paginate.items: template syntax error"),
        ({"name": "t", "load": {"dataset": "d"}, "steps": [{"name": "s", "url": "https://x/"}]}, "rows"),
    ],
)
def test_bad_definitions_are_refused(body: dict[str, Any], message: str) -> None:
    assert message in invalid(body)


def test_step_names_are_unique_identifiers_and_not_reserved() -> None:
    assert "must be unique: 'a' appears twice" in invalid({"name": "t", "steps": [{"name": "a", "url": "https://x/"}, {"name": "a", "url": "https://x/"}]})
    assert "String should match pattern" in invalid({"name": "t", "steps": [{"name": "api-call", "url": "https://x/"}]})
    for reserved in ("params", "secrets", "views", "response", "page", "range", "now", "dict", "self"):
        assert "reserved name" in invalid({"name": "t", "steps": [{"name": reserved, "url": "https://x/"}]})


def name_problems(body: dict[str, Any]) -> list[dict[str, Any]]:
    """What ``parse_spec`` (the API's check) says about the names templates read."""
    with pytest.raises(Invalid) as info:
        parse_spec(body)
    assert info.value.code == "invalid_task" and info.value.message == info.value.details[0]["message"]
    return info.value.details


def test_templates_may_only_read_earlier_steps_and_known_names() -> None:
    body = design_example()
    body["steps"][1]["headers"] = {"Authorization": "Bearer {{ logn.data.token }}"}
    assert name_problems(body) == [{"loc": ["steps", "1", "headers"],
                                    "message": "step 'fetch', headers: unknown name 'logn' (known here: dict, login, now, params, range, secrets, views)"}]

    body = design_example()
    body["steps"][0]["json"] = {"token": "{{ fetch.data.x }}"}
    assert name_problems(body)[0]["message"] == "step 'login', json: refers to step 'fetch', which runs later"

    body = design_example()
    body["steps"][1]["url"] = "https://x/{{ fetch.data.next }}"
    assert "refers to its own step 'fetch'" in name_problems(body)[0]["message"]

    body = design_example()
    body["steps"][0]["url"] = "https://x/{{ response.data }}"
    assert "unknown name 'response'" in name_problems(body)[0]["message"]

    body = design_example()
    body["load"]["rows"] = "{{ nothing.data }}"
    assert name_problems(body) == [{"loc": ["load", "rows"], "message": "load, load.rows: unknown name 'nothing' "
                                    "(known here: dict, fetch, login, now, params, range, secrets, views)"}]

    body = design_example()
    body["steps"][1]["paginate"] = {"next_url": "{{ response.data.next }}?p={{ page }}", "items": "{{ response.data.results }}"}
    parse_spec(body)


def test_every_name_problem_is_reported_at_once_with_its_place() -> None:
    body = design_example()
    body["steps"][0]["url"] = "https://x/{{ fetch.data }}"
    body["steps"][1]["paginate"] = {"page_param": "page", "items": "{{ nope.items }}"}
    body["load"]["rows"] = "{{ also_nope }}"
    assert [p["loc"] for p in name_problems(body)] == [["steps", "0", "url"], ["steps", "1", "paginate", "items"], ["load", "rows"]]


def test_templated_urls_are_checked_at_run_time_not_here() -> None:
    spec = parse_spec(with_step(url="{{ params.base_url }}/rates"))
    assert spec.steps[0].url == "{{ params.base_url }}/rates"


def test_load_rows_may_be_a_literal_list() -> None:
    spec = TaskSpec.model_validate({**with_step(), "load": {"dataset": "d", "rows": [{"a": "{{ s.data.x }}"}]}})
    assert spec.load is not None and spec.load.rows == [{"a": "{{ s.data.x }}"}]
