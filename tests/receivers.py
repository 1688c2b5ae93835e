"""A real HTTP endpoint on loopback for tests: records what it receives and answers as told.

    with Receiver() as receiver:
        receiver.respond(503, headers={"Retry-After": "120"})      # every path from now on
        receiver.gate(path="/slow")                                 # hold /slow until release()
        ... send to receiver.url + "/hook" ...
        assert receiver.wait_for(1)
        receiver.requests[0].json()

Behaviours (a ``Reply``) are set globally or per path, changed at any time, and may be queued as
one-shot replies (``queue``) that are used in order before the standing behaviour:

- ``respond``: answer a status with optional headers and body (default: 200, empty body).
- ``gate``: record the request at once, hold the answer until ``release()``, then answer.
- ``hang``: hold the request until ``release()`` or until the client gives up, then close without
  answering — for timeouts.
- ``drop``: close the connection without answering (``reset=True`` sends a TCP RST instead of FIN).

Every request is recorded when it arrives, whatever the behaviour. Each request runs in its own
thread (``ThreadingHTTPServer``), so a held request does not block the others.

``FixedResolver`` answers every hostname with chosen addresses, to test what happens when a name
resolves somewhere it should not (DNS rebinding) without depending on real DNS.
"""
from __future__ import annotations

import json
import select
import socket
import struct
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

__all__ = ["FixedResolver", "Receiver", "Reply", "Request"]

Mode = Literal["answer", "gate", "hang", "drop", "reset"]

_POLL = 0.02


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | str = b""
    mode: Mode = "answer"

    def __post_init__(self) -> None:
        object.__setattr__(self, "body", _bytes(self.body))


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    query_string: str
    headers: dict[str, str]
    body: bytes
    at: datetime

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._lock = threading.Condition()
        self._requests: list[Request] = []
        self._default = Reply()
        self._by_path: dict[str, Reply] = {}
        self._queued: dict[str | None, deque[Reply]] = {}
        self._released = threading.Event()
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server = _Server((host, 0), _Handler)
        self._server.receiver = self
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- behaviour -------------------------------------------------------------------------------

    def respond(
        self,
        status: int = 200,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | str = b"",
        path: str | None = None,
    ) -> None:
        self._set(Reply(status, dict(headers or {}), _bytes(body)), path)

    def gate(
        self,
        status: int = 200,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | str = b"",
        path: str | None = None,
    ) -> None:
        self._released.clear()
        self._set(Reply(status, dict(headers or {}), _bytes(body), "gate"), path)

    def hang(self, *, path: str | None = None) -> None:
        self._released.clear()
        self._set(Reply(mode="hang"), path)

    def drop(self, *, path: str | None = None, reset: bool = False) -> None:
        self._set(Reply(mode="reset" if reset else "drop"), path)

    def queue(self, *replies: Reply, path: str | None = None) -> None:
        """Use ``replies`` once each, in order, before the standing behaviour for ``path`` (or all)."""
        with self._lock:
            self._queued.setdefault(path, deque()).extend(replies)
            if any(r.mode in ("gate", "hang") for r in replies):
                self._released.clear()

    def release(self) -> None:
        """Let every held request (gate, hang) go, and the ones that arrive until the next gate/hang."""
        self._released.set()

    def reset(self) -> None:
        """Forget recorded requests and behaviours; held requests are released."""
        with self._lock:
            self._requests.clear()
            self._default = Reply()
            self._by_path.clear()
            self._queued.clear()
        self._released.set()

    def _set(self, reply: Reply, path: str | None) -> None:
        with self._lock:
            if path is None:
                self._default = reply
            else:
                self._by_path[path] = reply

    def _reply_for(self, path: str) -> Reply:
        with self._lock:
            for key in (path, None):
                queued = self._queued.get(key)
                if queued:
                    return queued.popleft()
            return self._by_path.get(path, self._default)

    # -- what arrived ----------------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    @property
    def last(self) -> Request | None:
        with self._lock:
            return self._requests[-1] if self._requests else None

    def wait_for(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``n`` requests have arrived; False if ``timeout`` passes first."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._requests) >= n, timeout)

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()

    # -- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        self._released.set()
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Idle keep-alive connections must not make close() wait.
    block_on_close = False
    receiver: Receiver


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections end on their own.
    timeout = 30
    server: _Server

    def setup(self) -> None:
        super().setup()
        receiver = self.server.receiver
        with receiver._lock:
            receiver._connections.add(self.connection)

    def finish(self) -> None:
        receiver = self.server.receiver
        with receiver._lock:
            receiver._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def _serve(self) -> None:
        receiver = self.server.receiver
        parts = urlsplit(self.path)
        body = self._read_body()
        receiver._record(
            Request(
                method=self.command,
                path=parts.path,
                query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                query_string=parts.query,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                at=datetime.now(timezone.utc),
            )
        )
        reply = receiver._reply_for(parts.path)
        if reply.mode in ("gate", "hang") and not self._hold(receiver):
            self.close_connection = True
            return
        if reply.mode in ("hang", "drop"):
            self.close_connection = True
            return
        if reply.mode == "reset":
            self.close_connection = True
            # Linger 0 makes close() send RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if not any(name.lower() == "content-length" for name in reply.headers):
            self.send_header("Content-Length", str(len(_bytes(reply.body))))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(_bytes(reply.body))

    def _hold(self, receiver: Receiver) -> bool:
        """Wait for release(); False if the client went away or the receiver closed meanwhile."""
        while not receiver._released.wait(_POLL):
            if receiver._closing.is_set() or self._client_gone():
                return False
        return not receiver._closing.is_set()

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK)
            return peeked == b""
        except OSError:
            return True

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve


class FixedResolver(AbstractResolver):
    """Answers every name with the given addresses, as a DNS server under someone else's control could."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        pass


def _bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body
