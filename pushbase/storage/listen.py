"""PostgreSQL LISTEN in a thread: every NOTIFY on our channels becomes a local wake-up (Store.fire_local)."""
from __future__ import annotations

import logging
import threading
import time

import psycopg

from . import Store

__all__ = ["PgListener", "CHANNELS"]

log = logging.getLogger("pushbase.listen")

CHANNELS = ("pushbase_jobs", "pushbase_job_done", "pushbase_data", "pushbase_pushes", "pushbase_tasks", "pushbase_view_pushed")


class PgListener:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pushbase-pg-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.store.hears_own_notifications = False

    def _run(self) -> None:
        url = self.store.url.replace("postgresql+psycopg://", "postgresql://")
        while not self._stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    for channel in CHANNELS:
                        conn.execute(f"LISTEN {channel}")  # channel names are our constants
                    self.store.hears_own_notifications = True
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self.store.fire_local(note.channel, note.payload)
            except Exception:  # noqa: BLE001 - reconnect; workers also poll, so nothing is lost meanwhile
                self.store.hears_own_notifications = False
                log.warning("LISTEN connection lost; reconnecting", exc_info=True)
                time.sleep(1.0)
