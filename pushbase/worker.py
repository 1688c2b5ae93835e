"""The background worker: ingest jobs, pushes and task schedules, in one object with a lifetime.

``pushbase worker`` runs one alone. ``pushbase serve`` runs one too (unless ``--no-worker``): on SQLite
inside the API process, whose one writer it shares; on PostgreSQL in a child process of its own
(``WorkerProcess``), so that the API and the pushes each have an interpreter and a core. With
PostgreSQL, a listener thread turns ``NOTIFY`` into local wake-ups, so a job accepted by one process
wakes the workers of all the others.
"""
from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import threading

from .ingest import IngestWorker
from .push.engine import PushEngine
from .settings import Settings
from .storage import Store, resolve_db
from .tasks.schedule import TaskScheduler

__all__ = ["Worker", "WorkerProcess", "READY_FD", "PARENT_PID", "tell_ready", "end_with_parent"]

# A pipe's write end, inherited by a worker started by ``pushbase serve``: one byte once it works.
READY_FD = "PUSHBASE_READY_FD"
# The pid of the ``pushbase serve`` that started a worker, which the worker ends with.
PARENT_PID = "PUSHBASE_SERVE_PID"


def tell_ready() -> None:
    """In ``pushbase worker``: tell the server that started it (if one did) that it is running."""
    fd = os.environ.pop(READY_FD, None)
    if fd is not None and fd.isdigit():
        try:
            os.write(int(fd), b"1")
            os.close(int(fd))
        except OSError:  # the server gave up waiting, or is gone
            pass

log = logging.getLogger("pushbase.worker")


class Worker:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.ingest = IngestWorker(store)
        self.pushes = PushEngine(store, settings)
        self.tasks = TaskScheduler(store, settings)
        self.listener = None

    async def start(self) -> None:
        if self.store.dialect == "postgresql":
            from .storage.listen import PgListener

            self.listener = PgListener(self.store)
            self.listener.start()
        self.ingest.start()
        await self.pushes.start()
        await self.tasks.start()

    async def stop(self) -> None:
        await self.tasks.stop()
        await self.pushes.stop()
        self.ingest.stop()
        if self.listener is not None:
            self.listener.stop()


class WorkerProcess:
    """``pushbase worker`` as a child of ``pushbase serve``: started with the server's settings,
    started again if it dies (a crash, kill -9; not when it was asked to stop), stopped (SIGTERM, then
    SIGKILL after ``grace`` seconds) with the server, and ended by the kernel if the server is killed
    (``PR_SET_PDEATHSIG`` on Linux)."""

    RESTART_SECONDS = 1.0

    def __init__(self, settings: Settings, *, grace: float = 15.0) -> None:
        self.command = [sys.executable, "-m", "pushbase", "worker"]
        if settings.allow_private_targets:
            self.command.append("--allow-private-targets")
        # The database in the environment, not the command line, where ps would show a password.
        self.env = {**os.environ, "PUSHBASE_DB": resolve_db(settings.db), PARENT_PID: str(os.getpid())}
        self.grace = grace
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="pushbase-worker-process", daemon=True)

    def start(self, ready_within: float = 60.0) -> "WorkerProcess":
        """Start the child and wait (up to ``ready_within`` seconds) until it listens and works: the
        server then opens its port, and nothing it accepts waits for a worker that is still starting."""
        ready, tell = os.pipe()
        try:
            self._spawn(tell)
        finally:
            os.close(tell)
        try:
            if not select.select([ready], [], [], ready_within)[0] or not os.read(ready, 1):
                log.warning("the worker process did not say it was ready within %ss; going on", ready_within)
        finally:
            os.close(ready)
        self._watcher.start()
        return self

    def _spawn(self, tell: int | None = None) -> None:
        env = self.env if tell is None else {**self.env, READY_FD: str(tell)}
        with self._lock:
            if not self._stopping.is_set():
                self._proc = subprocess.Popen(self.command, env=env, pass_fds=() if tell is None else (tell,))

    def _watch(self) -> None:
        while not self._stopping.is_set():
            proc = self._proc
            code = proc.wait() if proc is not None else None
            if self._stopping.wait(self.RESTART_SECONDS):
                return
            if code in (0, -signal.SIGTERM, -signal.SIGINT):
                # Asked to stop (a service manager stopping the whole group, say): not a crash.
                log.warning("the worker process was stopped (exit code %s); not starting it again", code)
                return
            log.error("the worker process ended (exit code %s); starting it again", code)
            self._spawn()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # it finishes what it holds: leases released, calls kept pending
        try:
            proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def end_with_parent() -> None:
    """In a worker that ``pushbase serve`` started: be sent SIGTERM when that server dies, even by kill
    -9 (Linux ``PR_SET_PDEATHSIG``), and stop at once if it died already. Done by the child itself at
    start, not in a pre-exec hook, which is unsafe in a parent with threads."""
    parent = os.environ.pop(PARENT_PID, None)
    if parent is None or not parent.isdigit():
        return
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the server is gone already (before the line above took effect)
        raise SystemExit(0)
