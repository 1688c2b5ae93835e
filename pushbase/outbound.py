"""The one HTTP client that pushes, custom actions and API request tasks call out with.

Every call comes back as an ``Attempt``: a failure of the network or of the endpoint is a value to log
and to decide on (see ``pushbase.push.retry``), never an exception. Calls never follow redirects: a 3xx
is an answer that is not 2xx, so a push cannot be bounced to an address nobody checked.

aiohttp rather than httpx because the push engine's throughput depends on it (see DESIGN.md).
"""
from __future__ import annotations

import asyncio
import errno
import math
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver

from .durations import format_duration
from .errors import PushbaseError, TargetRefused
from .netguard import ForbiddenAddressError, GuardedResolver, check_url

__all__ = ["Attempt", "OutboundClient", "DEFAULT_MAX_BODY", "EXCERPT_CHARS", "USER_AGENT", "RESERVED_HEADERS", "custom_header_problem"]

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
# Set by Pushbase (or the HTTP client) on every outbound call; a custom header may not replace them.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "transfer-encoding", "connection", "webhook-id", "webhook-timestamp", "webhook-signature"}
)


def custom_header_problem(name: Any, value: Any, *, reserved: frozenset[str] = RESERVED_HEADERS) -> str | None:
    """Why a custom header cannot be sent as given (None when it can): checked when a push, action or
    task is saved, so that no call fails on it later, and on a task's rendered values. Tasks pass no
    ``reserved`` names: they call APIs of their own choosing, not signed webhooks."""
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        return f"{name!r} is not a valid header name"
    if name.lower() in reserved:
        return f"{name} is set by Pushbase for every call and cannot be replaced"
    if not isinstance(value, str) or any(ch in value for ch in "\r\n\0") or len(value) > 8192:
        return f"the value of {name} must be text on one line (at most 8192 characters)"
    return None

DEFAULT_MAX_BODY = 1024 * 1024
EXCERPT_CHARS = 500
USER_AGENT = "pushbase"


@dataclass(frozen=True)
class Attempt:
    """One HTTP call and how it ended. ``error`` is a short reason when no usable answer came back."""

    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    body_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300

    @property
    def excerpt(self) -> str:
        return self.body[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[:EXCERPT_CHARS]

    def to_json(self) -> dict[str, Any]:
        """The attempt as the delivery log shows it."""
        return {
            "at": self.at.isoformat(),
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": round(self.duration_ms, 3),
        }


class OutboundClient:
    """A pooled aiohttp session whose connections only reach addresses the netguard allows.

    ``resolver`` is the resolver to ask (the threaded system resolver by default); it is always wrapped
    in a ``GuardedResolver``. Use as ``async with OutboundClient(...) as client`` or call ``aclose()``.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        limit: int = 100,
        limit_per_host: int = 0,
        ttl_dns_cache: int = 10,
        max_body: int = DEFAULT_MAX_BODY,
        resolver: AbstractResolver | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.allow_private = allow_private
        self.max_body = max_body
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._ttl_dns_cache = ttl_dns_cache
        self._inner_resolver = resolver
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> OutboundClient:
        self._get_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float,
    ) -> Attempt:
        """Make one call, bounded by ``timeout`` seconds in total (connect, send, read the answer)."""
        at = datetime.now(timezone.utc)
        started = time.perf_counter()

        def failed(reason: str, status_code: int | None = None) -> Attempt:
            return Attempt(at, status_code, reason, (time.perf_counter() - started) * 1000)

        try:
            # aiohttp skips the resolver for literal IPs, so those are judged here.
            check_url(url, allow_private=self.allow_private)
        except TargetRefused as exc:
            return failed(f"target refused: private address {exc.details['address']}")
        except PushbaseError as exc:
            return failed(exc.message)

        status_code: int | None = None
        try:
            session = self._get_session()
            async with session.request(
                method,
                url,
                headers=headers,
                data=data,
                params=params,
                allow_redirects=False,
                # aiohttp rounds a deadline over ceil_threshold (5 s) up to a whole second of the loop's
                # clock: a 5 s timeout ran up to 6 s. A call's timeout is the whole call, to the ms.
                timeout=aiohttp.ClientTimeout(total=timeout, ceil_threshold=math.inf),
            ) as response:
                status_code = response.status
                body, truncated = await self._read_capped(response)
                response_headers = _lower_headers(response.headers)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            return failed(_describe(exc, timeout), status_code)
        return Attempt(
            at,
            status_code,
            None,
            (time.perf_counter() - started) * 1000,
            response_headers,
            body,
            truncated,
        )

    async def _read_capped(self, response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        # Stop reading at the cap: an endpoint must not be able to fill our memory or logs.
        chunks: list[bytes] = []
        size = 0
        while size < self.max_body:
            chunk = await response.content.read(self.max_body - size)
            if not chunk:
                return b"".join(chunks), False
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), not response.content.at_eof()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(allow_private=self.allow_private, inner=self._inner_resolver),
                limit=self._limit,
                limit_per_host=self._limit_per_host,
                ttl_dns_cache=self._ttl_dns_cache,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # No proxy from the environment: a proxy would connect for us, past the guard.
                trust_env=False,
                # No cookies carried from one endpoint's answer into another call.
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": self._user_agent},
            )
        return self._session


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        lowered[key] = f"{lowered[key]}, {value}" if key in lowered else value
    return lowered


def _describe(exc: BaseException, timeout: float) -> str:
    """A short reason for the delivery log; the exception itself may be long or leak internals."""
    if isinstance(exc, asyncio.TimeoutError):
        return f"timeout after {format_duration(timeout)}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        if isinstance(exc.os_error, ForbiddenAddressError):
            return f"target refused: private address {exc.os_error.address}"
        return f"DNS error: cannot resolve {exc.host}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS error: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS error: {_ssl_reason(exc.os_error)}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {_ssl_reason(exc)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _os_reason(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed without a complete response"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "response body incomplete"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"invalid HTTP response: {exc.message}"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"invalid URL: {exc.url}"
    if isinstance(exc, OSError):
        return _os_reason(exc)
    if isinstance(exc, ValueError):
        return f"invalid request: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, ConnectionResetError) or exc.errno == errno.ECONNRESET:
        return "connection reset"
    if isinstance(exc, ConnectionAbortedError) or exc.errno == errno.ECONNABORTED:
        return "connection aborted"
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "network unreachable"
    return f"connection error: {exc.strerror or exc}"


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc)
