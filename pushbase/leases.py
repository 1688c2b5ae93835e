"""Who holds a lease (a job, a push, a scheduled task), and whether that holder is gone.

Owners are ``host:pid:random``. Leases expire on their own (several machines on PostgreSQL); a process
starting on the same host also frees at once the leases of processes there that no longer exist, so a
``kill -9``'d single server picks up its own work on restart without waiting for the expiry.
"""
from __future__ import annotations

import os
import secrets
import socket

__all__ = ["new_owner", "owner_is_dead"]

_HOST = socket.gethostname()


def new_owner(role: str) -> str:
    return f"{_HOST}:{os.getpid()}:{role}-{secrets.token_hex(3)}"


def owner_is_dead(owner: str | None) -> bool:
    """True only when the owner ran on this host and its process is gone."""
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
    return False
