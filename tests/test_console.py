"""The web console in headless Chromium against a real `pushbase serve` process."""
from __future__ import annotations

import json
import subprocess

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from .conftest import admin_key, chromium_path
from .receivers import Receiver

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--no-first-run",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser_page(tmp_path):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=ARGS)
        page = browser.new_page()
        yield page
        browser.close()


@pytest.fixture
def served(tmp_path, server_factory):
    db = str(tmp_path / "console.db")
    key = admin_key(db)
    server = server_factory(db)
    return server, key


def login(page, server, key):
    page.goto(server.url + "/console")
    page.fill("#key-input", key)
    page.click("#key-form button[type=submit]")


def test_create_dataset_and_copy_push_api_instructions(browser_page, served):
    server, key = served
    page = browser_page
    login(page, server, key)
    page.goto(server.url + "/console#/datasets")
    page.fill("[data-testid=create-dataset-input]", json.dumps({"name": "orders", "sample": {"order_id": 1, "customer": "Ada", "total": 9.5}, "unique_id": ["order_id"]}))
    page.click("[data-testid=create-dataset] button[type=submit]")
    expect(page.locator("h1")).to_have_text("Dataset orders")
    post = page.locator("[data-testid=curl-post]").inner_text()
    assert "/api/datasets/orders/data" in post and "x-api-key" in post
    # No rows yet: Qrvey shows "Delete all" only when there is data; delete needs a unique id.
    expect(page.locator("[data-testid=curl-delete-all]")).to_have_count(0)
    expect(page.locator("[data-testid=curl-delete]")).to_have_count(1)

    # The copied command works as pasted (with $KEY set), and the page then shows the row.
    result = subprocess.run(["bash", "-c", post.replace("\\\n", " ")], env={"KEY": key, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    job = json.loads(result.stdout)
    status = httpx.get(f"{server.url}/api/datasets/orders/data/{job['jobId']}/status", headers={"x-api-key": key}).json()
    for _ in range(100):
        if status["status"] == "Complete":
            break
        status = httpx.get(f"{server.url}/api/datasets/orders/data/{job['jobId']}/status", headers={"x-api-key": key}).json()
    assert status["status"] == "Complete", status
    page.reload()
    expect(page.locator("[data-testid=row-count]")).to_have_text("1 rows")
    expect(page.locator("[data-testid=dataset-rows] td").first).to_be_visible()
    expect(page.locator("[data-testid=curl-delete-all]")).to_have_count(1)


def test_bad_input_shows_the_api_error(browser_page, served):
    server, key = served
    page = browser_page
    login(page, server, key)
    page.goto(server.url + "/console#/datasets")
    page.fill("[data-testid=create-dataset-input]", json.dumps({"name": "bad name!", "columns": [{"name": "a", "type": "string"}]}))
    page.click("[data-testid=create-dataset] button[type=submit]")
    expect(page.locator("[data-testid=error]")).to_contain_text("name")


def test_wrong_key_is_reported(browser_page, served):
    server, _ = served
    page = browser_page
    login(page, server, "pb_wrong")
    page.goto(server.url + "/console#/datasets")
    expect(page.locator("[data-testid=error]")).to_contain_text("not valid")


def test_views_pushes_and_their_delivery_log(browser_page, served):
    server, key = served
    headers = {"x-api-key": key}
    cols = [{"name": "order_id", "type": "integer"}, {"name": "note", "type": "string"}, {"name": "last pushed", "type": "datetime"}]
    httpx.post(server.url + "/api/datasets", json={"name": "orders", "columns": cols, "unique_id": ["order_id"]}, headers=headers)
    httpx.post(server.url + "/api/datasets/orders/data?wait=true", json=[{"order_id": 1, "note": "<script>alert(1)</script>"}], headers=headers)
    r = httpx.post(server.url + "/api/views", json={"name": "fresh", "dataset": "orders", "filters": [{"field": "last pushed", "op": "is_empty"}]}, headers=headers)
    assert r.status_code == 201, r.text
    page = browser_page
    login(page, server, key)
    page.goto(server.url + "/console#/views/fresh")
    # Data is shown as text, never as markup.
    expect(page.locator("[data-testid=view-rows] td", has_text="<script>alert(1)</script>")).to_have_count(1)
    with Receiver() as rx:
        body = {"name": "out", "view": "fresh", "url": rx.url + "/hook", "log_time_field": "last pushed", "format": "json", "min_interval": "1d"}
        assert httpx.post(server.url + "/api/pushes", json=body, headers=headers).status_code == 201
        page.goto(server.url + "/console#/pushes/out")
        page.click("[data-testid=push-run]")
        assert rx.wait_for(1, 20)
        page.goto(server.url + "/console#/pushes")
        page.goto(server.url + "/console#/pushes/out")
        expect(page.locator("[data-testid=deliveries]")).to_contain_text("succeeded")


def test_task_run_from_the_console_shows_each_step(browser_page, served):
    server, key = served
    headers = {"x-api-key": key}
    with Receiver() as rx:
        rx.respond(200, body=json.dumps({"token": "t-1"}), headers={"content-type": "application/json"}, path="/login")
        rx.respond(500, body="boom", path="/data")
        task = {"name": "sync", "steps": [
            {"name": "login", "method": "POST", "url": rx.url + "/login", "json": {"user": "{{ params.user }}"}},
            {"name": "fetch", "method": "GET", "url": rx.url + "/data", "headers": {"Authorization": "Bearer {{ login.data.token }}"}},
        ]}
        assert httpx.post(server.url + "/api/tasks", json=task, headers=headers).status_code == 201
        page = browser_page
        login(page, server, key)
        page.goto(server.url + "/console#/tasks")
        expect(page.locator("[data-testid=tasks]")).to_contain_text("login → fetch")
        page.click("[data-testid=tasks] a:text('sync')")
        page.fill("[data-testid=task-params]", '{"user": "ada"}')
        page.click("[data-testid=task-run]")
        result = page.locator("[data-testid=task-result]")
        expect(result).to_contain_text("Run failed")
        expect(result).to_contain_text("HTTP 500")
        # The chained request really went out with the first step's answer and the run parameter.
        assert rx.wait_for(2, 20)
        sent = {r.path: r for r in rx.requests}
        assert sent["/login"].json() == {"user": "ada"}
        assert {k.lower(): v for k, v in sent["/data"].headers.items()}["authorization"] == "Bearer t-1"
        page.reload()
        expect(page.locator("[data-testid=task-runs]")).to_contain_text("failed")


def test_a_slow_earlier_page_never_draws_over_the_page_now_shown(browser_page, served):
    server, key = served
    headers = {"x-api-key": key}
    cols = [{"name": "order_id", "type": "integer"}, {"name": "last pushed", "type": "datetime"}]
    httpx.post(server.url + "/api/datasets", json={"name": "orders", "columns": cols, "unique_id": ["order_id"]}, headers=headers)
    httpx.post(server.url + "/api/views", json={"name": "fresh", "dataset": "orders"}, headers=headers)
    body = {"name": "out", "view": "fresh", "url": "https://example.com/hook", "log_time_field": "last pushed", "min_interval": "1d", "enabled": False}
    assert httpx.post(server.url + "/api/pushes", json=body, headers=headers).status_code == 201
    page = browser_page
    login(page, server, key)
    held = []
    page.route("**/api/pushes", lambda route: held.append(route))  # the list's answer waits for us
    page.goto(server.url + "/console#/pushes")
    while not held:
        page.wait_for_timeout(20)
    page.goto(server.url + "/console#/pushes/out")
    expect(page.locator("h1")).to_have_text("Push out")
    with page.expect_response("**/api/pushes"):
        held[0].continue_()
    page.evaluate("() => new Promise((done) => setTimeout(done, 50))")  # let the late answer be handled
    expect(page.locator("h1")).to_have_text("Push out")
    expect(page.locator("[data-testid=pushes]")).to_have_count(0)
