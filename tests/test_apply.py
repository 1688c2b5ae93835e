"""`pushbase apply FILE.yaml`: configuration as code, idempotent, on both engines."""
from __future__ import annotations

import textwrap

from pushbase.storage import open_store
from pushbase import datasets
from pushbase.push import definitions as pushes
from pushbase.tasks import store as tasks
from pushbase.views import store as views

from .conftest import pushbase_cli

CONFIG = """
datasets:
  - name: orders
    columns:
      - {name: order_id, type: integer}
      - {name: total, type: number}
      - {name: last pushed, type: datetime}
    unique_id: [order_id]
views:
  - name: orders_to_push
    dataset: orders
    filters: [{field: last pushed, op: is_empty}]
    actions:
      - {name: bill, label: Send to billing, url: "https://billing.example/in"}
pushes:
  - name: to_erp
    view: orders_to_push
    url: https://erp.example/hook
    log_time_field: last pushed
    format: form
    min_interval: 5m
    headers: {Authorization: "Bearer ${ERP_TOKEN}"}
tasks:
  - name: ping
    steps: [{name: ping, method: GET, url: "https://api.example/ping"}]
"""


def test_apply_creates_then_updates_idempotently(tmp_path, db_url):
    path = tmp_path / "pushbase.yaml"
    path.write_text(CONFIG)
    first = pushbase_cli("apply", str(path), db=db_url, env={"ERP_TOKEN": "s3cret"})
    assert first.returncode == 0, first.stderr + first.stdout
    assert "dataset orders: created" in first.stdout and "push to_erp: created" in first.stdout
    again = pushbase_cli("apply", str(path), db=db_url, env={"ERP_TOKEN": "s3cret"})
    assert again.returncode == 0, again.stderr
    assert "dataset orders: unchanged" in again.stdout and "view orders_to_push: unchanged" in again.stdout
    assert "push to_erp: unchanged" in again.stdout and "task ping: unchanged" in again.stdout, again.stdout
    rotated = pushbase_cli("apply", str(path), db=db_url, env={"ERP_TOKEN": "rotated"})
    assert "push to_erp: updated" in rotated.stdout and "task ping: unchanged" in rotated.stdout, rotated.stdout
    path.write_text(CONFIG.replace("      - {name: total, type: number}\n", "      - {name: total, type: number}\n      - {name: receipt id, type: string}\n"))
    third = pushbase_cli("apply", str(path), db=db_url, env={"ERP_TOKEN": "s3cret"})
    assert "push to_erp: updated" in third.stdout, third.stdout  # the token is back to s3cret
    assert "dataset orders: updated (add_columns)" in third.stdout, third.stdout
    store = open_store(db_url)
    try:
        assert [c.name for c in datasets.get_dataset(store, "orders").columns] == ["order_id", "total", "last pushed", "receipt id"]
        assert views.get_view(store, "orders_to_push").definition["filters"][0]["op"] == "is_empty"
        shown = pushes.show_push(store, "to_erp")
        assert shown["headers"] == {"Authorization": "***"} and "s3cret" not in repr(shown)
        assert tasks.get_task(store, "ping").name == "ping"
        assert pushes.get_push(store, "to_erp").header_values == {"Authorization": "Bearer s3cret"}
    finally:
        store.close()


def test_apply_reports_problems_and_missing_env(tmp_path, db_url):
    path = tmp_path / "bad.yaml"
    path.write_text(CONFIG)
    missing = pushbase_cli("apply", str(path), db=db_url)  # ERP_TOKEN is not set
    assert missing.returncode == 1 and "ERP_TOKEN" in missing.stderr
    path.write_text(textwrap.dedent("""
        views:
          - name: v
            dataset: nope
    """))
    bad = pushbase_cli("apply", str(path), db=db_url)
    assert bad.returncode == 1 and "nope" in bad.stderr
