"""Settings as one value object, read once from the command line and environment.

Each setting is ``(name, environment variable, default, help)`` in ``SETTINGS``; the CLI, the docs
(docs/configuration.md) and the code read this one table.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["Settings", "SETTINGS", "env_flag"]

SETTINGS: tuple[tuple[str, str, object, str], ...] = (
    ("db", "PUSHBASE_DB", "./pushbase.db", "SQLite file path or postgresql:// URL"),
    ("max_body_bytes", "PUSHBASE_MAX_BODY_BYTES", 10 * 1024 * 1024, "largest request body accepted; larger answers 413"),
    ("allow_private_targets", "PUSHBASE_ALLOW_PRIVATE_TARGETS", False, "let pushes, actions and tasks call loopback and private addresses"),
    ("sweep_seconds", "PUSHBASE_SWEEP_SECONDS", 30.0, "how often pushes re-check views whose rows match because of time alone (now())"),
    ("linger_seconds", "PUSHBASE_LINGER_SECONDS", 0.05, "with min_interval 0, how long after its last call a push holds new data back to batch it (a quiet push calls at once)"),
    ("linger_max_seconds", "PUSHBASE_LINGER_MAX_SECONDS", 0.5, "while write transactions queue, the linger grows by linger_seconds for each one queued, up to this"),
)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env(name: str, default: object) -> object:
    raw = os.environ.get(name)
    if raw is None:
        return default
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


@dataclass(frozen=True)
class Settings:
    db: str = "./pushbase.db"
    max_body_bytes: int = 10 * 1024 * 1024
    allow_private_targets: bool = False
    sweep_seconds: float = 30.0
    linger_seconds: float = 0.05
    linger_max_seconds: float = 0.5
    secrets: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        values = {name: _env(var, default) for name, var, default, _ in SETTINGS}
        values.update({k: v for k, v in overrides.items() if v is not None})
        secrets = {k[len("PUSHBASE_SECRET_"):]: v for k, v in os.environ.items() if k.startswith("PUSHBASE_SECRET_")}
        return cls(secrets=secrets, **values)  # type: ignore[arg-type]
