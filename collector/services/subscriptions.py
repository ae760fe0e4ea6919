"""Subscriptions: who is told about which domain's (or group's) block events, and how.

Anyone may subscribe a domain they control: the subscription waits
(``pending``) until the domain shows the challenge token (TXT record or
well-known file, ``collector.alerts.verify``). With the admin token it is active
at once. The answer to a subscription carries a management token (``bwm_...``,
shown once, stored hashed) with which its owner lists, pauses, resumes, rotates
the secret of and deletes it, and, for webhooks, the signing secret
(``whsec_...``, shown once). Channel settings that are secrets (access tokens)
are never shown back.

Secrets at rest (collector/core/secrets.py): the channel settings, the signing
secret and the one it replaced are stored sealed, on every write here; the
outbox opens them to send. ``rotate`` keeps the old secret signing beside the
new one for ``ROTATION_OVERLAP``, so that a receiver switches without losing a
message. ``seal_stored`` seals what an older version left clear (at startup)
and re-seals with a new key (``secrets rotate``); ``sealing_status`` counts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from collector.alerts import channels, signing
from collector.alerts.verify import FILE_PATH, TXT_PREFIX, file_url
from collector.core.db import session_scope
from collector.core.errors import Conflict, NotFound, RateLimited, Unauthorized, Unprocessable
from collector.core.i18n import LANGUAGES, supported
from collector.core.models import SubscriptionRow, TargetGroupRow, TargetRow
from collector.core.secrets import VARIABLE, Keyring, Sealer, SecretKeyError, sealed_key_id
from collector.core.settings import CollectorSettings, Mode
from collector.netsafety import UnsafeDestination, check_literal, check_url, parse_allowlist
from collector.services.targets import normalize

URL_SETTINGS = ("url", "homeserver", "bot_instance", "instance_url")
log = logging.getLogger("blockwatch.collector.subscriptions")
# How long the replaced secret still signs after a rotation (both signatures sent).
ROTATION_OVERLAP = timedelta(hours=24)
SEALED_COLUMNS: tuple[str, ...] = ("settings", "secret", "previous_secret")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def subscription_json(row: SubscriptionRow, settings: CollectorSettings) -> dict[str, Any]:
    stored = json.loads(Sealer(settings).open(row.settings))
    shown = {k: v for k, v in stored.items() if k not in channels.SECRET_SETTINGS}
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
        **language_json(row, settings),
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


def language_json(row: SubscriptionRow, settings: CollectorSettings) -> dict[str, str]:
    """The language its messages are written in, and why: ``requested`` (the
    subscriber chose it), ``instance`` (its /api/v2/instance names it) or ``default``
    (the operator's ``--alert-language``, until the instance is asked)."""
    if row.language:
        return {"language": row.language, "language_source": "requested"}
    if row.instance_language:
        return {"language": row.instance_language, "language_source": "instance"}
    return {"language": settings.alert_language, "language_source": "default"}


def parse_language(value: str | None) -> str | None:
    """A subscription's language (``en``, ``zh-Hans``; ``zh-CN``, ``zh`` and the like
    mean zh-Hans), or None for "the instance's own"."""
    if value is None or value == "":
        return None
    language = supported(value)
    if language is None:
        raise Unprocessable(
            f"language must be one of {', '.join(LANGUAGES)} (or null for the instance's own)",
            "err_language",
        )
    return language


class SubscriptionService:
    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self.sealer = Sealer(settings)
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
        language: str | None = None,
    ) -> tuple[SubscriptionRow, str]:
        """A new subscription and its management token (``secret(row)`` opens its secret)."""
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
        if not admin:
            self._check_queue(session, domain)
        token = "bwm_" + secrets.token_urlsafe(24)
        row = SubscriptionRow(
            id="sub_" + secrets.token_hex(8),
            domain=domain,
            group_name=group,
            channel=channel,
            settings=self.sealer.seal(json.dumps(cleaned)),
            secret=self.sealer.seal(signing.new_secret()) if channel == "webhook" else None,
            state="active" if admin else "pending",
            challenge=None if admin else "bwv_" + secrets.token_urlsafe(24),
            manage_hash=_hash(token),
            language=parse_language(language),
        )
        session.add(row)
        session.flush()
        return row, token

    def _check_queue(self, session: Session, domain: str | None) -> None:
        """Anyone may ask, unauthenticated: the queue of unverified requests is bounded,
        overall and per domain (a flood for one instance cannot crowd out the others)."""
        pending = select(func.count()).where(SubscriptionRow.state == "pending")
        if (session.scalar(pending) or 0) >= self.settings.max_pending_subscriptions:
            raise RateLimited("too many subscriptions wait for their ownership check", 3600)
        if domain is not None:
            mine = pending.where(SubscriptionRow.domain == domain)
            if (session.scalar(mine) or 0) >= self.settings.max_pending_per_domain:
                raise RateLimited(
                    f"too many subscriptions of {domain} wait for their ownership check: "
                    "verify or delete one",
                    3600,
                )

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

    def mark_verified(
        self, row: SubscriptionRow, now: datetime, instance_language: str | None = None
    ) -> None:
        if row.state != "pending":
            raise Conflict(f"the subscription is {row.state}, not pending", "err_not_pending")
        row.state, row.verified_at, row.challenge = "active", now, None
        if instance_language is not None:
            row.instance_language = instance_language

    def set_language(self, row: SubscriptionRow, language: str | None) -> None:
        """Write its messages in *language* from the next one on; None: the instance's."""
        row.language = parse_language(language)

    def pause(self, row: SubscriptionRow) -> None:
        if row.state in ("pending", "disabled"):
            raise Conflict(f"the subscription is {row.state}", "err_not_active")
        row.state = "paused"

    def resume(self, row: SubscriptionRow) -> None:
        if row.state not in ("paused", "failing", "disabled"):
            raise Conflict(f"the subscription is {row.state}", "err_not_paused")
        row.state, row.failing_since = "active", None

    def secret(self, row: SubscriptionRow) -> str | None:
        """The signing secret in clear: for its one-time display, never for a listing."""
        return self.sealer.open_optional(row.secret)

    def rotate(self, row: SubscriptionRow, now: datetime) -> str:
        """A new signing secret (returned in clear, once); the old one signs for a day more.

        Rotating again within the overlap drops the oldest: only the secret being
        replaced keeps signing."""
        if row.channel != "webhook":
            raise Conflict("only webhooks have a signing secret", "err_no_secret")
        new = signing.new_secret()
        # The old value moves as it is stored (sealed): it need not be opened.
        row.previous_secret, row.previous_secret_until = row.secret, now + ROTATION_OVERLAP
        row.secret = self.sealer.seal(new)
        return new

    def delete(self, session: Session, row: SubscriptionRow) -> None:
        session.delete(row)
        session.flush()


