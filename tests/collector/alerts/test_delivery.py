"""Alerts end to end in-process: event changes in, signed HTTP requests to real receivers out.

The receivers are real aiohttp servers on loopback; every webhook signature is
checked with the ``standardwebhooks`` package (not our code) and the
``X-Hub-Signature-256`` header with hmac. The database is SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.header import decode_header, make_header
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from collector.alerts.outbox import RETRY_SCHEDULE, Outbox, retry_delay
from collector.core.db import make_engine, make_session_factory, migrate, session_scope
from collector.core.errors import Unprocessable
from collector.core.models import DeliveryRow, EventChangeRow, EventRow, SubscriptionRow
from collector.core.settings import CollectorSettings
from collector.netsafety import GuardedResolver, UnsafeDestination, parse_allowlist
from collector.services.events import event_json
from collector.services.subscriptions import SubscriptionService
from collector.services.targets import TargetService
from tests.collector.conftest import FakeClock
from tests.support.aiohttp_site import serve_app

DOMAIN = "alive.bar"


@dataclass
class Receiver:
    """An HTTP endpoint that records requests and answers from a script of statuses."""

    statuses: list[int] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    languages: list[str] | None = None  # the fake Mastodon's `languages`, when it has some
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.method, request.path, dict(request.headers), body))
        if request.path == "/api/v2/instance":  # the fake Mastodon's own description
            description: dict[str, Any] = {"contact": {"account": {"acct": "admin"}}}
            if self.languages is not None:
                description["languages"] = self.languages
            return web.json_response(description)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.json_response({"ok": status < 300}, status=status, headers=self.headers)

    def posts(self) -> list[tuple[str, str, dict[str, str], bytes]]:
        return [s for s in self.seen if s[1] != "/api/v2/instance"]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner, port = await serve_app(app)
    rec.url = f"http://127.0.0.1:{port}"
    yield rec
    await runner.cleanup()


@pytest.fixture
def alert_settings(settings: CollectorSettings) -> CollectorSettings:
    return settings.model_copy(
        update={
            "webhook_allowlist": "127.0.0.0/8",
            "public_url": "https://collector.example",
            "alert_update_interval": 60.0,
            # Every network named: these tests are about delivery; what an alert may
            # name is tests/collector/api/test_publication.py's.
            "publish_min_volunteers": 1,
        }
    )


@pytest.fixture
def sessions(alert_settings: CollectorSettings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(alert_settings.database_url)
    migrate(engine)
    factory = make_session_factory(engine)
    with session_scope(factory) as s:
        TargetService().add(s, [DOMAIN], group="alive")
        TargetService().add(s, ["alive-mirror.bar"], group="alive", kind="mirror")
    yield factory
    engine.dispose()


def subscribe(
    sessions: sessionmaker[Session],
    settings: CollectorSettings,
    channel: str,
    language: str | None = None,
    **channel_settings: str,
) -> SubscriptionRow:
    with session_scope(sessions) as s:
        row, _token = SubscriptionService(settings).create(
            s, domain=DOMAIN, group=None, channel=channel, channel_settings=channel_settings,
            admin=True, language=language,
        )  # fmt: skip
        s.expunge(row)
    return row


def change(
    sessions: sessionmaker[Session],
    clock: FakeClock,
    kind: str,
    event_id: int | None = None,
    **fields: Any,
) -> int:
    """Write an event change as the detector does; the event's id."""
    now = clock.now()
    with session_scope(sessions) as s:
        row = s.get(EventRow, event_id) if event_id else None
        if row is None:
            row = EventRow(
                domain=DOMAIN, cc="CN", state="open", scope="national", asns="[4134]",
                methods='["dns", "tls"]', volunteers='["p1", "p2"]', evidence='["m1", "m2"]',
                started_at=now, detected_at=now, updated_at=now, last_blocked_at=now,
                reporting_probes=2, revision=0, rule_version="r", forged_pool_version="f",
            )  # fmt: skip
            s.add(row)
        for key, value in fields.items():
            setattr(row, key, value)
        if kind == "closed":
            row.state, row.ended_at, row.closed_at = "closed", now, now
        row.revision += 1
        s.flush()
        s.add(EventChangeRow(event_id=row.id, kind=kind, revision=row.revision, at=now,
                             snapshot=json.dumps(event_json(row))))  # fmt: skip
        return row.id


