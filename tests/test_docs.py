"""The documentation's shell examples, pasted as a user would, against a real `pushbase serve`.

Every `curl` in the README's quick start, the opening example of docs/views.md and the Push API page
must answer 2xx with a JSON body that is not an error. Placeholders (`job_...`) are left out."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from .conftest import admin_key

ROOT = Path(__file__).resolve().parent.parent

# Each curl's answer goes to a file of its own; --fail-with-body turns a 4xx/5xx into a failed script.
PRELUDE = r"""
set -euo pipefail
curl() { command curl --silent --show-error --fail-with-body "$@" > "$(mktemp "$OUT/answer.XXXXXX")"; }
"""


def sh_blocks(path: Path) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", path.read_text(), flags=re.S)


def runnable(block: str, base_url: str) -> str:
    lines = [line for line in block.splitlines() if not re.match(r"\s*(\./scripts/serve|export KEY=|export PB=)", line) and "job_..." not in line]
    return "\n".join(lines).replace("http://127.0.0.1:8000", base_url)


def run_blocks(blocks: list[str], base_url: str, key: str, out: Path) -> list[object]:
    out.mkdir()
    script = PRELUDE + "\n".join(runnable(b, base_url) for b in blocks)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "KEY": key, "PB": base_url, "OUT": str(out)})
    answers = [p.read_text() for p in sorted(out.glob("answer.*"), key=lambda p: p.stat().st_mtime_ns)]
    assert done.returncode == 0, (done.stderr, answers[-1:] if answers else None)
    parsed = []
    for text in answers:
        for line in text.splitlines() or [text]:
            value = json.loads(line)
            assert not (isinstance(value, dict) and "error" in value), text
            parsed.append(value)
    return parsed


def test_quick_start_views_and_push_api_examples_run_as_written(tmp_path: Path, server_factory) -> None:
    db = str(tmp_path / "docs.db")
    key = admin_key(db)
    server = server_factory(db)
    readme = ROOT / "README.md"
    quick_start = [b for b in sh_blocks(readme) if "curl" in b][0]
    answers = run_blocks([quick_start], server.url, key, tmp_path / "readme")
    rows = answers[-1]
    assert isinstance(rows, dict) and [r["order_id"] for r in rows["rows"]] == [1, 2], rows

    views_example = sh_blocks(ROOT / "docs" / "views.md")[0]
    answers = run_blocks([views_example], server.url, key, tmp_path / "views")
    assert [r["order_id"] for r in answers[-1]["rows"]] == [1, 2]  # type: ignore[index]

    push_api = [b for b in sh_blocks(ROOT / "docs" / "push-api.md") if "curl" in b]
    answers = run_blocks(push_api, server.url, key, tmp_path / "push-api")
    assert any(isinstance(a, dict) and str(a.get("jobId", "")).startswith("job_") for a in answers)