def seal_at_startup(
    settings: CollectorSettings, sessions: sessionmaker[Session], now: datetime
) -> None:
    """Find the key (a lone instance makes its file now), then seal what is still clear.

    A malformed key refuses the start; no key at all only in production (the lab
    and demo modes on PostgreSQL run without, until something must be sealed).
    Values sealed with a key the collector lacks are reported, by key id: their
    deliveries fail (and are retried) until the key is given back."""
    sealer = Sealer(settings)
    try:
        sealer.keyring()
        written = seal_stored(sessions, sealer, now).written
    except SecretKeyError as exc:
        if exc.code == "err_no_secret_key" and settings.mode is not Mode.PRODUCTION:
            log.warning("secrets at rest: %s", exc.message)
            return
        log.error("secrets at rest: %s", exc.message)
        raise
    if written:
        log.info("secrets at rest: %d stored values sealed or forgotten", written)
    with session_scope(sessions) as session:
        unknown = [k for k in sealing_status(session, sealer)["keys"] if k["role"] == "unknown"]
    for key in unknown:
        count = sum(key[c] for c in SEALED_COLUMNS)
        log.error(
            "secrets at rest: %d stored values are sealed with key %s, which %s lacks",
            count,
            key["id"],
            VARIABLE,
        )


@dataclass(frozen=True)
class Sealing:
    """What ``seal_stored`` did: values written, and values no key opened (left as they are)."""

    written: int
    unopened: int