async def deliver(outbox: Outbox) -> int:
    await asyncio.to_thread(outbox.fan_out)
    async with outbox.http_session() as http:
        return await outbox.send_due(http)


def check_signatures(secret: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    lowered = {k.lower(): v for k, v in headers.items()}
    payload: dict[str, Any] = Webhook(secret).verify(body, lowered)  # raises if it does not fit
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(lowered["x-hub-signature-256"], expected)
    return payload


async def test_webhook_signed_per_standard_webhooks_and_x_hub(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    sub = subscribe(sessions, alert_settings, "webhook", url=receiver.url + "/hook")
    secret = SubscriptionService(alert_settings).secret(sub)
    assert secret is not None and secret.startswith("whsec_")
    outbox = Outbox(alert_settings, clock, sessions)
    event_id = change(sessions, clock, "opened")
    assert await deliver(outbox) == 1
    [(method, path, headers, body)] = receiver.posts()
    assert (method, path) == ("POST", "/hook")
    document = check_signatures(secret, headers, body)
    assert document["type"] == "block.opened"
    data = document["data"]
    assert (data["id"], data["domain"], data["cc"], data["scope"]) == (
        event_id,
        DOMAIN,
        "CN",
        "national",
    )
    assert data["methods"] == ["dns", "tls"] and data["asns"] == [4134] and data["probes"] == 2
    assert data["evidence_url"] == f"https://collector.example/api/v1/events/{event_id}"
    assert data["page_url"] == f"https://collector.example/events/{event_id}"
    # Beside the machine document, the words for a person, in the subscriber's language.
    assert document["language"] == "en"
    assert document["summary"].startswith(f"Blocked: {DOMAIN} in China (CN)\n")
    assert data["mirrors"] == [{"domain": "alive-mirror.bar", "kind": "mirror", "state": "unknown"}]
    with session_scope(sessions) as s:
        change_id = s.scalar(select(EventChangeRow.id).where(EventChangeRow.event_id == event_id))
    assert headers["webhook-id"] == f"msg_{change_id}_{sub.id}"
    # Delivered once: nothing more to send.
    assert await deliver(outbox) == 0


async def test_500_three_times_then_200_arrives_with_one_webhook_id(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    sub = subscribe(sessions, alert_settings, "webhook", url=receiver.url)
    receiver.statuses = [500, 500, 500, 200]
    outbox = Outbox(alert_settings, clock, sessions)
    change(sessions, clock, "opened")
    for _ in range(4):
        assert await deliver(outbox) == 1
        clock.offset_seconds += 2 * max(RETRY_SCHEDULE)  # past any retry time
    assert await deliver(outbox) == 0
    ids = {headers["webhook-id"] for _, _, headers, _ in receiver.posts()}
    assert len(receiver.posts()) == 4 and len(ids) == 1  # a receiver dedupes by webhook-id
    with session_scope(sessions) as s:
        [delivery] = s.scalars(select(DeliveryRow))
        assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 4, 200)
        # Three failures in a row showed it as failing; the delivery made it active again.
        assert s.get(SubscriptionRow, sub.id).state == "active"  # type: ignore[union-attr]


async def test_410_disables_the_endpoint(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    sub = subscribe(sessions, alert_settings, "webhook", url=receiver.url)
    receiver.statuses = [410]
    outbox = Outbox(alert_settings, clock, sessions)
    change(sessions, clock, "opened")
    await deliver(outbox)
    with session_scope(sessions) as s:
        assert s.get(SubscriptionRow, sub.id).state == "disabled"  # type: ignore[union-attr]
        assert [d.state for d in s.scalars(select(DeliveryRow))] == ["dead"]
    # Later changes are not even queued for it.
    change(sessions, clock, "closed", event_id=1)
    assert await deliver(outbox) == 0 and len(receiver.posts()) == 1


async def test_retry_after_is_honoured_and_failing_is_visible(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    sub = subscribe(sessions, alert_settings, "webhook", url=receiver.url)
    receiver.statuses = [503] * 20
    receiver.headers = {"Retry-After": "7200"}
    outbox = Outbox(alert_settings, clock, sessions)
    change(sessions, clock, "opened")
    before = clock.now()
    await deliver(outbox)
    with session_scope(sessions) as s:
        [delivery] = s.scalars(select(DeliveryRow))
        assert delivery.next_attempt_at - before >= timedelta(seconds=7200)
    for _ in range(len(RETRY_SCHEDULE)):
        clock.offset_seconds += 86400
        await deliver(outbox)
    with session_scope(sessions) as s:
        [delivery] = s.scalars(select(DeliveryRow))
        row = s.get(SubscriptionRow, sub.id)
        assert row is not None and delivery.state == "dead"
        assert row.state == "failing" and row.failing_since is not None
        assert row.last_error == "HTTP 503"
    assert len(receiver.posts()) == len(RETRY_SCHEDULE) + 1


def test_retry_schedule_spans_about_a_day() -> None:
    import random

    rng = random.Random(1)
    total = sum(retry_delay(n, None, rng) or 0 for n in range(1, len(RETRY_SCHEDULE) + 1))
    assert 0.8 * 86400 < total < 1.3 * 86400
    assert retry_delay(len(RETRY_SCHEDULE) + 1, None, rng) is None


async def test_updates_are_throttled_and_coalesced(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    subscribe(sessions, alert_settings, "webhook", url=receiver.url)
    outbox = Outbox(alert_settings, clock, sessions)
    event_id = change(sessions, clock, "opened")
    await deliver(outbox)
    # Two updates within the throttle interval: one message, with the latest state.
    change(sessions, clock, "updated", event_id=event_id, asns="[4134, 4837]")
    change(sessions, clock, "updated", event_id=event_id, asns="[4134, 4837, 9808]")
    assert await deliver(outbox) == 0  # held back: an update came out a moment ago
    clock.offset_seconds += 61
    assert await deliver(outbox) == 1
    change(sessions, clock, "closed", event_id=event_id)
    assert await deliver(outbox) == 1  # the end is never held back
    kinds = [json.loads(b)["type"] for _, _, _, b in receiver.posts()]
    assert kinds == ["block.opened", "block.updated", "block.closed"]
    assert json.loads(receiver.posts()[1][3])["data"]["asns"] == [4134, 4837, 9808]


def test_an_end_supersedes_an_unsent_update_and_a_newer_update_replaces_it(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock
) -> None:
    subscribe(sessions, alert_settings, "webhook", url="http://127.0.0.1:9/hook")
    outbox = Outbox(alert_settings, clock, sessions)
    event_id = change(sessions, clock, "opened")
    assert outbox.fan_out() == 1
    change(sessions, clock, "updated", event_id=event_id, asns="[4134, 4837]")
    change(sessions, clock, "updated", event_id=event_id, asns="[4134, 4837, 9808]")
    assert outbox.fan_out() == 1  # the second update rewrote the first, still unsent
    with session_scope(sessions) as s:
        [update] = s.scalars(select(DeliveryRow).where(DeliveryRow.kind == "updated"))
        assert json.loads(update.payload)["data"]["asns"] == [4134, 4837, 9808]
    change(sessions, clock, "closed", event_id=event_id)
    assert outbox.fan_out() == 1
    with session_scope(sessions) as s:
        states = sorted((d.kind, d.state) for d in s.scalars(select(DeliveryRow)))
    assert states == [("closed", "pending"), ("opened", "pending"), ("updated", "superseded")]


@pytest.mark.parametrize("channel", ["slack", "discord", "ntfy"])
async def test_chat_formats(
    channel: str, sessions: sessionmaker[Session], alert_settings: CollectorSettings,
    clock: FakeClock, receiver: Receiver,
) -> None:  # fmt: skip
    subscribe(sessions, alert_settings, channel, url=receiver.url + "/" + channel)
    outbox = Outbox(alert_settings, clock, sessions)
    change(sessions, clock, "opened")
    await deliver(outbox)
    [(_, _, headers, body)] = receiver.posts()
    if channel == "ntfy":
        text = body.decode()
        assert headers["Title"] == f"Blocked: {DOMAIN} (CN)" and headers["Priority"] == "high"
    else:
        text = json.loads(body)["text" if channel == "slack" else "content"]
    assert text.splitlines()[:3] == [
        f"Blocked: {DOMAIN} in China (CN)",
        "Where: nationwide (AS4134)",
        "How: DNS poisoning, SNI blocking",
    ]
    assert "Details and evidence: https://collector.example/events/1?lang=en" in text


async def test_matrix_message(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    subscribe(sessions, alert_settings, "matrix", homeserver=receiver.url,
              room_id="!room:example.org", access_token="syt_secret")  # fmt: skip
    outbox = Outbox(alert_settings, clock, sessions)
    change(sessions, clock, "opened")
    await deliver(outbox)
    [(method, path, headers, body)] = receiver.posts()
    assert method == "PUT"
    assert path.startswith("/_matrix/client/v3/rooms/!room:example.org/send/m.room.message/msg_")
    assert headers["Authorization"] == "Bearer syt_secret"
    assert json.loads(body)["msgtype"] == "m.text"


async def test_mastodon_direct_message_to_the_contact_account(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    subscribe(sessions, alert_settings, "mastodon", bot_instance=receiver.url,
              access_token="bot-token", instance_url=receiver.url)  # fmt: skip
    receiver.statuses = [500]  # the first attempt fails after the lookup: retried
    outbox = Outbox(alert_settings, clock, sessions)
    change(sessions, clock, "opened")
    await deliver(outbox)
    clock.offset_seconds += 60
    await deliver(outbox)
    posts = receiver.posts()
    assert len(posts) == 2
    keys = set()
    for method, path, headers, body in posts:
        assert (method, path) == ("POST", "/api/v1/statuses")
        assert headers["Authorization"] == "Bearer bot-token"
        keys.add(headers["Idempotency-Key"])
        status = json.loads(body)
        assert status["visibility"] == "direct"
        assert status["status"].startswith(f"@admin@{DOMAIN} Blocked: {DOMAIN} in China (CN)")
    assert len(keys) == 1  # the retry cannot post twice


ZH_LINES = [
    f"已被封锁：{DOMAIN} 在中国（CN）",
    "范围：全国（AS4134）",
    "方式：DNS 污染、SNI 阻断",
]


async def test_each_subscriber_reads_its_own_language(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    """One event, four subscribers: the webhook document is the same machine document for
    all, its ``summary`` and the chat texts are in each one's language."""
    zh_hook = subscribe(sessions, alert_settings, "webhook", "zh-Hans", url=receiver.url + "/zh")
    subscribe(sessions, alert_settings, "webhook", "en", url=receiver.url + "/en")
    subscribe(sessions, alert_settings, "slack", "zh-CN", url=receiver.url + "/slack")
    subscribe(sessions, alert_settings, "ntfy", "zh", url=receiver.url + "/ntfy")
    outbox = Outbox(alert_settings, clock, sessions)
    change(sessions, clock, "opened")
    assert await deliver(outbox) == 4
    posts = {path: (headers, body) for _, path, headers, body in receiver.posts()}
    secret = SubscriptionService(alert_settings).secret(zh_hook)
    assert secret is not None
    zh = check_signatures(secret, *posts["/zh"])
    en = json.loads(posts["/en"][1])
    assert zh["language"] == "zh-Hans" and en["language"] == "en"
    assert zh["summary"].splitlines()[:3] == ZH_LINES
    assert zh["summary"].splitlines()[-1].endswith("/events/1?lang=zh-Hans")
    # The machine fields do not change with the language: codes, ISO times, numbers.
    assert zh["data"] == en["data"] and zh["type"] == en["type"] == "block.opened"
    assert zh["data"]["methods"] == ["dns", "tls"]
    slack = json.loads(posts["/slack"][1])["text"]
    assert slack.splitlines()[:3] == ZH_LINES
    assert "个探针观测到" in slack and "Blocked" not in slack
    # Headers are Latin-1: a Chinese ntfy title goes as an RFC 2047 encoded-word.
    headers, body = posts["/ntfy"]
    title = str(make_header(decode_header(headers["Title"])))
    assert title == f"已被封锁：{DOMAIN}（CN）" and body.decode().splitlines()[:3] == ZH_LINES


async def test_the_mastodon_message_speaks_the_instance_language(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    """No language asked for: the instance's description names its people's (zh-TW
    first: Blockwatch's Chinese is zh-Hans, read there too)."""
    sub = subscribe(sessions, alert_settings, "mastodon", bot_instance=receiver.url,
                    access_token="bot-token", instance_url=receiver.url)  # fmt: skip
    receiver.languages = ["zh-TW", "en"]
    outbox = Outbox(alert_settings, clock, sessions)
    change(sessions, clock, "opened")
    await deliver(outbox)
    [(_, _, _, body)] = receiver.posts()
    status = json.loads(body)["status"]
    assert status.startswith(f"@admin@{DOMAIN} 已被封锁：{DOMAIN} 在中国（CN）")
    assert len(status) <= 500  # Mastodon's limit
    # Asked for English, the same instance gets English.
    with session_scope(sessions) as s:
        row = s.get(SubscriptionRow, sub.id)
        assert row is not None
        SubscriptionService(alert_settings).set_language(row, "en")
    change(sessions, clock, "closed", event_id=1)
    await deliver(outbox)
    assert json.loads(receiver.posts()[-1][3])["status"].startswith(
        f"@admin@{DOMAIN} Block ended: {DOMAIN} in China (CN)"
    )


async def test_without_a_language_and_no_way_to_ask_the_operators_default_holds(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    """In the lab and demo modes without control resolvers the collector asks nobody
    (nothing may leave the machine): ``--alert-language`` decides."""
    chinese = alert_settings.model_copy(update={"alert_language": "zh-Hans"})
    subscribe(sessions, chinese, "discord", url=receiver.url + "/discord")
    outbox = Outbox(chinese, clock, sessions)
    change(sessions, clock, "opened")
    await deliver(outbox)
    [(_, path, _, body)] = receiver.seen  # nothing asked of the instance
    assert path == "/discord"
    assert json.loads(body)["content"].splitlines()[:3] == ZH_LINES


def test_two_senders_never_claim_the_same_delivery(
    sessions: sessionmaker[Session], alert_settings: CollectorSettings, clock: FakeClock,
) -> None:  # fmt: skip
    subscribe(sessions, alert_settings, "webhook", url="http://127.0.0.1:9/")
    for _ in range(60):
        change(sessions, clock, "opened")
    Outbox(alert_settings, clock, sessions).fan_out(limit=1000)
    claimed: list[list[int]] = [[], [], [], []]

    def claimer(slot: int) -> None:
        outbox = Outbox(alert_settings, clock, sessions)
        while True:
            got = outbox.claim(limit=5)
            if not got:
                return
            claimed[slot] += got

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for c in claimed for i in c]
    assert len(everything) == 60 and len(set(everything)) == 60


async def test_private_destinations_are_refused() -> None:
    guard = GuardedResolver()
    for host in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "fd00::1", "localhost"):
        with pytest.raises(UnsafeDestination):
            await guard.resolve(host, 443)
    allowed = GuardedResolver(parse_allowlist("127.0.0.0/8"))
    [result] = await allowed.resolve("127.0.0.1", 443)
    assert result["host"] == "127.0.0.1"


async def test_delivery_to_a_private_address_is_refused_and_retried_later(
    sessions: sessionmaker[Session], settings: CollectorSettings, clock: FakeClock,
    receiver: Receiver,
) -> None:  # fmt: skip
    # No allowlist: the receiver on loopback is out of bounds. A name passes the
    # subscription (it may resolve elsewhere later) and is refused when resolved.
    subscribe(sessions, settings, "webhook", url=receiver.url.replace("127.0.0.1", "localhost"))
    outbox = Outbox(settings, clock, sessions)
    change(sessions, clock, "opened")
    await deliver(outbox)
    assert receiver.seen == []
    with session_scope(sessions) as s:
        [delivery] = s.scalars(select(DeliveryRow))
        assert delivery.state == "pending" and "non-public" in (delivery.last_error or "")


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.org/",
        "https://user:pw@example.org/",
        "https://",
        "http://10.0.0.1/hook",
        "http://[::1]:8080/",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_bad_urls_are_refused_at_subscription(
    url: str, sessions: sessionmaker[Session], settings: CollectorSettings
) -> None:
    with session_scope(sessions) as s, pytest.raises(Unprocessable):
        SubscriptionService(settings).create(
            s, domain=DOMAIN, group=None, channel="webhook", channel_settings={"url": url},
            admin=True,
        )  # fmt: skip
