"""What a push does after a call: done, try again at a time, or stop — decided as a value.

``RetryPolicy.decide`` looks at one ``Attempt`` and returns ``Success()``, ``RetryAt(at, reason)`` or
``Disable(reason)``; it never sleeps and never touches storage, so it is tested without waiting.

- Any 2xx without a transport error is a success.
- HTTP 410 Gone disables the push: the endpoint said, for good, that it no longer wants these calls.
- Anything else (other statuses, 3xx included, timeouts, refused or reset connections, TLS errors) is
  retried after the schedule's delay for the number of failures in a row, with +/- ``jitter`` so that
  endpoints that failed together do not all come back at the same second.
- On 429 and 503 a ``Retry-After`` (seconds or an HTTP-date) is honoured when it asks for longer than the
  schedule, up to ``max_retry_after``.
- A push is never dropped (at-least-once delivery): once the schedule is used up, retries continue at
  its last interval until the endpoint answers 2xx, answers 410, or an operator disables the push. The
  ``failing`` status makes the situation visible long before then.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Literal

from ..durations import format_duration
from ..errors import Invalid
from ..outbound import Attempt

__all__ = [
    "DEFAULT_SCHEDULE",
    "Decision",
    "Disable",
    "PushStatus",
    "RetryAt",
    "RetryPolicy",
    "Success",
    "parse_retry_after",
]

# Svix's schedule: the delay after the 1st, 2nd, ... failure in a row.
DEFAULT_SCHEDULE: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)

PushStatus = Literal["ok", "failing", "disabled"]

_RETRY_AFTER_STATUSES = (429, 503)
_DEFAULT_RNG = random.Random()


@dataclass(frozen=True)
class Success:
    """The call was delivered: stamp the rows it carried."""


@dataclass(frozen=True)
class RetryAt:
    """The call failed for ``reason``; try the same batch again at ``at``."""

    at: datetime
    reason: str


@dataclass(frozen=True)
class Disable:
    """The endpoint asked us to stop; disable the push for ``reason``."""

    reason: str


Decision = Success | RetryAt | Disable


@dataclass(frozen=True)
class RetryPolicy:
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.2
    failing_after: int = 3
    max_retry_after: float = 86400.0

    def __post_init__(self) -> None:
        if not self.schedule or any(not delay >= 0 for delay in self.schedule):
            raise Invalid("retry schedule: expect one or more delays >= 0 seconds")
        if not 0 <= self.jitter < 1:
            raise Invalid("retry jitter: expect a fraction >= 0 and < 1")
        if self.failing_after < 1:
            raise Invalid("retry failing_after: expect at least 1")
        if not self.max_retry_after >= 0:
            raise Invalid("retry max_retry_after: expect seconds >= 0")

    def decide(
        self,
        attempt: Attempt,
        consecutive_failures: int,
        now: datetime,
        rng: random.Random | None = None,
    ) -> Decision:
        """Decide after ``attempt``; ``consecutive_failures`` counts the failures in a row before it."""
        if attempt.ok:
            return Success()
        if attempt.error is None and attempt.status_code == 410:
            return Disable("HTTP 410 Gone: the endpoint asked to stop receiving this push")

        reason = attempt.error or f"HTTP {attempt.status_code}"
        delay = self.delay_after(consecutive_failures + 1, rng)
        retry_after = self._retry_after(attempt, now)
        if retry_after is not None and retry_after > delay:
            delay = retry_after
            reason = f"{reason} (Retry-After {format_duration(round(retry_after))})"
        return RetryAt(now + timedelta(seconds=delay), reason)

    def delay_after(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``failures`` failures in a row (1 for the first), jitter included."""
        base = self.schedule[min(max(failures, 1), len(self.schedule)) - 1]
        spread = (rng or _DEFAULT_RNG).uniform(-self.jitter, self.jitter)
        return base * (1 + spread)

    def status_for(self, consecutive_failures: int, enabled: bool) -> PushStatus:
        """The status shown for a push: ``disabled``, ``failing`` after enough failures, else ``ok``."""
        if not enabled:
            return "disabled"
        if consecutive_failures >= self.failing_after:
            return "failing"
        return "ok"

    def _retry_after(self, attempt: Attempt, now: datetime) -> float | None:
        if attempt.error is not None or attempt.status_code not in _RETRY_AFTER_STATUSES:
            return None
        seconds = parse_retry_after(attempt.headers.get("retry-after"), now)
        if seconds is None:
            return None
        return min(seconds, self.max_retry_after)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` value asks for; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; parsedate_to_datetime leaves "-0000" naive.
        when = when.replace(tzinfo=timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds())
