"""Webhook signatures: Standard Webhooks, and the X-Hub-Signature-256 Mastodon uses.

Standard Webhooks (standardwebhooks.com): the secret is ``whsec_`` + base64 of
random bytes; the signed content is ``{webhook-id}.{webhook-timestamp}.{body}``;
``webhook-signature`` is ``v1,`` + base64 of its HMAC-SHA256 with the decoded
secret. ``X-Hub-Signature-256`` is ``sha256=`` + hex of HMAC-SHA256 of the body
keyed with the whole secret string, as Mastodon's admin webhooks sign.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
SECRET_BYTES = 24


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def standard_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def hub_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers(
    secret: str, message_id: str, timestamp: int, body: bytes, previous: str | None = None
) -> dict[str, str]:
    """The signature headers; *previous*, a secret just rotated out, signs beside *secret*.

    Standard Webhooks lets ``webhook-signature`` carry several space-separated
    signatures (a receiver accepts any one it can check), which is how a rotation
    overlaps; ``X-Hub-Signature-256`` holds one, made with the new secret."""
    signatures = [standard_signature(secret, message_id, timestamp, body)]
    if previous is not None:
        signatures.append(standard_signature(previous, message_id, timestamp, body))
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
        "X-Hub-Signature-256": hub_signature(secret, body),
    }
