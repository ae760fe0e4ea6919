"""The gauges a pass sets: target state per country (the worst network), open
events by country and method, probes reporting (networks only from K
volunteers), the analysis backlog's age; series that no longer apply go."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from collector.core import metrics
from collector.core.db import session_scope
from collector.core.models import EventRow, NetworkStateRow, ProbeRow, TokenRow
from collector.core.settings import CollectorSettings
from collector.detection.gauges import Gauges
from collector.services.targets import TargetService

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def network(domain: str, asn: int, state: str, probes: int = 3) -> NetworkStateRow:
    return NetworkStateRow(domain=domain, cc="CN", asn=asn, state=state, since=NOW,
                           probes=probes, updated_at=NOW)  # fmt: skip


def event(domain: str, methods: list[str], state: str = "open") -> EventRow:
    return EventRow(
        domain=domain, cc="CN", state=state, scope="national", asns="[4134]",
        methods=json.dumps(methods), volunteers="[]", evidence="[]", started_at=NOW,
        detected_at=NOW, updated_at=NOW, last_blocked_at=NOW, rule_version="t",
        forged_pool_version="t",
    )  # fmt: skip


def probe(pid: str, token: int | None, asn: int, seen: timedelta) -> ProbeRow:
    return ProbeRow(id=pid, status="active", role="probe", last_checkin_at=NOW - seen,
                    last_cc="CN", last_asn=asn, token_id=token)  # fmt: skip


def test_gauges_follow_the_database(
    settings: CollectorSettings, sessions: sessionmaker[Session]
) -> None:
    k = settings.model_copy(update={"publish_min_volunteers": 2, "measure_interval": 300.0})
    gauges = Gauges(k)
    with session_scope(sessions) as s:
        TargetService().add(s, ["a.example", "b.example"])
        s.add_all([network("a.example", 4134, "ok"), network("a.example", 4837, "blocked", 1),
                   network("b.example", 4134, "down")])  # fmt: skip
        s.add_all([event("a.example", ["dns", "tls"]), event("b.example", ["tls"], "closed")])
        s.add(TokenRow(id=1, token_hash="0" * 64, role="probe", max_uses=2, uses=2,
                       expires_at=NOW + timedelta(days=1), created_at=NOW))  # fmt: skip
        s.flush()
        # Two volunteers in AS4134 (one of them with two keys), one in AS4837, one stale.
        s.add_all([probe("p1", 1, 4134, timedelta(minutes=1)),
                   probe("p2", 1, 4134, timedelta(minutes=2)),
                   probe("p3", None, 4134, timedelta(minutes=3)),
                   probe("p4", None, 4837, timedelta(minutes=1)),
                   probe("p5", None, 4837, timedelta(hours=2))])  # fmt: skip
    with session_scope(sessions) as s:
        gauges.update(s, NOW)
    state = "blockwatch_target_state"
    assert sample(state, domain="a.example", cc="CN", kind="primary") == 3  # worst: blocked
    assert sample(state, domain="b.example", cc="CN", kind="primary") == 2  # down
    assert sample("blockwatch_open_events", cc="CN") == 1
    assert sample("blockwatch_open_events_by_method", cc="CN", method="tls") == 1
    assert sample("blockwatch_open_events_by_method", cc="CN", method="dns") == 1
    assert sample("blockwatch_probes_reporting", cc="CN") == 3  # volunteers, not keys
    assert sample("blockwatch_probes_reporting_network", cc="CN", asn="4134") == 2
    # One volunteer in AS4837: below K, no series (not even a 0).
    assert sample("blockwatch_probes_reporting_network", cc="CN", asn="4837") is None

    # The target removed, the event closed, the probes gone quiet.
    with session_scope(sessions) as s:
        TargetService().remove(s, "a.example")
        for row in s.query(EventRow):
            row.state = "closed"
    with session_scope(sessions) as s:
        gauges.update(s, NOW + timedelta(hours=1))
    assert sample(state, domain="a.example", cc="CN", kind="primary") is None
    assert sample("blockwatch_open_events", cc="CN") == 0
    assert sample("blockwatch_open_events_by_method", cc="CN", method="dns") == 0
    assert sample("blockwatch_probes_reporting", cc="CN") == 0
    assert sample("blockwatch_probes_reporting_network", cc="CN", asn="4134") is None
