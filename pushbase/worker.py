"""The background worker: ingest jobs, pushes and task schedules, in one object with a lifetime.

``pushbase serve`` runs one inside the API process (unless ``--no-worker``); ``pushbase worker`` runs
one alone. With PostgreSQL, a listener thread turns ``NOTIFY`` into local wake-ups, so a job accepted
by one process wakes the workers of all the others.
"""
from __future__ import annotations

import logging

from .ingest import IngestWorker
from .push.engine import PushEngine
from .settings import Settings
from .storage import Store
from .tasks.schedule import TaskScheduler

__all__ = ["Worker"]

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
