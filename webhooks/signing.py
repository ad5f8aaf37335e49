"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

Each request carries `webhook-id` (the event's message id, the same on every attempt),
`webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`: `v1,` and the base64
HMAC-SHA256, keyed with the endpoint's secret, of `id.timestamp.body`. Receivers verify it with any
Standard Webhooks library and reject timestamps more than a few minutes off.

An endpoint's secret (`whsec_` + base64 of 32 bytes) is never stored: it is an HMAC of the
endpoint's random salt under SECRET_KEY, so no row, dump or page holds it. While SECRET_KEY is being
rotated (the old key in SECRET_KEY_FALLBACKS), requests carry one signature per key, as the scheme
allows, so receivers holding the old secret keep verifying until they are given the new one.
"""

import base64
import hashlib
import hmac
import secrets

from django.conf import settings
from django.utils.crypto import salted_hmac

SECRET_PREFIX = "whsec_"


def new_salt() -> str:
    return secrets.token_hex(32)


def endpoint_secret(salt: str, *, key: str | None = None) -> str:
    """The signing secret of the endpoint with this salt, under SECRET_KEY (or `key`)."""
    digest = salted_hmac(
        "webhooks.endpoint.secret", salt, secret=key or settings.SECRET_KEY, algorithm="sha256"
    ).digest()
    return SECRET_PREFIX + base64.b64encode(digest).decode()


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(salt: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for this body, signed with the endpoint's secret under
    SECRET_KEY and under each of SECRET_KEY_FALLBACKS."""
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            signature(endpoint_secret(salt, key=key), message_id, timestamp, body) for key in keys
        ),
    }
