"""How busy the database's writer is: the number of write transactions holding or waiting for it,
averaged over the last fraction of a second.

SQLite has one writer, and on PostgreSQL too the writes of one process queue for the same CPU and
pool. Work that can wait reads this to yield to work that cannot: a push with ``min_interval`` 0
lingers longer while transactions queue, so its next call carries more rows and costs the writer
fewer transactions (see ``push.engine``), and loads keep their pace.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator

__all__ = ["WritePressure"]


class WritePressure:
    """A count of open write transactions and its exponential time average (time constant ``tau``)."""

    def __init__(self, tau: float = 0.1) -> None:
        self._lock = threading.Lock()
        self._tau = tau
        self._count = 0
        self._average = 0.0
        self._at = time.monotonic()

    def _settle(self, now: float) -> None:
        elapsed = now - self._at
        if elapsed > 0:
            keep = math.exp(-elapsed / self._tau)
            self._average = self._average * keep + self._count * (1.0 - keep)
            self._at = now

    @contextlib.contextmanager
    def counted(self) -> Iterator[None]:
        """Around a write transaction, from before it waits for the writer to after its commit."""
        with self._lock:
            self._settle(time.monotonic())
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._settle(time.monotonic())
                self._count -= 1

    def level(self) -> float:
        """Write transactions open on average lately: about 0 when idle, several while they queue."""
        with self._lock:
            self._settle(time.monotonic())
            return self._average
