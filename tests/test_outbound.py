from __future__ import annotations

import asyncio
import socket
from datetime import timezone

import pytest

from pushbase.outbound import Attempt, OutboundClient
from tests.receivers import FixedResolver, Receiver, Reply


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.asyncio
async def test_2xx_is_ok_and_the_request_arrives_as_sent(receiver: Receiver) -> None:
    receiver.respond(202, headers={"X-Request-Id": "abc"}, body='{"accepted": true}')
    async with OutboundClient(allow_private=True) as client:
        attempt = await client.send(
            "POST",
            receiver.url + "/hook",
            headers={"Content-Type": "application/json", "Authorization": "Bearer t"},
            data=b'[{"id": 1}]',
            params={"source": "pushbase"},
            timeout=5,
        )
    assert attempt.ok
    assert attempt.status_code == 202
    assert attempt.error is None
    assert attempt.headers["x-request-id"] == "abc"
    assert attempt.body == b'{"accepted": true}'
    assert attempt.excerpt == '{"accepted": true}'
    assert attempt.at.tzinfo is timezone.utc
    assert attempt.duration_ms >= 0
    [request] = receiver.requests
    assert (request.method, request.path, request.query) == ("POST", "/hook", {"source": "pushbase"})
    assert request.headers["authorization"] == "Bearer t"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == [{"id": 1}]


@pytest.mark.asyncio
async def test_500_is_an_answer_that_is_not_ok(receiver: Receiver) -> None:
    receiver.respond(500, body="boom")
    async with OutboundClient(allow_private=True) as client:
        attempt = await client.send("POST", receiver.url, data=b"x", timeout=5)
    assert not attempt.ok
    assert (attempt.status_code, attempt.error, attempt.excerpt) == (500, None, "boom")


@pytest.mark.asyncio
async def test_a_hanging_endpoint_times_out(receiver: Receiver) -> None:
    receiver.hang()
    async with OutboundClient(allow_private=True) as client:
        attempt = await client.send("POST", receiver.url, data=b"x", timeout=0.3)
    receiver.release()
    assert not attempt.ok
    assert attempt.status_code is None
    assert attempt.error == "timeout after 0.3s"
    assert receiver.wait_for(1)


@pytest.mark.asyncio
async def test_a_held_endpoint_does_not_delay_calls_to_others(receiver: Receiver) -> None:
    receiver.gate(path="/slow")
    async with OutboundClient(allow_private=True) as client:
        slow = asyncio.create_task(client.send("POST", receiver.url + "/slow", data=b"1", timeout=10))
        assert await asyncio.to_thread(receiver.wait_for, 1)
        fast = await client.send("POST", receiver.url + "/fast", data=b"2", timeout=10)
        assert fast.ok
        assert not slow.done()
        receiver.release()
        assert (await slow).ok
    assert [r.path for r in receiver.requests] == ["/slow", "/fast"]


@pytest.mark.asyncio
async def test_a_dropped_connection_is_an_error(receiver: Receiver) -> None:
    receiver.drop()
    async with OutboundClient(allow_private=True) as client:
        attempt = await client.send("POST", receiver.url, data=b"x", timeout=5)
    assert not attempt.ok
    assert attempt.status_code is None
    assert attempt.error == "connection closed without a complete response"


@pytest.mark.asyncio
async def test_a_reset_connection_is_an_error(receiver: Receiver) -> None:
    receiver.drop(reset=True)
    async with OutboundClient(allow_private=True) as client:
        attempt = await client.send("POST", receiver.url, data=b"x", timeout=5)
    assert not attempt.ok
    assert attempt.status_code is None
    assert attempt.error in ("connection reset", "connection closed without a complete response")


@pytest.mark.asyncio
async def test_a_closed_port_is_connection_refused() -> None:
    async with OutboundClient(allow_private=True) as client:
        attempt = await client.send("POST", f"http://127.0.0.1:{closed_port()}/hook", data=b"x", timeout=5)
    assert not attempt.ok
    assert attempt.error == "connection refused"


@pytest.mark.asyncio
async def test_tls_to_a_plain_http_endpoint_is_a_tls_error(receiver: Receiver) -> None:
    async with OutboundClient(allow_private=True) as client:
        attempt = await client.send("GET", receiver.url.replace("http://", "https://"), timeout=5)
    assert not attempt.ok
    assert attempt.error is not None and attempt.error.startswith("TLS error: ")


