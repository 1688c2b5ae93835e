"""Who holds a lease (a job, a push, a scheduled task), and whether that holder is gone.

Owners are ``host:pid:random``. Leases expire on their own (several machines on PostgreSQL); a process
starting on the same host also frees at once the leases of processes there that no longer exist, so a
``kill -9``'d single server picks up its own work on restart without waiting for the expiry.
"""
from __future__ import annotations

import os
import secrets
import socket

__all__ = ["new_owner", "owner_is_dead", "owner_is_local"]

_HOST = socket.gethostname()


def new_owner(role: str) -> str:
    return f"{_HOST}:{os.getpid()}:{role}-{secrets.token_hex(3)}"


def owner_is_local(owner: str | None) -> bool:
    """Whether the owner runs (or ran) on this host, where ``owner_is_dead`` can tell."""
    return bool(owner) and owner.split(":", 1)[0] == _HOST  # type: ignore[union-attr]


def owner_is_dead(owner: str | None) -> bool:
    """True only when the owner ran on this host and its process is gone (or a zombie: killed, and
    not yet reaped by its parent)."""
    if not owner:
        return False
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != _HOST:
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):  # no /proc (not Linux), or the process ended meanwhile
        return False
