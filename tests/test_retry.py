from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from pushbase.errors import Invalid
from pushbase.outbound import Attempt, OutboundClient
from pushbase.push.retry import DEFAULT_SCHEDULE, Disable, RetryAt, RetryPolicy, Success
from tests.receivers import Receiver

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
EXACT = RetryPolicy(jitter=0)


def answered(status: int, headers: dict[str, str] | None = None) -> Attempt:
    return Attempt(NOW, status, None, 12.0, headers or {})


def failed(error: str) -> Attempt:
    return Attempt(NOW, None, error, 12.0)


def after(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_2xx_is_success(status: int) -> None:
    assert EXACT.decide(answered(status), 4, NOW) == Success()


def test_a_2xx_with_a_broken_body_is_retried() -> None:
    attempt = Attempt(NOW, 200, "response body incomplete", 5.0)
    assert EXACT.decide(attempt, 0, NOW) == RetryAt(after(5), "response body incomplete")


def test_410_disables_the_push() -> None:
    decision = EXACT.decide(answered(410), 0, NOW)
    assert isinstance(decision, Disable)
    assert "410" in decision.reason


@pytest.mark.parametrize("status", [301, 302, 400, 401, 404, 500, 502])
def test_other_statuses_are_retried(status: int) -> None:
    assert EXACT.decide(answered(status), 0, NOW) == RetryAt(after(5), f"HTTP {status}")


@pytest.mark.parametrize("error", ["timeout after 10s", "connection refused", "TLS error: CERTIFICATE_VERIFY_FAILED"])
def test_transport_errors_are_retried_with_their_reason(error: str) -> None:
    assert EXACT.decide(failed(error), 0, NOW) == RetryAt(after(5), error)


def test_the_schedule_follows_the_failures_in_a_row() -> None:
    delays = [EXACT.decide(answered(500), n, NOW) for n in range(len(DEFAULT_SCHEDULE))]
    assert delays == [RetryAt(after(s), "HTTP 500") for s in (5, 300, 1800, 7200, 18000, 36000, 36000)]


@pytest.mark.parametrize("failures", [7, 8, 50, 10_000])
def test_after_the_schedule_retries_continue_at_the_last_interval(failures: int) -> None:
    assert EXACT.decide(answered(500), failures, NOW) == RetryAt(after(36000), "HTTP 500")


def test_jitter_stays_within_its_fraction_and_varies() -> None:
    policy = RetryPolicy(schedule=(100.0,), jitter=0.2)
    rng = random.Random(7)
    delays = set()
    for _ in range(200):
        decision = policy.decide(answered(500), 0, NOW, rng)
        assert isinstance(decision, RetryAt)
        delay = (decision.at - NOW).total_seconds()
        assert 80 <= delay <= 120
        delays.add(delay)
    assert len(delays) > 100


def test_a_seeded_rng_gives_the_same_decision() -> None:
    policy = RetryPolicy()
    first = policy.decide(answered(500), 2, NOW, random.Random(1))
    assert first == policy.decide(answered(500), 2, NOW, random.Random(1))


@pytest.mark.parametrize("status", [429, 503])
def test_a_longer_retry_after_in_seconds_is_honoured(status: int) -> None:
    decision = EXACT.decide(answered(status, {"retry-after": "120"}), 0, NOW)
    assert decision == RetryAt(after(120), f"HTTP {status} (Retry-After 2m)")


def test_a_retry_after_date_is_honoured() -> None:
    headers = {"retry-after": format_datetime(after(600), usegmt=True)}
    assert EXACT.decide(answered(503, headers), 0, NOW) == RetryAt(after(600), "HTTP 503 (Retry-After 10m)")


def test_a_shorter_retry_after_does_not_shorten_the_schedule() -> None:
    decision = EXACT.decide(answered(429, {"retry-after": "60"}), 3, NOW)
    assert decision == RetryAt(after(7200), "HTTP 429")


def test_retry_after_is_capped_at_a_day() -> None:
    decision = EXACT.decide(answered(429, {"retry-after": str(30 * 86400)}), 0, NOW)
    assert decision == RetryAt(after(86400), "HTTP 429 (Retry-After 1d)")


@pytest.mark.parametrize(
    ("status", "value"),
    [(500, "120"), (429, "soon"), (429, ""), (503, "-5"), (503, format_datetime(NOW - timedelta(hours=1), usegmt=True))],
)
def test_retry_after_is_ignored_when_not_usable(status: int, value: str) -> None:
    assert EXACT.decide(answered(status, {"retry-after": value}), 0, NOW) == RetryAt(after(5), f"HTTP {status}")


@pytest.mark.parametrize(
    ("failures", "enabled", "status"),
    [(0, True, "ok"), (2, True, "ok"), (3, True, "failing"), (99, True, "failing"), (0, False, "disabled"), (5, False, "disabled")],
)
def test_status_for(failures: int, enabled: bool, status: str) -> None:
    assert RetryPolicy().status_for(failures, enabled) == status


@pytest.mark.parametrize(
    "kwargs",
    [{"schedule": ()}, {"schedule": (5.0, -1.0)}, {"jitter": 1.0}, {"jitter": -0.1}, {"failing_after": 0}],
)
def test_a_nonsense_policy_is_invalid(kwargs: dict[str, object]) -> None:
    with pytest.raises(Invalid):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_decides_on_a_real_busy_endpoint(receiver: Receiver) -> None:
    receiver.respond(503, headers={"Retry-After": "900"})
    async with OutboundClient(allow_private=True) as client:
        attempt = await client.send("POST", receiver.url, data=b"[]", timeout=5)
    decision = EXACT.decide(attempt, 0, NOW)
    assert decision == RetryAt(after(900), "HTTP 503 (Retry-After 15m)")
