"""Subscriptions: who is told about which domain's (or group's) block events, and how.

Anyone may subscribe a domain they control: the subscription waits
(``pending``) until the domain shows the challenge token (TXT record or
well-known file, ``collector.alerts.verify``). With the admin token it is active
at once. The answer to a subscription carries a management token (``bwm_...``,
shown once, stored hashed) with which its owner lists, pauses, resumes, rotates
the secret of and deletes it, and, for webhooks, the signing secret
(``whsec_...``, shown once). Channel settings that are secrets (access tokens)
are never shown back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from collector.alerts import channels, signing
from collector.alerts.verify import FILE_PATH, TXT_PREFIX, file_url
from collector.core.errors import Conflict, NotFound, Unauthorized, Unprocessable
from collector.core.models import SubscriptionRow, TargetGroupRow, TargetRow
from collector.core.settings import CollectorSettings, Mode
from collector.netsafety import UnsafeDestination, check_literal, check_url, parse_allowlist
from collector.services.targets import normalize

URL_SETTINGS = ("url", "homeserver", "bot_instance", "instance_url")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def subscription_json(row: SubscriptionRow, settings: CollectorSettings) -> dict[str, Any]:
    shown = {k: v for k, v in json.loads(row.settings).items() if k not in channels.SECRET_SETTINGS}
    out: dict[str, Any] = {
        "id": row.id,
        "domain": row.domain,
        "group": row.group_name,
        "channel": row.channel,
        "settings": shown,
        "state": row.state,
        "created_at": _iso(row.created_at),
        "verified_at": _iso(row.verified_at),
        "failing_since": _iso(row.failing_since),
        "last_error": row.last_error,
        "last_delivery_at": _iso(row.last_delivery_at),
    }
    if row.state == "pending" and row.challenge and row.domain:
        out["challenge"] = {
            "token": row.challenge,
            "txt_name": TXT_PREFIX + row.domain,
            "txt_value": row.challenge,
            "file_url": file_url(settings, row.domain),
            "file_path": FILE_PATH,
        }
    return out


class SubscriptionService:
    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self.allow = parse_allowlist(settings.webhook_allowlist)
        if settings.webhook_allow_private:
            self.allow += parse_allowlist("0.0.0.0/0,::/0")

    def _check_settings(self, channel: str, given: dict[str, Any]) -> dict[str, Any]:
        if channel not in channels.CHANNELS:
            raise Unprocessable(f"channel must be one of {channels.CHANNELS}", "err_channel")
        missing = [k for k in channels.REQUIRED[channel] if not given.get(k)]
        if missing:
            raise Unprocessable(
                f"channel {channel} needs {', '.join(missing)}", "err_channel_settings"
            )
        allow_http = (
            self.settings.webhook_allow_private or self.settings.mode is not Mode.PRODUCTION
        )
        cleaned: dict[str, Any] = {}
        for key, value in given.items():
            if not isinstance(value, str) or len(value) > 2000:
                raise Unprocessable(f"{key} must be a string", "err_channel_settings")
            if key in URL_SETTINGS:
                try:
                    check_url(value, allow_http=allow_http)
                    check_literal(value, self.allow)  # names are checked at each delivery
                except UnsafeDestination as exc:
                    raise Unprocessable(f"{key}: {exc}", "err_unsafe_url") from None
            cleaned[key] = value
        return cleaned

    def create(
        self,
        session: Session,
        *,
        domain: str | None,
        group: str | None,
        channel: str,
        channel_settings: dict[str, Any],
        admin: bool,
    ) -> tuple[SubscriptionRow, str]:
        """A new subscription and its management token (the row holds the secret)."""
        if (domain is None) == (group is None):
            raise Unprocessable("name a domain or a group, not both", "err_subscription_target")
        if domain is not None:
            domain = normalize(domain)
            if session.scalar(select(TargetRow.id).where(TargetRow.domain == domain)) is None:
                raise NotFound(f"{domain!r} is not a watched target", "err_unknown_target")
        if group is not None:
            if not admin:
                raise Unauthorized("only operators subscribe a whole group")
            if (
                session.scalar(select(TargetGroupRow.id).where(TargetGroupRow.name == group))
                is None
            ):
                raise NotFound(f"no group {group!r}", "err_unknown_group")
        cleaned = self._check_settings(channel, channel_settings)
        token = "bwm_" + secrets.token_urlsafe(24)
        row = SubscriptionRow(
            id="sub_" + secrets.token_hex(8),
            domain=domain,
            group_name=group,
            channel=channel,
            settings=json.dumps(cleaned),
            secret=signing.new_secret() if channel == "webhook" else None,
            state="active" if admin else "pending",
            challenge=None if admin else "bwv_" + secrets.token_urlsafe(24),
            manage_hash=_hash(token),
        )
        session.add(row)
        session.flush()
        return row, token

    def owned(self, session: Session, token: str | None, admin: bool) -> list[SubscriptionRow]:
        query = select(SubscriptionRow).order_by(SubscriptionRow.created_at)
        if not admin:
            if not token:
                raise Unauthorized("this needs `Authorization: Bearer <subscription token>`")
            query = query.where(SubscriptionRow.manage_hash == _hash(token))
        return list(session.scalars(query))

    def get(self, session: Session, sub_id: str, token: str | None, admin: bool) -> SubscriptionRow:
        row = session.get(SubscriptionRow, sub_id)
        if row is None:
            raise NotFound(f"no subscription {sub_id!r}")
        if not admin and not (token and hmac.compare_digest(row.manage_hash, _hash(token))):
            # The same answer as a missing one: ids are not secrets, but nor is their list.
            raise NotFound(f"no subscription {sub_id!r}")
        return row

    def mark_verified(self, row: SubscriptionRow, now: datetime) -> None:
        if row.state != "pending":
            raise Conflict(f"the subscription is {row.state}, not pending", "err_not_pending")
        row.state, row.verified_at, row.challenge = "active", now, None

    def pause(self, row: SubscriptionRow) -> None:
        if row.state in ("pending", "disabled"):
            raise Conflict(f"the subscription is {row.state}", "err_not_active")
        row.state = "paused"

    def resume(self, row: SubscriptionRow) -> None:
        if row.state not in ("paused", "failing", "disabled"):
            raise Conflict(f"the subscription is {row.state}", "err_not_paused")
        row.state, row.failing_since = "active", None

    def rotate(self, row: SubscriptionRow) -> str:
        if row.channel != "webhook":
            raise Conflict("only webhooks have a signing secret", "err_no_secret")
        row.secret = signing.new_secret()
        assert row.secret is not None
        return row.secret

    def delete(self, session: Session, row: SubscriptionRow) -> None:
        session.delete(row)
        session.flush()
