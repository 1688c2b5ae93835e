from __future__ import annotations

import ipaddress

import pytest

from pushbase.errors import Invalid, TargetRefused
from pushbase.netguard import (
    ForbiddenAddressError,
    GuardedResolver,
    check_url,
    is_forbidden_address,
    private_targets_allowed,
)
from tests.receivers import FixedResolver

FORBIDDEN = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "198.18.0.1",
    "::1",
    "::",
    "fd00::1",
    "fc00::1",
    "fe80::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
]

ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_private_and_special_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://LOCALHOST./hook",
        "http://api.localhost/hook",
        "http://[::1]:9000/",
        "http://169.254.169.254/latest/meta-data/",
        "https://10.1.2.3/",
        "http://192.168.0.10/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fd00::1]/",
        "http://0.0.0.0:8000/",
        "http://100.64.1.1/",
        "http://2130706433/",  # 127.0.0.1 as one number
        "http://0x7f.1/",
        "http://127.1/",
    ],
)
def test_check_url_refuses_private_literals(url: str) -> None:
    with pytest.raises(TargetRefused) as caught:
        check_url(url, allow_private=False)
    assert "private address" in caught.value.message
    assert "PUSHBASE_ALLOW_PRIVATE_TARGETS" in caught.value.message
    check_url(url, allow_private=True)


@pytest.mark.parametrize("url", ["https://example.com/hook", "http://8.8.8.8/", "http://[2606:4700::1]:8443/x"])
def test_check_url_lets_public_hosts_and_hostnames_through(url: str) -> None:
    check_url(url, allow_private=False)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "file:///etc/passwd", "example.com/hook", "http:///path", "http://example.com:99999/"]
)
def test_check_url_refuses_unusable_urls_as_invalid(url: str) -> None:
    with pytest.raises(Invalid) as caught:
        check_url(url, allow_private=True)
    assert not isinstance(caught.value, TargetRefused)


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("YES", True), ("0", False), ("", False), ("no", False)])
def test_private_targets_allowed_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    monkeypatch.setenv("PUSHBASE_ALLOW_PRIVATE_TARGETS", value)
    assert private_targets_allowed() is expected


def test_private_targets_not_allowed_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUSHBASE_ALLOW_PRIVATE_TARGETS", raising=False)
    assert private_targets_allowed() is False


@pytest.mark.asyncio
async def test_guarded_resolver_refuses_localhost_resolved_by_the_system() -> None:
    resolver = GuardedResolver(allow_private=False)
    with pytest.raises(ForbiddenAddressError) as caught:
        await resolver.resolve("localhost", 80)
    assert ipaddress.ip_address(caught.value.address).is_loopback
    await resolver.close()


@pytest.mark.asyncio
async def test_guarded_resolver_allows_private_when_told() -> None:
    resolver = GuardedResolver(allow_private=True)
    results = await resolver.resolve("localhost", 80)
    assert results and all(ipaddress.ip_address(r["host"]).is_loopback for r in results)
    await resolver.close()


@pytest.mark.asyncio
async def test_guarded_resolver_keeps_only_public_addresses() -> None:
    resolver = GuardedResolver(allow_private=False, inner=FixedResolver("10.0.0.5", "93.184.216.34", "::1"))
    results = await resolver.resolve("mixed.test", 443)
    assert [r["host"] for r in results] == ["93.184.216.34"]


@pytest.mark.asyncio
async def test_guarded_resolver_refuses_a_name_rebound_to_metadata_service() -> None:
    resolver = GuardedResolver(allow_private=False, inner=FixedResolver("169.254.169.254"))
    with pytest.raises(ForbiddenAddressError, match="169.254.169.254"):
        await resolver.resolve("rebind.test", 80)
