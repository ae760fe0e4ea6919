"""Alerts with sealed secrets, to real receivers on loopback, on SQLite and PostgreSQL.

A rotated webhook secret: for a day both signatures go out and a receiver holding
either secret verifies (with the ``standardwebhooks`` package, not our code), then
only the new one. A new sealing key: deliveries go on through the re-sealing; a
collector without the key fails each attempt clearly and loses nothing. Startup
sealing of clear rows keeps them deliverable. Chat tokens are opened to send.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from collector.alerts.outbox import Outbox
from collector.core.db import session_scope
from collector.core.models import DeliveryRow, SubscriptionRow
from collector.core.secrets import Sealer, generate_key
from collector.core.settings import CollectorSettings
from collector.services.subscriptions import (
    ROTATION_OVERLAP,
    SubscriptionService,
    seal_at_startup,
    seal_stored,
)
from tests.collector.alerts import test_delivery
from tests.collector.alerts.test_delivery import DOMAIN, Receiver, change, deliver, subscribe
from tests.collector.conftest import FakeClock

# The delivery tests' fixtures: the settings, the migrated database, a real receiver.
alert_settings = test_delivery.alert_settings
sessions = test_delivery.sessions
receiver = test_delivery.receiver


def keyed(settings: CollectorSettings, keys: str) -> CollectorSettings:
    return settings.model_copy(update={"secret_key": SecretStr(keys)})


def rotate(sessions: sessionmaker[Session], settings: CollectorSettings, clock: FakeClock,
           sub_id: str) -> str:  # fmt: skip
    with session_scope(sessions) as s:
        row = s.get(SubscriptionRow, sub_id)
        assert row is not None
        return SubscriptionService(settings).rotate(row, clock.now())


class ReceiverAt(Webhook):
    """The library's receiver, its clock the test's (deliveries a day later are fresh)."""

    def __init__(self, secret: str, clock: FakeClock) -> None:
        super().__init__(secret)
        self.clock = clock

    def _Webhook__verify_timestamp(self, timestamp_header: str) -> datetime:
        # The library's own check (5 minutes either way), against the test's clock.
        timestamp = datetime.fromtimestamp(float(timestamp_header), tz=UTC)
        if abs(timestamp - self.clock.now()) > timedelta(minutes=5):
            raise WebhookVerificationError("Message timestamp too old or too new")
        return timestamp


def verifies(secret: str, headers: dict[str, str], body: bytes, clock: FakeClock) -> bool:
    try:
        ReceiverAt(secret, clock).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


def hub_ok(secret: str, headers: dict[str, str], body: bytes) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Hub-Signature-256"], expected)


async def test_after_rotation_both_signatures_for_a_day_then_only_the_new_one(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    sub = subscribe(sessions, alert_settings, "webhook", url=receiver.url + "/hook")
    old = SubscriptionService(alert_settings).secret(sub)
    assert old is not None
    new = rotate(sessions, alert_settings, clock, sub.id)
    outbox = Outbox(alert_settings, clock, sessions)
    event_id = change(sessions, clock, "opened")
    assert await deliver(outbox) == 1
    [(_, _, headers, body)] = receiver.posts()
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verifies(old, headers, body, clock) and verifies(new, headers, body, clock)
    assert hub_ok(new, headers, body) and not hub_ok(old, headers, body)

    clock.offset_seconds += ROTATION_OVERLAP.total_seconds() - 60  # the day's last minute
    change(sessions, clock, "closed", event_id=event_id)
    assert await deliver(outbox) == 1
    _, _, headers, body = receiver.posts()[-1]
    assert verifies(old, headers, body, clock) and verifies(new, headers, body, clock)

    clock.offset_seconds += 120  # the overlap is over
    change(sessions, clock, "opened")
    assert await deliver(outbox) == 1
    _, _, headers, body = receiver.posts()[-1]
    assert len(headers["webhook-signature"].split(" ")) == 1
    assert verifies(new, headers, body, clock) and not verifies(old, headers, body, clock)


async def test_rotating_twice_within_the_day_drops_the_oldest(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    sub = subscribe(sessions, alert_settings, "webhook", url=receiver.url)
    first = SubscriptionService(alert_settings).secret(sub)
    assert first is not None
    second = rotate(sessions, alert_settings, clock, sub.id)
    third = rotate(sessions, alert_settings, clock, sub.id)
    change(sessions, clock, "opened")
    assert await deliver(Outbox(alert_settings, clock, sessions)) == 1
    [(_, _, headers, body)] = receiver.posts()
    assert verifies(third, headers, body, clock) and verifies(second, headers, body, clock)
    assert not verifies(first, headers, body, clock)


async def test_a_new_sealing_key_keeps_deliveries_working(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    old, new = generate_key(), generate_key()
    with_old = keyed(alert_settings, old)
    sub = subscribe(sessions, with_old, "webhook", url=receiver.url)
    secret = SubscriptionService(with_old).secret(sub)
    assert secret is not None
    # 1. Every collector gets "new,old": what the old key sealed still opens.
    both = keyed(alert_settings, f"{new},{old}")
    change(sessions, clock, "opened")
    assert await deliver(Outbox(both, clock, sessions)) == 1
    # 2. `secrets rotate` re-seals; 3. the old key is retired.
    assert seal_stored(sessions, Sealer(both), clock.now(), reseal=True).written == 2
    only_new = keyed(alert_settings, new)
    change(sessions, clock, "opened")
    assert await deliver(Outbox(only_new, clock, sessions)) == 1
    assert len(receiver.posts()) == 2
    assert all(verifies(secret, h, b, clock) for _, _, h, b in receiver.posts())


async def test_a_collector_without_the_key_fails_clearly_and_loses_nothing(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    right, wrong = generate_key(), generate_key()
    sub = subscribe(sessions, keyed(alert_settings, right), "webhook", url=receiver.url)
    change(sessions, clock, "opened")
    assert await deliver(Outbox(keyed(alert_settings, wrong), clock, sessions)) == 1
    assert receiver.posts() == []
    with session_scope(sessions) as s:
        [delivery] = s.scalars(select(DeliveryRow))
        assert (delivery.state, delivery.last_error) == ("pending", "err_unknown_secret_key")
    assert (
        "sealed with key" in caplog.text and right not in caplog.text and wrong not in caplog.text
    )
    clock.offset_seconds += 60  # past the first retry
    assert await deliver(Outbox(keyed(alert_settings, right), clock, sessions)) == 1
    [(_, _, headers, body)] = receiver.posts()
    secret = SubscriptionService(keyed(alert_settings, right)).secret(sub)
    assert secret is not None and verifies(secret, headers, body, clock)


async def test_rows_left_clear_are_sealed_at_startup_and_still_delivered(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    secret = "whsec_hXMd0pY7XQSOiZGFLMc+RLmF9uDjFHyl"
    with session_scope(sessions) as s:  # as the version before sealing wrote it
        s.add(SubscriptionRow(
            id="sub_old", domain=DOMAIN, group_name=None, channel="webhook",
            settings=json.dumps({"url": receiver.url}), secret=secret, state="active",
            manage_hash="h",
        ))  # fmt: skip
    seal_at_startup(alert_settings, sessions, clock.now())
    with sessions() as s:
        stored = s.execute(text("SELECT settings, secret FROM subscriptions")).one()
    assert secret not in stored[1] and receiver.url not in stored[0]
    change(sessions, clock, "opened")
    assert await deliver(Outbox(alert_settings, clock, sessions)) == 1
    [(_, _, headers, body)] = receiver.posts()
    assert verifies(secret, headers, body, clock) and hub_ok(secret, headers, body)


async def test_a_matrix_token_is_sealed_at_rest_and_opened_to_send(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    token = "syt_sealed_token_0123456789"
    subscribe(sessions, alert_settings, "matrix", homeserver=receiver.url,
              room_id="!room:example.org", access_token=token)  # fmt: skip
    with sessions() as s:
        assert token not in s.execute(text("SELECT settings FROM subscriptions")).scalar_one()
    change(sessions, clock, "opened")
    assert await deliver(Outbox(alert_settings, clock, sessions)) == 1
    [(method, _, headers, _)] = receiver.posts()
    assert (method, headers["Authorization"]) == ("PUT", f"Bearer {token}")
