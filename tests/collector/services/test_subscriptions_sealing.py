"""Subscriptions' secrets at rest, on SQLite and PostgreSQL: sealed on write, sealed at
startup when an older version left them clear (two processes at once too), counted,
re-sealed with a new key, and the replaced secret forgotten after its overlap."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from collector.core.db import session_scope
from collector.core.models import SubscriptionRow
from collector.core.secrets import Sealer, generate_key, key_id, sealed_key_id
from collector.core.settings import CollectorSettings
from collector.services.subscriptions import (
    ROTATION_OVERLAP,
    SubscriptionService,
    seal_at_startup,
    seal_stored,
    sealing_status,
)
from collector.services.targets import TargetService

DOMAIN = "alive.bar"
TOKEN = "syt_matrix_access_token_0123456789"
CLEAR_SECRET = "whsec_hXMd0pY7XQSOiZGFLMc+RLmF9uDjFHyl"


@pytest.fixture(autouse=True)
def _target(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        TargetService().add(s, [DOMAIN])


def keyed(settings: CollectorSettings, keys: str) -> CollectorSettings:
    return settings.model_copy(update={"secret_key": SecretStr(keys)})


def raw(sessions: sessionmaker[Session]) -> list[tuple[str, str | None, str | None]]:
    """The stored columns as they are on disk, read without the models."""
    with sessions() as s:
        rows = s.execute(text("SELECT settings, secret, previous_secret FROM subscriptions"))
        return [(r[0], r[1], r[2]) for r in rows]


def create(sessions: sessionmaker[Session], settings: CollectorSettings, channel: str,
           **values: str) -> tuple[str, str | None]:  # fmt: skip
    with session_scope(sessions) as s:
        service = SubscriptionService(settings)
        row, _ = service.create(
            s, domain=DOMAIN, group=None, channel=channel, channel_settings=values, admin=True
        )
        return row.id, service.secret(row)


def add_clear(sessions: sessionmaker[Session], n: int) -> None:
    """Rows as the version before sealing wrote them: everything in clear."""
    with session_scope(sessions) as s:
        for i in range(n):
            s.add(
                SubscriptionRow(
                    id=f"sub_old{i:03d}", domain=DOMAIN, group_name=None, channel="matrix",
                    settings=json.dumps({"homeserver": "https://m.example", "room_id": "!r",
                                         "access_token": f"{TOKEN}{i}"}),
                    secret=f"{CLEAR_SECRET[:-3]}{i:03d}", state="active", manage_hash="h",
                )
            )  # fmt: skip


def test_create_stores_nothing_clear(
    sessions: sessionmaker[Session], settings: CollectorSettings
) -> None:
    _, secret = create(sessions, settings, "webhook", url="https://hooks.example/T0/B0/XyZ")
    create(sessions, settings, "matrix", homeserver="https://m.example", room_id="!r",
           access_token=TOKEN)  # fmt: skip
    assert secret is not None and secret.startswith("whsec_")
    stored = " ".join(str(v) for row in raw(sessions) for v in row)
    for clear in (secret, secret.removeprefix("whsec_"), TOKEN, "hooks.example", "XyZ"):
        assert clear not in stored
    assert all(v is None or v.startswith("bws1:") for row in raw(sessions) for v in row)


def test_startup_seals_what_an_older_version_left_clear_once(
    sessions: sessionmaker[Session], settings: CollectorSettings
) -> None:
    add_clear(sessions, 3)
    now = datetime.now(UTC)
    seal_at_startup(settings, sessions, now)
    stored = raw(sessions)
    assert all(s.startswith("bws1:") and (c or "").startswith("bws1:") for s, c, _ in stored)
    assert not any(TOKEN in s or CLEAR_SECRET[:-3] in (c or "") for s, c, _ in stored)
    assert seal_stored(sessions, Sealer(settings), now).written == 0  # idempotent
    with session_scope(sessions) as s:
        row = s.get(SubscriptionRow, "sub_old001")
        assert row is not None
        assert SubscriptionService(settings).secret(row) == f"{CLEAR_SECRET[:-3]}001"
        assert json.loads(Sealer(settings).open(row.settings))["access_token"] == f"{TOKEN}1"


def test_two_processes_sealing_at_once_seal_each_value_once(
    sessions: sessionmaker[Session], settings: CollectorSettings
) -> None:
    add_clear(sessions, 40)
    start = threading.Barrier(2)
    results: list[int] = []

    def replica() -> None:
        start.wait()
        results.append(seal_stored(sessions, Sealer(settings), datetime.now(UTC)).written)

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(results) == 80  # 40 settings + 40 secrets, each written by one of them
    with session_scope(sessions) as s:
        sealer = Sealer(settings)
        for i, row in enumerate(s.query(SubscriptionRow).order_by(SubscriptionRow.id)):
            assert sealer.open(row.secret or "") == f"{CLEAR_SECRET[:-3]}{i:03d}"


def test_status_counts_per_key_and_rotation_moves_every_value(
    sessions: sessionmaker[Session], settings: CollectorSettings
) -> None:
    old, new = generate_key(), generate_key()
    with_old = keyed(settings, old)
    create(sessions, with_old, "webhook", url="https://hooks.example/a")
    add_clear(sessions, 1)
    with sessions() as s:
        report = sealing_status(s, Sealer(with_old))
    assert report["keys"] == [
        {"id": key_id(old), "role": "sealing", "settings": 1, "secret": 1, "previous_secret": 0}
    ]
    assert report["clear"] == {"settings": 1, "secret": 1, "previous_secret": 0}
    both = keyed(settings, f"{new},{old}")
    assert seal_stored(sessions, Sealer(both), datetime.now(UTC), reseal=True).written == 4
    only_new = keyed(settings, new)
    with sessions() as s:
        report = sealing_status(s, Sealer(only_new))
    assert [k["id"] for k in report["keys"]] == [key_id(new)]
    assert report["keys"][0]["settings"] == 2 and not any(report["clear"].values())
    # The old key alone now opens nothing: the status says which key is missing.
    with sessions() as s:
        report = sealing_status(s, Sealer(with_old))
    assert {k["id"]: k["role"] for k in report["keys"]} == {
        key_id(old): "sealing",
        key_id(new): "unknown",
    }


def test_reseal_skips_and_counts_values_no_key_opens(
    sessions: sessionmaker[Session], settings: CollectorSettings
) -> None:
    lost = keyed(settings, generate_key())
    create(sessions, lost, "webhook", url="https://hooks.example/a")
    current = keyed(settings, generate_key())
    done = seal_stored(sessions, Sealer(current), datetime.now(UTC), reseal=True)
    assert (done.written, done.unopened) == (0, 2)
    assert all(
        sealed_key_id(v or "") == Sealer(lost).keyring().ids[0] for v in raw(sessions)[0][:2]
    )


def test_rotate_keeps_the_old_secret_sealed_for_the_overlap_then_forgets_it(
    sessions: sessionmaker[Session], settings: CollectorSettings
) -> None:
    sub_id, first = create(sessions, settings, "webhook", url="https://hooks.example/a")
    now = datetime.now(UTC)
    with session_scope(sessions) as s:
        row = s.get(SubscriptionRow, sub_id)
        assert row is not None
        second = SubscriptionService(settings).rotate(row, now)
    assert second != first and second.startswith("whsec_")
    [(_, secret, previous)] = raw(sessions)
    assert previous is not None and previous.startswith("bws1:") and first not in previous
    assert Sealer(settings).open(previous) == first
    assert Sealer(settings).open(secret or "") == second
    seal_stored(sessions, Sealer(settings), now + ROTATION_OVERLAP - timedelta(seconds=1))
    assert raw(sessions)[0][2] == previous  # still within the overlap
    assert seal_stored(sessions, Sealer(settings), now + ROTATION_OVERLAP).written == 1
    assert raw(sessions)[0][2] is None
    with sessions() as s:
        row = s.get(SubscriptionRow, sub_id)
        assert row is not None and row.previous_secret_until is None
