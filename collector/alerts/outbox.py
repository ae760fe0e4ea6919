"""The durable outbox: event changes fanned out to subscriptions, sent at least once.

1. ``fan_out`` (one process: the lease holder) reads the event changes after
   its cursor (``cursors.alerts``) and writes one delivery per matching
   subscription, in the same transaction as the cursor: a crash repeats
   nothing and loses nothing. An ``updated`` change is throttled: it waits
   ``alert_update_interval`` after the last message about that event to that
   subscriber, and a later update replaces a still-unsent one (one message per
   change that matters, never one per network or probe).
2. ``claim`` marks due deliveries ``sending`` with a lease; on PostgreSQL the
   rows are picked ``FOR UPDATE SKIP LOCKED``, so several collector processes
   send in parallel and never the same delivery; on SQLite one UPDATE is atomic.
   A process that dies while sending leaves a lease that expires: the delivery
   is sent again (at least once; receivers dedupe by ``webhook-id``).
3. ``send`` makes the request through the guarded resolver (no private
   ranges, no rebinding gap), with a timeout and a response size cap. 2xx:
   delivered. 410: the endpoint is gone, the subscription is disabled.
   Anything else: retried on the Standard Webhooks schedule (5 s, 5 min, 30 min,
   2 h, 5 h, 10 h, 10 h: about a day) with jitter, or later if ``Retry-After``
   says so; then dead, and the subscription is marked failing. The
   subscription's settings and secrets are stored sealed
   (collector/core/secrets.py): they are opened here, in memory, for the
   request only. A secret none of the keys opens is a failed attempt, retried
   like any other (the operator may add the missing key), and logged by key id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from collector.alerts import channels, verify
from collector.core import metrics
from collector.core.clock import Clock
from collector.core.db import session_scope
from collector.core.models import (
    CursorRow,
    DeliveryRow,
    EventChangeRow,
    NetworkStateRow,
    SubscriptionRow,
    TargetRow,
)
from collector.core.publication import Publication, network_volunteers
from collector.core.secrets import Sealer, SecretKeyError
from collector.core.settings import CollectorSettings
from collector.netsafety import (
    MAX_RESPONSE_BYTES,
    GuardedResolver,
    UnsafeDestination,
    check_literal,
    parse_allowlist,
)

log = logging.getLogger("blockwatch.collector.alerts")
CURSOR = "alerts"
RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000)  # seconds, Standard Webhooks
LIVE_STATES = ("active", "failing")
FAILING_AFTER = 3  # consecutive failed attempts before a subscription shows as failing
MAX_RETRY_AFTER = 86400.0


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def retry_delay(attempts: int, retry_after: float | None, rng: random.Random) -> float | None:
    """Seconds until the next attempt after *attempts* failed ones; None: give up."""
    if attempts > len(RETRY_SCHEDULE):
        return None
    delay = RETRY_SCHEDULE[attempts - 1] * rng.uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def _unsent_update(subscription_id: str, event_id: int) -> ColumnElement[bool]:
    """An ``updated`` delivery to this subscriber about this event, never attempted."""
    return and_(
        DeliveryRow.subscription_id == subscription_id,
        DeliveryRow.event_id == event_id,
        DeliveryRow.kind == "updated",
        DeliveryRow.state == "pending",
        DeliveryRow.attempts == 0,
    )


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    from email.utils import parsedate_to_datetime  # noqa: PLC0415

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - now).total_seconds())


class Outbox:
    def __init__(
        self,
        settings: CollectorSettings,
        clock: Clock,
        sessions: sessionmaker[Session],
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.sessions = sessions
        self.rng = rng or random.Random()  # noqa: S311 (retry jitter, not a secret)
        self.publication = Publication.public(settings)
        self.sealer = Sealer(settings)
        allow = parse_allowlist(settings.webhook_allowlist)
        if settings.webhook_allow_private:
            allow += parse_allowlist("0.0.0.0/0,::/0")
        self.allow = allow
        # A sender that died mid-request: its claim lapses after a few request timeouts.
        self.sending_lease = timedelta(seconds=max(5.0, 3 * settings.alert_timeout))
        # domain -> (the instance's language or None, until when that answer holds)
        self.languages: dict[str, tuple[str | None, datetime]] = {}

    # -- 1. fan-out ------------------------------------------------------------------

    def fan_out(self, limit: int = 1000) -> int:
        """Deliveries for the event changes after the cursor; the number written."""
        written = 0
        with session_scope(self.sessions) as session:
            cursor = session.get(CursorRow, CURSOR)
            if cursor is None:
                cursor = CursorRow(name=CURSOR, position=0)
                session.add(cursor)
                session.flush()
            changes = list(
                session.scalars(
                    select(EventChangeRow)
                    .where(EventChangeRow.id > cursor.position)
                    .order_by(EventChangeRow.id)
                    .limit(limit)
                )
            )
            now = self.clock.now()
            for change in changes:
                written += self._fan_out_one(session, change, now)
                cursor.position = change.id
        return written

    def _subscribers(self, session: Session, domain: str) -> list[SubscriptionRow]:
        target = session.scalar(select(TargetRow).where(TargetRow.domain == domain))
        group = target.group.name if target is not None and target.group else None
        match = SubscriptionRow.domain == domain
        if group is not None:
            match = or_(match, SubscriptionRow.group_name == group)
        return list(
            session.scalars(
                select(SubscriptionRow).where(match, SubscriptionRow.state.in_(LIVE_STATES))
            )
        )

    def document(self, session: Session, change: EventChangeRow) -> dict[str, Any]:
        """The webhook document ``{type, timestamp, data}`` of one change."""
        return self._document(session, change, json.loads(change.snapshot))

    def _document(
        self, session: Session, change: EventChangeRow, data: dict[str, Any]
    ) -> dict[str, Any]:
        """The document around *data*, the change's snapshot (parsed), which it extends.

        k-anonymous and rounded like a public answer (collector/core/publication.py):
        a verified subscriber is whoever runs the instance, and may forward it.
        """
        base = self.settings.public_url.rstrip("/") or (
            f"http://{self.settings.host}:{self.settings.port}"
        )
        key = (data["domain"], data["cc"])
        data = self.publication.event(data, network_volunteers(session, [key]).get(key, {}))
        data["evidence_url"] = f"{base}/api/v1/events/{data['id']}"
        data["page_url"] = f"{base}/events/{data['id']}"
        data["mirrors"] = self._mirrors(session, data["domain"], data["cc"])
        timestamp = self.publication.time(_iso(change.at))
        return {"type": f"block.{change.kind}", "timestamp": timestamp, "data": data}

    def _mirrors(self, session: Session, domain: str, cc: str) -> list[dict[str, Any]]:
        target = session.scalar(select(TargetRow).where(TargetRow.domain == domain))
        if target is None or target.group_id is None:
            return []
        out = []
        for other in session.scalars(
            select(TargetRow).where(
                TargetRow.group_id == target.group_id, TargetRow.domain != domain
            )
        ):
            states = {
                row.state
                for row in session.scalars(
                    select(NetworkStateRow).where(
                        NetworkStateRow.domain == other.domain, NetworkStateRow.cc == cc
                    )
                )
            }
            if "blocked" in states:
                state = "blocked"
            elif states == {"ok"}:
                state = "ok"
            elif "ok" in states:
                state = "partly"
            else:
                state = "unknown"
            out.append({"domain": other.domain, "kind": other.kind, "state": state})
        return sorted(out, key=lambda m: str(m["domain"]))

    def _fan_out_one(self, session: Session, change: EventChangeRow, now: datetime) -> int:
        snapshot = json.loads(change.snapshot)  # read once: who gets it, and the document
        subscribers = self._subscribers(session, snapshot["domain"])
        if not subscribers:
            return 0
        document = json.dumps(self._document(session, change, snapshot))
        return sum(self._queue(session, sub, change, document, now) for sub in subscribers)

    def _queue(
        self,
        session: Session,
        sub: SubscriptionRow,
        change: EventChangeRow,
        document: str,
        now: datetime,
    ) -> int:
        """One subscriber's delivery of *change*; 0 when it replaced an unsent update."""
        unsent = _unsent_update(sub.id, change.event_id)
        due = now
        if change.kind == "closed":
            # The end supersedes an update not sent yet: it would arrive after it.
            session.execute(update(DeliveryRow).where(unsent).values(state="superseded"))
        if change.kind == "updated":
            pending = session.scalar(select(DeliveryRow).where(unsent))
            if pending is not None:  # not sent yet: the newer state replaces it
                pending.payload = document
                return 0
            due = self._update_due(session, sub.id, change.event_id, now)
        session.add(
            DeliveryRow(
                subscription_id=sub.id,
                event_id=change.event_id,
                kind=change.kind,
                message_id=f"msg_{change.id}_{sub.id}",
                payload=document,
                state="pending",
                attempts=0,
                next_attempt_at=due,
                created_at=now,
            )
        )
        return 1

    def _update_due(
        self, session: Session, subscription_id: str, event_id: int, now: datetime
    ) -> datetime:
        """An update waits the throttle interval after the last message about the event."""
        last = session.scalar(
            select(func.max(DeliveryRow.created_at)).where(
                DeliveryRow.subscription_id == subscription_id,
                DeliveryRow.event_id == event_id,
            )
        )
        if last is None:
            return now
        return max(now, last + timedelta(seconds=self.settings.alert_update_interval))

    # -- 2. claim --------------------------------------------------------------------

    def claim(self, limit: int = 50) -> list[int]:
        """Mark due deliveries ``sending`` for this process; their ids."""
        now = self.clock.now()
        due_filter = or_(
            and_(DeliveryRow.state == "pending", DeliveryRow.next_attempt_at <= now),
            and_(DeliveryRow.state == "sending", DeliveryRow.lease_until < now),
        )
        with session_scope(self.sessions) as session:
            due = select(DeliveryRow.id).where(due_filter).order_by(DeliveryRow.next_attempt_at)
            due = due.limit(limit)
            if session.get_bind().dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            claimed = session.scalars(
                update(DeliveryRow)
                .where(DeliveryRow.id.in_(due.scalar_subquery()), due_filter)
                .values(state="sending", lease_until=now + self.sending_lease)
                .returning(DeliveryRow.id)
            ).all()
        return list(claimed)

    # -- 3. send ---------------------------------------------------------------------

    def http_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.allow), limit=32)
        timeout = aiohttp.ClientTimeout(total=self.settings.alert_timeout)
        return aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def send_due(self, http: aiohttp.ClientSession, limit: int = 50) -> int:
        """Claim and send what is due; the number of deliveries attempted.

        Three transactions per batch (claim, load, record), whatever its size."""
        ids = await asyncio.to_thread(self.claim, limit)
        if not ids:
            return 0
        loaded = await asyncio.to_thread(self._load, ids)
        live = [(d, s) for d, s in loaded if s.state in LIVE_STATES]
        parked = [(d.id, s.state == "paused") for d, s in loaded if s.state not in LIVE_STATES]
        outcomes = await asyncio.gather(*(self._attempt(http, d, s) for d, s in live))
        results = [(d.id, s.id, *outcome) for (d, s), outcome in zip(live, outcomes, strict=True)]
        await asyncio.to_thread(self._record_all, results, parked)
        return len(ids)

    def _load(self, ids: list[int]) -> list[tuple[DeliveryRow, SubscriptionRow]]:
        with session_scope(self.sessions) as session:
            rows = session.execute(
                select(DeliveryRow, SubscriptionRow)
                .join(SubscriptionRow, SubscriptionRow.id == DeliveryRow.subscription_id)
                .where(DeliveryRow.id.in_(ids))
            ).all()
            pairs = [(d, s) for d, s in rows]
            session.expunge_all()
        return pairs

    async def _attempt(
        self, http: aiohttp.ClientSession, delivery: DeliveryRow, sub: SubscriptionRow
    ) -> tuple[int | None, str | None, float | None]:
        document = json.loads(delivery.payload)
        try:
            settings = json.loads(self.sealer.open(sub.settings))
            if sub.channel == "mastodon":
                request = await self._mastodon_request(http, sub, settings, delivery, document)
            else:
                now = self.clock.now()
                request = channels.build(
                    sub.channel,
                    settings,
                    self.sealer.open_optional(sub.secret),
                    delivery.message_id,
                    int(now.timestamp()),
                    document,
                    self._previous_secret(sub, now),
                    await self.language(sub, document["data"]["domain"]),
                )
            check_literal(request.url, self.allow)
            async with http.request(
                request.method,
                request.url,
                headers=request.headers,
                data=request.body,
                allow_redirects=False,
            ) as answer:
                await answer.content.read(MAX_RESPONSE_BYTES)
                retry_after = parse_retry_after(answer.headers.get("Retry-After"), self.clock.now())
                if 200 <= answer.status < 300:
                    return answer.status, None, None
                return answer.status, f"HTTP {answer.status}", retry_after
        except UnsafeDestination as exc:
            return None, f"refused: {exc}"[:200], None
        except SecretKeyError as exc:  # names key ids only, never a key or a secret
            log.error("subscription %s: %s", sub.id, exc.message)
            return None, exc.code, None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError) as exc:
            return None, type(exc).__name__, None

    def _previous_secret(self, sub: SubscriptionRow, now: datetime) -> str | None:
        """The secret a rotation replaced, while it still signs (services.subscriptions)."""
        until = sub.previous_secret_until
        if sub.previous_secret is None or until is None or until <= now:
            return None
        return self.sealer.open(sub.previous_secret)

    async def _mastodon_request(
        self,
        http: aiohttp.ClientSession,
        sub: SubscriptionRow,
        settings: dict[str, Any],
        delivery: DeliveryRow,
        document: dict[str, Any],
    ) -> channels.Request:
        domain = document["data"]["domain"]
        ask = channels.mastodon_contact_request(domain, settings)
        check_literal(ask.url, self.allow)
        async with http.get(ask.url, allow_redirects=False) as answer:
            body = await answer.content.read(MAX_RESPONSE_BYTES)
            if answer.status != 200:
                raise ValueError(f"instance description: HTTP {answer.status}")
        description = json.loads(body)
        contact = channels.mastodon_contact(description, domain)
        if contact is None:
            raise ValueError("the instance names no contact account")
        language = sub.language or channels.instance_language(description)
        if language is None:
            language = await self.language(sub, domain)
        return channels.mastodon_status(settings, contact, delivery.message_id, document, language)

    async def language(self, sub: SubscriptionRow, domain: str) -> str:
        """The language of *sub*'s messages about *domain*: the one it asked for, else
        its instance's (learned at verification, else asked now and remembered a day),
        else the operator's default (``--alert-language``)."""
        found = sub.language or sub.instance_language
        if found is None:
            now = self.clock.now()
            cached = self.languages.get(domain)
            if cached is not None and cached[1] > now:
                found = cached[0]
            else:
                found = await verify.instance_language(self.settings, domain, self.allow)
                hold = timedelta(days=1) if found is not None else timedelta(hours=1)
                self.languages[domain] = (found, now + hold)
        return found or self.settings.alert_language

    def _record_all(
        self,
        results: list[tuple[int, str, int | None, str | None, float | None]],
        parked: list[tuple[int, bool]],
    ) -> None:
        now = self.clock.now()
        with session_scope(self.sessions) as session:
            # Two queries fill the identity map: the gets below cost no round trip.
            ids = [r[0] for r in results] + [p[0] for p in parked]
            list(session.scalars(select(DeliveryRow).where(DeliveryRow.id.in_(ids))))
            subs = {r[1] for r in results}
            list(session.scalars(select(SubscriptionRow).where(SubscriptionRow.id.in_(subs))))
            for delivery_id, later in parked:
                delivery = session.get(DeliveryRow, delivery_id)
                if delivery is None:
                    continue
                if later:  # paused: try again later
                    delivery.state, delivery.next_attempt_at = "pending", now + timedelta(minutes=5)
                else:  # disabled or unverified: never
                    delivery.state, delivery.last_error = "dead", "subscription not active"
                delivery.lease_until = None
            for delivery_id, sub_id, status, error, retry_after in results:
                self._record(session, now, delivery_id, sub_id, status, error, retry_after)

    def _record(
        self,
        session: Session,
        now: datetime,
        delivery_id: int,
        subscription_id: str,
        status: int | None,
        error: str | None,
        retry_after: float | None,
    ) -> None:
        delivery = session.get(DeliveryRow, delivery_id)
        sub = session.get(SubscriptionRow, subscription_id)
        if delivery is None or sub is None:
            return
        delivery.attempts += 1
        delivery.last_status, delivery.last_error = status, error
        delivery.lease_until = None
        if error is None:
            delivery.state, delivery.delivered_at = "delivered", now
            sub.last_delivery_at = now
            if sub.state == "failing":
                sub.state, sub.failing_since, sub.last_error = "active", None, None
            metrics.DELIVERIES.labels(outcome="delivered").inc()
            return
        sub.last_error = error
        if status == 410:
            delivery.state = "dead"
            sub.state, sub.last_error = "disabled", "the endpoint answered 410 Gone"
            log.warning("subscription %s disabled: 410 Gone", sub.id)
            metrics.DELIVERIES.labels(outcome="gone").inc()
            return
        delay = retry_delay(delivery.attempts, retry_after, self.rng)
        if delay is None:
            delivery.state = "dead"
            metrics.DELIVERIES.labels(outcome="dead").inc()
        else:
            delivery.state = "pending"
            delivery.next_attempt_at = now + timedelta(seconds=delay)
            metrics.DELIVERIES.labels(outcome="retry").inc()
        if (delivery.attempts >= FAILING_AFTER or delay is None) and sub.state == "active":
            sub.state, sub.failing_since = "failing", now
            log.warning("subscription %s is failing (%s)", sub.id, error)

    def gauges(self) -> None:
        with session_scope(self.sessions) as session:
            metrics.OUTBOX_PENDING.set(
                session.scalar(
                    select(func.count())
                    .select_from(DeliveryRow)
                    .where(DeliveryRow.state.in_(("pending", "sending")))
                )
                or 0
            )
            metrics.FAILING_SUBSCRIPTIONS.set(
                session.scalar(
                    select(func.count())
                    .select_from(SubscriptionRow)
                    .where(SubscriptionRow.state == "failing")
                )
                or 0
            )
