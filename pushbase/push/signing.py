"""Standard Webhooks headers (https://www.standardwebhooks.com) for every call a push makes.

The signature is ``v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">``. The key is
derived from the secret string exactly as the ``standardwebhooks`` library does, so a receiver verifies
with ``standardwebhooks.Webhook(secret).verify(body, headers)`` using the very string given to the push:

- ``whsec_<base64>``: the key is the base64-decoded part after the prefix (the usual form).
- a string without the prefix is base64-decoded too (the library's rule for such strings); it must
  decode to at least one byte. Receivers that want the raw UTF-8 bytes of a text secret as the key
  should instead be given ``whsec_`` + base64 of those bytes.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import re
import threading
import time
from datetime import datetime, timezone

from ..errors import Invalid

__all__ = ["SECRET_PREFIX", "new_webhook_id", "signing_key", "validate_secret", "webhook_headers"]

SECRET_PREFIX = "whsec_"

_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def webhook_headers(msg_id: str, timestamp: datetime, body: bytes, secret: str | None) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and, when ``secret`` is set, ``webhook-signature``.

    A naive ``timestamp`` is taken as UTC, as the standardwebhooks library does.
    """
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=timezone.utc)
    seconds = str(math.floor(timestamp.timestamp()))
    headers = {"webhook-id": msg_id, "webhook-timestamp": seconds}
    if secret:
        # Signed over the bytes as sent, so bodies never need to round-trip through str.
        signed = f"{msg_id}.{seconds}.".encode() + body
        digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
        headers["webhook-signature"] = "v1," + base64.b64encode(digest).decode("ascii")
    return headers


def validate_secret(secret: str) -> None:
    """Raise ``Invalid`` unless ``secret`` yields a signing key (see the module docstring)."""
    signing_key(secret)


def signing_key(secret: str) -> bytes:
    """The HMAC key for ``secret``; raises ``Invalid`` for a malformed secret."""
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :]
        # The prefixed form is a promise of base64: refuse stray characters instead of dropping them.
        if not _BASE64.match(encoded):
            raise Invalid(
                "secret: after 'whsec_' expect base64 (A-Z, a-z, 0-9, '+', '/')",
                details={"field": "secret"},
            )
    else:
        encoded = secret
    try:
        # Padding is optional, as in the library (b64decode ignores surplus '=').
        key = base64.b64decode(encoded + "==")
    except (binascii.Error, ValueError) as exc:
        raise Invalid(
            "secret: not valid base64; use 'whsec_' followed by base64 of at least one byte",
            details={"field": "secret"},
        ) from exc
    if not key:
        raise Invalid("secret: must not be empty", details={"field": "secret"})
    return key


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_id_lock = threading.Lock()
_last_ms = 0
_last_random = 0


def new_webhook_id() -> str:
    """``msg_`` + a ULID: 26 characters that sort by creation time, monotonic within this process."""
    global _last_ms, _last_random
    with _id_lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_ms:
            # Same millisecond (or a clock step back): count up so ids still sort in creation order.
            now_ms = _last_ms
            rand = (_last_random + 1) & ((1 << 80) - 1)
            if rand == 0:
                now_ms += 1
        else:
            rand = int.from_bytes(os.urandom(10), "big")
        _last_ms, _last_random = now_ms, rand
    value = (now_ms << 80) | rand
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "msg_" + "".join(reversed(chars))
