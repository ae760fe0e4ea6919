"""Channel formats: what one delivery sends, for each kind of receiver.

A delivery's payload is the webhook document ``{"type", "timestamp", "data"}``
(docs/admin-guide.md); each channel turns it into one HTTP request, in the
subscriber's language (collector/alerts/texts.py). Chat channels get a short
human summary; the webhook gets the document itself with that summary beside
it (``language``, ``summary``), signed. The Mastodon channel needs two
requests (the instance's contact account, then the direct message), so it is a
small plan of steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from email.header import Header
from typing import Any
from urllib.parse import quote

from collector.alerts import signing, texts
from collector.core.i18n import first_supported

CHANNELS = ("webhook", "slack", "discord", "matrix", "ntfy", "mastodon")
# Settings each channel needs (besides the ones it may have).
REQUIRED: dict[str, tuple[str, ...]] = {
    "webhook": ("url",),
    "slack": ("url",),
    "discord": ("url",),
    "matrix": ("homeserver", "room_id", "access_token"),
    "ntfy": ("url",),
    "mastodon": ("bot_instance", "access_token"),
}
# Settings that are secrets: never shown back, never logged.
SECRET_SETTINGS = frozenset({"access_token"})


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def _json(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def build(
    channel: str,
    settings: dict[str, Any],
    secret: str | None,
    message_id: str,
    timestamp: int,
    document: dict[str, Any],
    previous_secret: str | None = None,
    language: str | None = None,
) -> Request:
    """The request for every channel but Mastodon (see ``mastodon_status``).

    *settings* and the secrets come opened (clear) from the outbox; a webhook is
    signed with *secret*, and with *previous_secret* too during a rotation."""
    json_headers = {"Content-Type": "application/json"}
    text = texts.summary(document, language)
    if channel == "webhook":
        body = _json(document | {"language": texts.language(language), "summary": text})
        assert secret is not None
        return Request(
            "POST",
            settings["url"],
            {
                **json_headers,
                **signing.headers(secret, message_id, timestamp, body, previous_secret),
            },
            body,
        )
    if channel == "slack":
        return Request("POST", settings["url"], json_headers, _json({"text": text}))
    if channel == "discord":
        return Request("POST", settings["url"], json_headers, _json({"content": text}))
    if channel == "ntfy":
        headers = {
            "Title": header_text(texts.title(document, language)),
            "Tags": "no_entry" if document["type"] != "block.closed" else "white_check_mark",
            "Priority": "high" if document["type"] == "block.opened" else "default",
        }
        return Request("POST", settings["url"], headers, text.encode())
    if channel == "matrix":
        url = (
            f"{settings['homeserver'].rstrip('/')}/_matrix/client/v3/rooms/"
            f"{quote(settings['room_id'], safe='')}/send/m.room.message/{quote(message_id)}"
        )
        headers = {**json_headers, "Authorization": f"Bearer {settings['access_token']}"}
        return Request("PUT", url, headers, _json({"msgtype": "m.text", "body": text}))
    raise ValueError(f"no direct request for channel {channel!r}")


def header_text(text: str) -> str:
    """A header value: as is when ASCII, else an RFC 2047 encoded-word (ntfy decodes it)."""
    return text if text.isascii() else Header(text, "utf-8").encode()


def mastodon_contact_request(domain: str, settings: dict[str, Any]) -> Request:
    """The instance's own description, which names its contact account."""
    base = settings.get("instance_url") or f"https://{domain}"
    return Request("GET", f"{base.rstrip('/')}/api/v2/instance")


def mastodon_contact(answer: Any, domain: str) -> str | None:
    """``@user@domain`` of the instance's contact account, from /api/v2/instance."""
    try:
        acct = answer["contact"]["account"]["acct"]
    except (KeyError, TypeError):
        return None
    if not isinstance(acct, str) or not acct:
        return None
    return f"@{acct}" if "@" in acct else f"@{acct}@{domain}"


def instance_language(answer: Any) -> str | None:
    """The language the instance's people read, from ``languages`` in its description
    (Mastodon's /api/v2/instance and /api/v1/instance: ISO 639-1 codes, the
    instance's own first), when Blockwatch has it; None otherwise."""
    try:
        tags = answer["languages"]
    except (KeyError, TypeError):
        return None
    return first_supported(tags) if isinstance(tags, list) else None


def mastodon_status(
    settings: dict[str, Any],
    contact: str,
    message_id: str,
    document: dict[str, Any],
    language: str | None = None,
) -> Request:
    """A direct message from the bot account, idempotent per delivery.

    Mastodon's limit is 500 characters (a CJK character counts one)."""
    status = f"{contact} {texts.summary(document, language)}"[:490]
    return Request(
        "POST",
        f"{settings['bot_instance'].rstrip('/')}/api/v1/statuses",
        {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {settings['access_token']}",
            "Idempotency-Key": message_id,
        },
        _json({"status": status, "visibility": "direct"}),
    )
