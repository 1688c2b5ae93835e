"""The database's writer: whose turn it is (``WriterTurns``) and how busy it is (``WritePressure``).

SQLite has one writer connection. Its pool hands it to whichever thread asks while it is free, and a
thread that writes back to back asks again at once, before the threads woken for it can run: they
could wait until the pool gives up (120 s). ``WriterTurns`` hands the writer over in the order it was
asked for instead (the WAL checkpointer takes a turn too, to finish a round with no writer appending).

``WritePressure`` is the number of write transactions holding or waiting for the writer (on
PostgreSQL: open), averaged over the last fraction of a second. Work that can wait reads it to yield
to work that cannot: a push with ``min_interval`` 0 lingers longer while transactions queue, so its
next call carries more rows and costs the writer fewer transactions (see ``push.engine``), and loads
keep their pace.
"""
from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
from collections.abc import Iterator

from ..errors import DatabaseUnavailable

__all__ = ["WritePressure", "WriterTurns"]


class WriterTurns:
    """A lock that passes straight to the longest waiter on release (first come, first served). A
    waiter gives up after ``timeout`` seconds (the pool's own limit) with ``DatabaseUnavailable``."""

    def __init__(self, timeout: float = 120.0) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()
        self._held = False
        self._waiting: collections.deque[threading.Lock] = collections.deque()

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        with self._lock:
            if self._held:
                handed = threading.Lock()
                handed.acquire()
                self._waiting.append(handed)
            else:
                self._held = True
                handed = None
        if handed is not None and not handed.acquire(timeout=self._timeout):
            with self._lock:
                if handed in self._waiting:  # not handed over meanwhile: give up our place
                    self._waiting.remove(handed)
                    raise DatabaseUnavailable(f"the database stayed busy with other writes for {self._timeout:.0f} s; try again")
        # Our turn: the holder before us released ``handed`` and left ``_held`` set for us.
        try:
            yield
        finally:
            with self._lock:
                if self._waiting:
                    self._waiting.popleft().release()
                else:
                    self._held = False


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
