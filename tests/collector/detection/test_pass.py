"""The detection pass on a real database: API ingestion in, verdicts, events and status out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from collector.core.db import make_engine, make_session_factory, session_scope
from collector.core.models import AnalysisQueueRow, VerdictRow
from collector.core.settings import CollectorSettings
from collector.detection.passes import Detector
from tests.collector.analysis import builders as b
from tests.collector.conftest import FakeClock
from tests.collector.helpers import ADMIN, TestProbe, enroll, rfc3339, token

DOMAIN = b.DOMAIN


class World:
    """Probes and a control vantage submitting through the API; passes run by hand."""

    def __init__(self, client: TestClient, settings: CollectorSettings, clock: FakeClock) -> None:
        self.client = client
        self.clock = clock
        self.probes = [TestProbe() for _ in range(3)]
        for p in self.probes:
            enroll(client, p, token=token(client))
        self.control = TestProbe()
        enroll(client, self.control, token=token(client, role="control"), role="control")
        answer = client.post("/api/v1/targets", json={"domains": [DOMAIN, "mirror.bar"],
                                                      "group": "alive"}, headers=ADMIN)  # fmt: skip
        assert answer.status_code == 201, answer.text
        self.engine = make_engine(settings.database_url)
        self.sessions = make_session_factory(self.engine)
        self.detector = Detector(settings, clock)

    def now(self) -> datetime:
        return self.clock.now()

    def submit(self, probe: TestProbe, m: dict[str, Any], at: datetime) -> None:
        body = dict(m, measurement_id=str(uuid.uuid4()), started_at=rfc3339(at))
        answer = self.client.post(
            "/api/v1/measurements", json={"measurements": [probe.measure(body, at=at)]}
        )
        assert answer.json()["accepted"] == 1, answer.text

    def round(self, m: dict[str, Any], at: datetime, probes: list[TestProbe] | None = None) -> None:
        for p in self.probes if probes is None else probes:
            self.submit(p, m, at)

    def run(self) -> Any:
        return self.detector.run_pass(self.sessions)

    def open_event(self) -> dict[str, Any]:
        """Reached, then SNI-blocked for every probe, each round with its control; one
        pass: the open event (3 ok, 3 blocked and 2 control measurements stored)."""
        t = self.now() - timedelta(minutes=2)
        self.round(b.reached(), t)
        self.submit(self.control, b.control(), t + timedelta(seconds=5))
        self.round(b.sni_blocked(), t + timedelta(seconds=30))
        self.submit(self.control, b.control(), t + timedelta(seconds=33))
        self.clock.offset_seconds += 60
        self.run()
        [event] = self.events(state="open")
        return event

    def events(self, **params: str) -> list[dict[str, Any]]:
        # The admin's view: exact times and every network (public answers are rounded).
        answer = self.client.get("/api/v1/events", params=params, headers=ADMIN)
        assert answer.status_code == 200, answer.text
        data: list[dict[str, Any]] = answer.json()["data"]
        return data

    def count(self, table: Any) -> int:
        with session_scope(self.sessions) as s:
            return s.scalar(select(func.count()).select_from(table)) or 0


@pytest.fixture
def world(client: TestClient, settings: CollectorSettings, clock: FakeClock) -> Any:
    w = World(client, settings, clock)
    yield w
    w.engine.dispose()


def test_block_opens_one_event_updates_status_and_closes(world: World) -> None:
    t = world.now() - timedelta(minutes=2)
    world.round(b.reached(), t)
    world.submit(world.control, b.control(), t + timedelta(seconds=5))
    world.run()
    assert world.count(AnalysisQueueRow) == 0 and world.count(VerdictRow) == 3
    assert world.events() == []
    status = world.client.get(f"/api/v1/status/{DOMAIN}", headers=ADMIN).json()
    assert [(n["cc"], n["asn"], n["state"], n["probes"]) for n in status["networks"]] == [
        ("CN", 4134, "ok", 3)
    ]
    assert status["mirrors"][0]["domain"] == "mirror.bar"

    # The block starts: the failed measurements wait for a control taken after them.
    blocked_at = t + timedelta(seconds=30)
    world.round(b.sni_blocked(), blocked_at)
    stats = world.run()
    assert stats.postponed == 3 and world.events() == []
    world.submit(world.control, b.control(), blocked_at + timedelta(seconds=3))
    world.clock.offset_seconds += 60  # the next pass: postponed rows are due again
    stats = world.run()
    assert stats.analyzed == 3
    [event] = world.events(state="open")
    assert event["domain"] == DOMAIN and event["cc"] == "CN"
    assert event["methods"] == ["dns", "tls"] and event["asns"] == [4134]
    assert event["scope"] == "national" and event["probes"] == 3
    started = datetime.fromisoformat(event["started_at"].replace("Z", "+00:00"))
    assert abs(started - blocked_at) < timedelta(milliseconds=1)  # the first blocked evidence
    assert len(event["evidence"]) == 3 and event["rule_version"] and event["forged_pool_version"]
    status = world.client.get(f"/api/v1/status/{DOMAIN}", headers=ADMIN).json()
    [network] = status["networks"]
    assert network["state"] == "blocked" and network["methods"] == ["dns", "tls"]
    assert [e["id"] for e in status["events"]] == [event["id"]]

    # Another pass with nothing new changes nothing.
    world.run()
    assert len(world.events()) == 1

    # Lifted: every probe reaches it again.
    lifted_at = blocked_at + timedelta(seconds=40)
    world.round(b.reached(), lifted_at)
    world.run()
    [closed] = world.events()
    assert closed["id"] == event["id"] and closed["state"] == "closed"
    assert closed["ended_at"] is not None and closed["closed_at"] is not None


def test_outage_is_down_not_blocked(world: World) -> None:
    t = world.now() - timedelta(seconds=30)
    down = b.measurement(
        dns_steps=[b.dns(b.REAL_IP)], tcp_steps=[b.tcp(failure="connection_refused")]
    )
    world.round(down, t)
    world.submit(world.control, b.failed_control("connection_refused"), t + timedelta(seconds=2))
    world.run()
    assert world.events() == []
    [network] = world.client.get(f"/api/v1/status/{DOMAIN}", headers=ADMIN).json()["networks"]
    assert network["state"] == "down"


def test_control_from_before_an_outage_does_not_make_a_block(world: World) -> None:
    t = world.now() - timedelta(seconds=60)
    world.submit(world.control, b.control(), t)  # fine, before the outage
    down = b.measurement(
        dns_steps=[b.dns(b.REAL_IP)], tcp_steps=[b.tcp(failure="generic_timeout_error")]
    )
    world.round(down, t + timedelta(seconds=20))
    world.run()
    # Waiting for a control taken after the measurements, not judged on the old one.
    assert world.count(VerdictRow) == 0 and world.count(AnalysisQueueRow) == 3
    world.submit(world.control, b.failed_control(), t + timedelta(seconds=25))
    world.clock.offset_seconds += 60
    world.run()
    assert world.events() == [] and world.count(VerdictRow) == 3


def test_without_a_control_measurements_end_unknown(
    world: World, settings: CollectorSettings
) -> None:
    t = world.now() - timedelta(seconds=10)
    world.round(b.sni_blocked(), t)
    world.run()
    assert world.count(VerdictRow) == 0
    world.clock.offset_seconds += settings.control_wait_seconds + 30
    world.run()
    with session_scope(world.sessions) as s:
        flags = set(s.scalars(select(VerdictRow.flags)))
    assert flags == {"unknown"}
    assert world.events() == []


def test_lying_probe_opens_nothing(world: World) -> None:
    t = world.now() - timedelta(seconds=30)
    liar, *honest = world.probes
    world.round(b.sni_blocked(), t, [liar])
    world.round(b.reached(), t, honest)
    world.submit(world.control, b.control(), t + timedelta(seconds=2))
    world.run()
    assert world.events() == []


def test_events_api_filters_and_errors(world: World) -> None:
    assert world.client.get("/api/v1/events", params={"state": "bogus"}).status_code == 422
    answer = world.client.get("/api/v1/events", params={"cc": "C1"})
    assert answer.status_code == 422
    assert world.client.get("/api/v1/events/999").status_code == 404
    answer = world.client.get("/api/v1/status/not-a-target.example")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "err_unknown_target"


def test_the_pass_reads_only_new_measurements(world: World) -> None:
    t = world.now() - timedelta(seconds=30)
    world.round(b.reached(), t)
    world.submit(world.control, b.control(), t + timedelta(seconds=1))
    assert world.run().analyzed == 3
    assert world.run().analyzed == 0  # nothing new: nothing read again
    world.round(b.reached(), t + timedelta(seconds=5), world.probes[:1])
    assert world.run().analyzed == 1


def test_datetimes_are_utc() -> None:
    assert rfc3339(datetime(2026, 1, 1, tzinfo=UTC)).endswith("Z")


def test_a_probe_whose_whole_round_lost_dns_is_not_evidence(world: World) -> None:
    t = world.now() - timedelta(seconds=30)
    silent = b.measurement(
        dns_steps=[
            b.dns(failure="generic_timeout_error"),
            b.dns(failure="generic_timeout_error", transport="tcp"),
        ]
    )
    domains = [DOMAIN, "mirror.bar", "third.bar"]
    answer = world.client.post("/api/v1/targets", json={"domains": ["third.bar"]}, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    for probe in world.probes[:2]:  # two probes: enough to open an event, were it evidence
        for domain in domains:
            world.submit(probe, dict(silent, domain=domain), t)
    for domain in domains:
        world.submit(world.control, dict(b.control(), domain=domain), t + timedelta(seconds=2))
    world.run()
    with session_scope(world.sessions) as s:
        reasons = set(s.scalars(select(VerdictRow.reasons)))
    assert reasons == {'["vantage.dns_unreachable"]'}
    assert world.events() == []
    # One domain alone timing out, in a round where the rest resolved, still counts.
    t2 = t + timedelta(minutes=5)
    for probe in world.probes[:2]:
        world.submit(probe, dict(silent, domain=DOMAIN), t2)
        world.submit(probe, dict(b.reached(), domain="mirror.bar"), t2)
        world.submit(probe, dict(b.reached(), domain="third.bar"), t2)
    for domain in domains:
        world.submit(world.control, dict(b.control(), domain=domain), t2 + timedelta(seconds=2))
    world.clock.offset_seconds += 300
    world.run()
    [event] = world.events()
    assert event["domain"] == DOMAIN and event["methods"] == ["dns"]


def test_the_pass_queries_are_bounded_by_the_window(world: World) -> None:
    """Each of the pass's reads of the big tables can use an index that bounds it by
    time (docs/architecture.md, "Cost of a pass"): never a scan of the history. The
    plans are asked with sequential scans discouraged, so that the answer is about
    what the indexes allow, not about this tiny table's statistics."""
    t = world.now() - timedelta(minutes=2)
    world.round(b.sni_blocked(), t)  # SNI triggers: the residual-blocking query has rows
    world.submit(world.control, b.control(), t + timedelta(seconds=5))
    world.run()  # verdicts exist now: the next pass reads triggers and votes
    world.round(b.reached(), t + timedelta(seconds=30))
    world.submit(world.control, b.control(), t + timedelta(seconds=35))
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(world.engine, "before_cursor_execute", capture)
    try:
        assert world.run().analyzed == 3
    finally:
        event.remove(world.engine, "before_cursor_execute", capture)
    postgres = world.engine.dialect.name == "postgresql"
    plans: dict[str, str] = {}
    with world.engine.connect() as conn:
        if postgres:
            conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in statements:
            if "FROM verdicts" not in statement and "FROM measurements" not in statement:
                continue
            explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            rows = conn.exec_driver_sql(explain + statement, parameters).all()
            plans[statement] = "\n".join(str(r[-1]) for r in rows)
        conn.rollback()

    def plan_of(*fragments: str) -> str:
        [plan] = [p for s, p in plans.items() if all(f in s for f in fragments)]
        return plan

    votes = plan_of("FROM verdicts", "verdicts.flags")
    controls = plan_of("FROM measurements", "'control'")
    triggers = plan_of("FROM verdicts", "'[]'")
    # Votes: by domain and time, or by time alone (a pass that touches most domains).
    assert "ix_verdicts_domain_started" in votes or "ix_verdicts_started" in votes, votes
    if postgres:
        assert "ix_measurements_controls" in controls, controls
    else:  # without statistics SQLite ties the two (domain, started_at) indexes, and the
        # order its schema lists them in (random across runs) decides: either bounds the time
        assert "ix_measurements_" in controls and "started_at>?" in controls, controls
    assert "ix_verdicts_probe_triggers" in triggers, triggers
    if postgres:  # the time is an index condition, not a filter over every row
        assert "started_at >=" in votes.split("Index Cond:")[1], votes
    else:
        assert "started_at>?" in votes, votes
