"""The target snapshot of admission: read once per TARGETS_TTL by one thread, while
the other request threads go on with the snapshot it replaces; only the very first
read makes them wait. Removed targets stay allowed for the spool's life."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from collector.core.db import session_scope
from collector.core.settings import CollectorSettings
from collector.services.admission import TARGETS_TTL, _Targets
from collector.services.targets import TargetService

NOW = datetime.now(UTC)  # removal stamps the real time


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _targets(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        TargetService().add(s, ["alive.bar", "m.cmx.im"])


class Counted(_Targets):
    """The real snapshot, with its reads counted and, when *gate* is set, held there."""

    def __init__(self, settings: CollectorSettings, clock: Clock) -> None:
        super().__init__(settings, clock)
        self.reads = 0
        self.inside = threading.Event()
        self.gate: threading.Event | None = None

    def _read(self, session: Session, now: datetime) -> tuple[frozenset[str], int]:
        self.reads += 1
        self.inside.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        return super()._read(session, now)


def in_thread(targets: _Targets, sessions: sessionmaker[Session]) -> tuple[
        threading.Thread, list[tuple[frozenset[str], int]]]:  # fmt: skip
    got: list[tuple[frozenset[str], int]] = []

    def run() -> None:
        with session_scope(sessions) as s:
            got.append(targets.snapshot(s, NOW))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, got


def test_a_fresh_snapshot_is_reused_and_a_stale_one_read_again(
    settings: CollectorSettings, sessions: sessionmaker[Session]
) -> None:
    clock = Clock()
    targets = Counted(settings, clock)
    with session_scope(sessions) as s:
        assert targets.snapshot(s, NOW) == (frozenset({"alive.bar", "m.cmx.im"}), 2)
        TargetService().add(s, ["mastodon.social"])
        clock.now += TARGETS_TTL - 1
        assert targets.snapshot(s, NOW)[1] == 2  # reused: the new target waits
        clock.now += 2
        domains, count = targets.snapshot(s, NOW)
    assert targets.reads == 2
    assert count == 3 and "mastodon.social" in domains


def test_while_one_thread_reads_the_others_use_the_previous_snapshot(
    settings: CollectorSettings, sessions: sessionmaker[Session]
) -> None:
    clock = Clock()
    targets = Counted(settings, clock)
    with session_scope(sessions) as s:
        before = targets.snapshot(s, NOW)
        TargetService().add(s, ["mastodon.social"])
    clock.now += TARGETS_TTL + 1
    targets.gate = threading.Event()
    targets.inside.clear()
    reader, got = in_thread(targets, sessions)
    assert targets.inside.wait(10)
    with session_scope(sessions) as s:  # the snapshot is stale, and another thread reads it
        assert targets.snapshot(s, NOW) == before
    assert targets.reads == 2  # the first read, and the one held at the gate
    targets.gate.set()
    reader.join(10)
    assert got and got[0][1] == 3
    with session_scope(sessions) as s:  # the read landed: everyone sees it now
        assert targets.snapshot(s, NOW)[1] == 3
    assert targets.reads == 2


def test_the_first_read_makes_the_others_wait_for_it(
    settings: CollectorSettings, sessions: sessionmaker[Session]
) -> None:
    targets = Counted(settings, Clock())
    targets.gate = threading.Event()
    first, got_first = in_thread(targets, sessions)
    assert targets.inside.wait(10)
    second, got_second = in_thread(targets, sessions)
    second.join(0.2)
    assert second.is_alive()  # nothing to go on: it waits instead of refusing every domain
    targets.gate.set()
    first.join(10)
    second.join(10)
    assert got_first == got_second == [(frozenset({"alive.bar", "m.cmx.im"}), 2)]
    assert targets.reads == 1  # the waiting thread took the read it waited for


def test_a_failed_read_leaves_the_next_request_to_read_again(
    settings: CollectorSettings, sessions: sessionmaker[Session]
) -> None:
    targets = Counted(settings, Clock())
    with session_scope(sessions) as s:
        real = targets._read
        calls = iter([RuntimeError("database gone"), None])

        def flaky(session: Session, now: datetime) -> tuple[frozenset[str], int]:
            error = next(calls)
            if error is not None:
                raise error
            return real(session, now)

        targets._read = flaky  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            targets.snapshot(s, NOW)
        assert targets.snapshot(s, NOW)[1] == 2


def test_removed_targets_stay_allowed_for_the_spools_life_but_do_not_count(
    settings: CollectorSettings, sessions: sessionmaker[Session]
) -> None:
    clock = Clock()
    targets = _Targets(settings.model_copy(update={"public_url": "https://bw.example"}), clock)
    with session_scope(sessions) as s:
        TargetService().remove(s, "m.cmx.im")
        domains, count = targets.snapshot(s, NOW)
        assert count == 1
        assert domains == {"alive.bar", "m.cmx.im", "bw.example"}  # and the collector's own
        clock.now += TARGETS_TTL + 1
        later = NOW + timedelta(seconds=settings.max_age + 3600)
        domains, _ = targets.snapshot(s, later)
    assert "m.cmx.im" not in domains and "alive.bar" in domains
