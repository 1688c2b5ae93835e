from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from pushbase.errors import Invalid
from pushbase.outbound import OutboundClient
from pushbase.push.signing import new_webhook_id, signing_key, validate_secret, webhook_headers
from tests.receivers import Receiver

# The example secret of the Standard Webhooks specification.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'[{"order_id": 1, "total": 9.5}]'


def now() -> datetime:
    return datetime.now(timezone.utc)


def test_signed_headers_verify_with_standardwebhooks() -> None:
    headers = webhook_headers("msg_1", now(), BODY, SECRET)
    assert Webhook(SECRET).verify(BODY, headers) == [{"order_id": 1, "total": 9.5}]
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-signature"].startswith("v1,")


def test_signature_matches_the_library_signer() -> None:
    at = datetime(2024, 5, 1, 12, 0, 0, 900_000, tzinfo=timezone.utc)
    headers = webhook_headers("msg_2", at, BODY, SECRET)
    assert headers["webhook-timestamp"] == "1714564800"
    assert headers["webhook-signature"] == Webhook(SECRET).sign("msg_2", at, BODY.decode())


def test_without_a_secret_there_is_no_signature() -> None:
    headers = webhook_headers("msg_3", now(), BODY, None)
    assert set(headers) == {"webhook-id", "webhook-timestamp"}
    assert headers["webhook-timestamp"].isdigit()


def test_a_tampered_body_does_not_verify() -> None:
    headers = webhook_headers("msg_4", now(), BODY, SECRET)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY.replace(b"9.5", b"0.5"), headers)


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_" + base64.b64encode(b"0123456789abcdef0123456789").decode().rstrip("="),  # unpadded
        base64.b64encode(b"a secret without the prefix").decode(),
        "plainsecret",  # no prefix: keyed by its base64 decoding, as the library does
    ],
)
def test_other_secret_forms_are_keyed_like_the_library(secret: str) -> None:
    validate_secret(secret)
    headers = webhook_headers("msg_5", now(), BODY, secret)
    Webhook(secret).verify(BODY, headers)


def test_the_key_of_a_prefixed_secret_is_its_base64_payload() -> None:
    assert signing_key("whsec_" + base64.b64encode(b"key bytes").decode()) == b"key bytes"


def test_timestamps_are_unix_seconds_whatever_the_zone() -> None:
    utc = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    paris = utc.astimezone(timezone(timedelta(hours=2)))
    naive = utc.replace(tzinfo=None)
    stamps = {webhook_headers("m", t, b"", None)["webhook-timestamp"] for t in (utc, paris, naive)}
    assert stamps == {"1714564800"}


@pytest.mark.parametrize("secret", ["whsec_", "whsec_!!!!", "whsec_abc$def", "whsec_a b", "whsec_abcde", ""])
def test_malformed_secrets_are_invalid(secret: str) -> None:
    with pytest.raises(Invalid):
        validate_secret(secret)


def test_webhook_ids_are_unique_and_sort_in_creation_order() -> None:
    ids = [new_webhook_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(i.startswith("msg_") and len(i) == 30 for i in ids)


@pytest.mark.asyncio
async def test_a_receiver_verifies_what_was_sent(receiver: Receiver) -> None:
    msg_id = new_webhook_id()
    headers = {"Content-Type": "application/json", **webhook_headers(msg_id, now(), BODY, SECRET)}
    async with OutboundClient(allow_private=True) as client:
        assert (await client.send("POST", receiver.url + "/hook", headers=headers, data=BODY, timeout=5)).ok
    request = receiver.requests[0]
    assert request.headers["webhook-id"] == msg_id
    Webhook(SECRET).verify(request.body, request.headers)
