"""The `pushbase` command's mistakes: one clear line on stderr, exit code 2, no traceback, nothing created."""
from __future__ import annotations

from pathlib import Path

from .conftest import admin_key, free_port, pushbase_cli


def _one_line_error(out, *words: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for word in words:
        assert word in out.stderr, out.stderr


def test_revoking_an_unknown_key(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.db")
    admin_key(db)
    _one_line_error(pushbase_cli("keys", "revoke", "999", db=db), "key #999 does not exist")


def test_bad_scope(tmp_path: Path) -> None:
    _one_line_error(pushbase_cli("keys", "create", "--name", "x", "--scope", "bogus", db=str(tmp_path / "cli.db")), "bogus")


def test_a_typo_in_the_database_folder_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo_dir"
    _one_line_error(pushbase_cli("keys", "list", db=str(missing / "x.db")), str(missing), "does not exist")
    assert not missing.exists()


def test_unreachable_postgresql(tmp_path: Path) -> None:
    url = f"postgresql://someone:hunter2@127.0.0.1:{free_port()}/nowhere"
    out = pushbase_cli("serve", "--port", str(free_port()), db=url)
    _one_line_error(out, "cannot open the database", "127.0.0.1")
    assert "hunter2" not in out.stderr