def seal_stored(
    sessions: sessionmaker[Session], sealer: Sealer, now: datetime, *, reseal: bool = False
) -> Sealing:
    """Seal the values still clear (*reseal*: and those another key than the first sealed),
    and forget replaced secrets past their overlap.

    Safe with several processes at once (replicas starting together): every write
    is a compare-and-set on the value read, so a value another process sealed or
    rotated meanwhile is left alone. Rows are written in id order (no deadlock)."""
    keyring = sealer.keyring() if reseal else None
    written = unopened = 0
    with session_scope(sessions) as session:
        rows = session.execute(
            select(
                SubscriptionRow.id,
                SubscriptionRow.previous_secret_until,
                *(getattr(SubscriptionRow, c) for c in SEALED_COLUMNS),
            ).order_by(SubscriptionRow.id)
        ).all()
        for row in rows:
            until = row.previous_secret_until
            columns: tuple[str, ...] = SEALED_COLUMNS
            if until is not None and until <= now:
                written += _forget_previous(session, row.id, until)
                columns = tuple(c for c in columns if c != "previous_secret")
            for column in columns:
                value = getattr(row, column)
                if value is None or not _stale(value, keyring):
                    continue
                keyring = keyring or sealer.keyring()  # asked only when something is clear
                try:
                    sealed = keyring.reseal(value)
                except SecretKeyError:  # sealed with a key we lack: kept, counted
                    unopened += 1
                    continue
                written += _swap(session, row.id, column, value, sealed)
    return Sealing(written, unopened)


def _stale(value: str, keyring: Keyring | None) -> bool:
    kid = sealed_key_id(value)
    return kid is None or (keyring is not None and kid != keyring.ids[0])


def _swap(session: Session, sub_id: str, column: str, old: str, new: str) -> int:
    attribute = getattr(SubscriptionRow, column)
    result = session.execute(
        update(SubscriptionRow)
        .where(SubscriptionRow.id == sub_id, attribute == old)
        .values({column: new})
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], result).rowcount


def _forget_previous(session: Session, sub_id: str, until: datetime) -> int:
    result = session.execute(
        update(SubscriptionRow)
        .where(SubscriptionRow.id == sub_id, SubscriptionRow.previous_secret_until == until)
        .values(previous_secret=None, previous_secret_until=None)
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], result).rowcount


def sealing_status(session: Session, sealer: Sealer) -> dict[str, Any]:
    """How many stored values each key sealed, per column, and how many are clear.

    ``{"keys": [{"id", "role": "sealing|opening|unknown", "settings", "secret",
    "previous_secret"}], "clear": {column: N}, "source", "error"}``; no value shown."""
    counts: dict[str, Counter[str]] = {c: Counter() for c in SEALED_COLUMNS}
    for row in session.execute(select(*(getattr(SubscriptionRow, c) for c in SEALED_COLUMNS))):
        for column, value in zip(SEALED_COLUMNS, row, strict=True):
            if value is not None:
                counts[column][sealed_key_id(value) or "clear"] += 1
    ids: tuple[str, ...] = ()
    source, error = None, None
    try:
        keyring = sealer.keyring()
        ids, source = keyring.ids, keyring.source
    except SecretKeyError as exc:
        error = exc.message
    seen = {kid for c in counts.values() for kid in c if kid != "clear"}
    keys = [
        {
            "id": kid,
            "role": "sealing" if ids[:1] == (kid,) else "opening" if kid in ids else "unknown",
            **{column: counts[column][kid] for column in SEALED_COLUMNS},
        }
        for kid in [*ids, *sorted(seen - set(ids))]
    ]
    clear = {column: counts[column]["clear"] for column in SEALED_COLUMNS}
    return {"keys": keys, "clear": clear, "source": source, "error": error}
