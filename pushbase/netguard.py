"""Keep pushes, actions and tasks away from loopback, private and link-local addresses.

Two checks, because a URL can lie about where it goes:

- ``check_url`` runs when a push, action or task is defined (and again before each call). It can only
  judge what the URL says: the scheme, and a host that is a literal IP address or ``localhost``.
- ``GuardedResolver`` runs when a connection is made. It judges the addresses a hostname actually
  resolves to, and the connector connects only to the addresses it returns — so a name that resolves to
  a public address at definition time and to 127.0.0.1 later (DNS rebinding) is still refused.

The operator lifts both with ``PUSHBASE_ALLOW_PRIVATE_TARGETS=1`` (or ``--allow-private-targets``);
tests do so explicitly to reach their loopback receivers.
"""
from __future__ import annotations

import ipaddress
import os
import re
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from .errors import Invalid, TargetRefused

__all__ = [
    "ALLOW_PRIVATE_ENV",
    "IPAddress",
    "ForbiddenAddressError",
    "GuardedResolver",
    "check_url",
    "is_forbidden_address",
    "private_targets_allowed",
]

ALLOW_PRIVATE_ENV = "PUSHBASE_ALLOW_PRIVATE_TARGETS"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Spelled out rather than left to ``ipaddress.is_private``/``is_global``, whose meaning has changed
# between Python releases; the flags are still consulted as a second opinion.
_FORBIDDEN_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, including the 169.254.169.254 cloud metadata service
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, including 255.255.255.255
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments, including Teredo
        "2001:db8::/32",
        "fc00::/7",  # unique local, including fd00::/8
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local, still routed by some stacks
        "ff00::/8",  # multicast
    )
)

# IPv6 forms that carry an IPv4 address which the packet may end up at.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class ForbiddenAddressError(OSError):
    """A hostname resolved only to addresses that pushes may not reach.

    An ``OSError`` so that aiohttp's connector wraps it like any other resolution failure; the outbound
    client unwraps it again to report the refused address.
    """

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"target refused: private address {address} (resolved from {host})")
        self.host = host
        self.address = address


def is_forbidden_address(ip: IPAddress) -> bool:
    """True for loopback, private, link-local, CGNAT, multicast, reserved and unspecified addresses."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_forbidden_address(embedded)
    if any(ip in net for net in _FORBIDDEN_NETWORKS if net.version == ip.version):
        return True
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
        or not ip.is_global
    )


def private_targets_allowed() -> bool:
    """Whether the operator allowed private targets through ``PUSHBASE_ALLOW_PRIVATE_TARGETS``."""
    return os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in ("1", "true", "yes")


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse a URL that is not http(s), has no host, or names a private address literally.

    Hostnames other than ``localhost`` pass: what they resolve to is checked at connect time.
    Raises ``Invalid`` for an unusable URL and ``TargetRefused`` for a private target.
    """
    if _CONTROL.search(url):
        # urlsplit keeps them, and a call would fail on them (or, with CR/LF, smuggle a header line).
        # A space is no danger: the HTTP client sends it quoted (%20).
        raise Invalid(f"URL may not contain control characters (line breaks, NUL): {url!r}", details={"url": url})
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - reading it validates the port
    except ValueError as exc:
        raise Invalid(f"not a valid URL: {url!r} ({exc})", details={"url": url}) from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise Invalid(f"URL must start with http:// or https://: {url!r}", details={"url": url})
    if not host:
        raise Invalid(f"URL has no host: {url!r}", details={"url": url})
    if _literal_ip(host) is None and not _is_host_name(host):
        raise Invalid(f"URL host {host!r} is not a host name or an IP address: {url!r}", details={"url": url})
    if allow_private:
        return
    host = host.rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        # RFC 6761: these names always mean the local host, whatever DNS says.
        raise TargetRefused(_refusal(host), details={"url": url, "address": host})
    ip = _literal_ip(host)
    if ip is not None and is_forbidden_address(ip):
        raise TargetRefused(_refusal(str(ip)), details={"url": url, "address": str(ip)})


class GuardedResolver(AbstractResolver):
    """Resolve through another resolver and drop the addresses pushes may not reach.

    If a name resolves to some public and some private addresses, only the public ones are returned;
    if none is left, resolution fails with ``ForbiddenAddressError``.
    """

    def __init__(self, *, allow_private: bool, inner: AbstractResolver | None = None) -> None:
        self.allow_private = allow_private
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            # Made here because the threaded resolver binds to the running loop.
            self._inner = ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        if self.allow_private:
            return results
        allowed = [r for r in results if not _resolved_is_forbidden(r["host"])]
        if not allowed:
            first = results[0]["host"] if results else "none"
            raise ForbiddenAddressError(host, first)
        return allowed

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def _resolved_is_forbidden(address: str) -> bool:
    try:
        # A link-local IPv6 answer may carry a zone ("fe80::1%eth0").
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True  # not an address we can judge, so not one we connect to
    return is_forbidden_address(ip)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST_LABELS = re.compile(r"^[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?$")


def _is_host_name(host: str) -> bool:
    """Letters, digits, ``-`` and ``_`` in dot-separated labels, once IDNA-encoded (``bücher.de``)."""
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return len(ascii_host) <= 253 and _HOST_LABELS.match(ascii_host) is not None


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    # Legacy IPv4 spellings ("2130706433", "0x7f.1", "127.1") are still addresses to getaddrinfo.
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host) and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _refusal(address: str) -> str:
    return (
        f"target refused: private address {address}; "
        f"set {ALLOW_PRIVATE_ENV}=1 to allow loopback and private targets"
    )