@pytest.mark.asyncio
async def test_redirects_are_not_followed(receiver: Receiver) -> None:
    receiver.respond(302, headers={"Location": receiver.url + "/elsewhere"}, path="/hook")
    async with OutboundClient(allow_private=True) as client:
        attempt = await client.send("POST", receiver.url + "/hook", data=b"x", timeout=5)
    assert not attempt.ok
    assert attempt.status_code == 302
    assert attempt.headers["location"].endswith("/elsewhere")
    assert [r.path for r in receiver.requests] == ["/hook"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "localhost"),
        ("[::1]", "::1"),
        ("169.254.169.254", "169.254.169.254"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
async def test_private_targets_are_refused_before_connecting(receiver: Receiver, host: str, address: str) -> None:
    async with OutboundClient(allow_private=False) as client:
        attempt = await client.send("POST", f"http://{host}:{receiver.port}/hook", data=b"x", timeout=5)
    assert not attempt.ok
    assert attempt.status_code is None
    assert attempt.error == f"target refused: private address {address}"
    assert receiver.requests == []


@pytest.mark.asyncio
async def test_a_hostname_resolving_to_loopback_is_refused_at_connect_time(receiver: Receiver) -> None:
    # The name passes the definition-time check; what it resolves to does not.
    async with OutboundClient(allow_private=False, resolver=FixedResolver("127.0.0.1")) as client:
        attempt = await client.send("POST", f"http://rebind.test:{receiver.port}/hook", data=b"x", timeout=5)
    assert attempt.error == "target refused: private address 127.0.0.1"
    assert receiver.requests == []


@pytest.mark.asyncio
async def test_the_connection_goes_to_the_resolved_address(receiver: Receiver) -> None:
    async with OutboundClient(allow_private=True, resolver=FixedResolver("127.0.0.1")) as client:
        attempt = await client.send("POST", f"http://rebind.test:{receiver.port}/hook", data=b"x", timeout=5)
    assert attempt.ok
    assert receiver.requests[0].headers["host"] == f"rebind.test:{receiver.port}"


@pytest.mark.asyncio
async def test_the_system_resolver_refuses_localhost_even_past_the_url_check(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the definition-time check, "localhost" goes to the real resolver, which must refuse it.
    monkeypatch.setattr("pushbase.outbound.check_url", lambda url, *, allow_private: None)
    async with OutboundClient(allow_private=False) as client:
        attempt = await client.send("GET", f"http://localhost:{receiver.port}/", timeout=5)
    assert attempt.error is not None and attempt.error.startswith("target refused: private address ")
    assert receiver.requests == []


@pytest.mark.asyncio
async def test_unusable_urls_become_attempts_not_exceptions() -> None:
    async with OutboundClient(allow_private=False) as client:
        attempt = await client.send("GET", "ftp://example.com/file", timeout=5)
    assert not attempt.ok
    assert attempt.error is not None and "http" in attempt.error


@pytest.mark.asyncio
async def test_the_response_body_is_capped(receiver: Receiver) -> None:
    receiver.respond(200, body=b"a" * 1000)
    async with OutboundClient(allow_private=True, max_body=100) as client:
        attempt = await client.send("GET", receiver.url, timeout=5)
    assert attempt.ok
    assert attempt.body == b"a" * 100
    assert attempt.body_truncated


@pytest.mark.asyncio
async def test_the_excerpt_is_short_and_always_text(receiver: Receiver) -> None:
    receiver.queue(Reply(400, body="é" * 600), Reply(400, body=b"\xff\xfeok"))
    async with OutboundClient(allow_private=True) as client:
        long = await client.send("GET", receiver.url, timeout=5)
        binary = await client.send("GET", receiver.url, timeout=5)
    assert long.excerpt == "é" * 500
    assert binary.excerpt == "\ufffd\ufffdok"


def test_attempt_json_is_what_the_delivery_log_shows() -> None:
    from datetime import datetime

    attempt = Attempt(datetime(2024, 5, 1, tzinfo=timezone.utc), None, "connection refused", 1.5)
    assert attempt.to_json() == {
        "at": "2024-05-01T00:00:00+00:00",
        "status_code": None,
        "error": "connection refused",
        "duration_ms": 1.5,
    }


@pytest.mark.asyncio
async def test_aclose_can_be_called_twice(receiver: Receiver) -> None:
    client = OutboundClient(allow_private=True)
    assert (await client.send("GET", receiver.url, timeout=5)).ok
    await client.aclose()
    await client.aclose()
