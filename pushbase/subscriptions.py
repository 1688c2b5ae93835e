"""Subscriptions: browser pages follow a view's pushes over Server-Sent Events.

Every successful push call (and every custom action run) of a view is published on the
``pushbase_view_pushed`` channel with a small JSON document (view, push or action, rows, webhook id,
time). With PostgreSQL it travels by NOTIFY, so an API process sees pushes made by any worker.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson

from .storage import Store

__all__ = ["CHANNEL", "publish", "publish_in", "follow"]

CHANNEL = "pushbase_view_pushed"
KEEPALIVE_SECONDS = 15.0


def publish_in(store: Store, conn: Any, view: str, event: dict[str, Any]) -> None:
    """Publish inside the caller's transaction: subscribers hear it only if it commits."""
    store.notify(conn, CHANNEL, orjson.dumps({**event, "view": view}).decode())


def publish(store: Store, view: str, event: dict[str, Any]) -> None:
    """Publish now (no transaction to wait for)."""
    payload = orjson.dumps({**event, "view": view}).decode()
    if store.dialect == "postgresql":
        with store.write() as conn:
            store.notify(conn, CHANNEL, payload)
    else:
        store.fire_local(CHANNEL, payload)


async def follow(store: Store, view: str, stop: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """SSE frames for each publication about ``view``, with comment keep-alives."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)

    def on_notify(channel: str, payload: str) -> None:
        if channel != CHANNEL:
            return
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if event.get("view") == view:
            loop.call_soon_threadsafe(_offer, queue, payload)

    store.add_listener(on_notify)
    try:
        yield b": subscribed\n\n"
        counter = 0
        while stop is None or not stop.is_set():
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel (the
                # client left) that comes as an event arrives, and the stream would go on.
                async with asyncio.timeout(KEEPALIVE_SECONDS):
                    payload = await queue.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            counter += 1
            yield f"id: {counter}\nevent: push\ndata: {payload}\n\n".encode()
    finally:
        store.remove_listener(on_notify)


def _offer(queue: asyncio.Queue[str], payload: str) -> None:
    if not queue.full():
        queue.put_nowait(payload)
