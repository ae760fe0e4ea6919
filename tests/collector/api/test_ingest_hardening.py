"""Ingestion as an attacker tries it: floods, squatting, junk, backdating, oversize, nesting.

Every refusal is a clear per-item (or per-request) error; nothing refused is stored;
honest probes' measurements around the attack still go in.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select

from collector.api.app import create_app
from collector.core.models import MeasurementRow
from collector.core.settings import CollectorSettings
from probe_agent.protocol.envelope import Purpose
from tests.collector.conftest import CLIENT_IP, FakeClock, FakeGeolocator
from tests.collector.helpers import ADMIN, TestProbe, enroll, error_code, measurement, token

TARGET = "alive.bar"


@contextmanager
def serving(
    settings: CollectorSettings, clock: FakeClock, **overrides: Any
) -> Iterator[TestClient]:
    app = create_app(
        settings.model_copy(update=overrides), geolocator=FakeGeolocator(), clock=clock
    )
    with TestClient(app, client=(CLIENT_IP, 40000)) as client:
        answer = client.post("/api/v1/targets", json={"domains": [TARGET]}, headers=ADMIN)
        assert answer.status_code == 201, answer.text
        yield client


def enrolled(client: TestClient) -> TestProbe:
    probe = TestProbe()
    enroll(client, probe, token=token(client))
    return probe


def post(client: TestClient, *items: Any) -> Any:
    return client.post("/api/v1/measurements", json={"measurements": list(items)})


def codes(answer: Any) -> list[str | None]:
    assert answer.status_code == 200, answer.text
    return [(r.get("error") or {}).get("code") for r in answer.json()["results"]]


def stored(settings: CollectorSettings) -> int:
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(MeasurementRow)).scalar_one()
    engine.dispose()
    return int(count)


def junk() -> dict[str, str]:
    """An item that names a key nobody holds (a fresh one each time)."""
    return {"key_id": uuid.uuid4().hex * 2, "payload": "e30=", "signature": "A" * 88}


def test_a_junk_first_item_buys_no_fresh_bucket(
    settings: CollectorSettings, clock: FakeClock
) -> None:
    with serving(settings, clock, probe_rate_limit=3) as client:
        probe = enrolled(client)
        answers = [post(client, junk(), probe.measure()) for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert answers[3].headers["retry-after"] and error_code(answers[3]) == "err_rate_limited"
    assert stored(settings) == 3


def test_a_flood_of_junk_alone_is_limited_together(
    settings: CollectorSettings, clock: FakeClock
) -> None:
    with serving(settings, clock, unverified_rate_limit=2) as client:
        answers = [post(client, junk(), junk()) for _ in range(4)]
        honest = post(client, enrolled(client).measure())
    assert [a.status_code for a in answers] == [200, 200, 429, 429]
    assert codes(honest) == [None]  # a probe's own bucket is untouched


def test_measurements_must_be_of_targets(settings: CollectorSettings, clock: FakeClock) -> None:
    with serving(settings, clock, public_url="https://collector.example") as client:
        probe = enrolled(client)
        answer = post(
            client,
            probe.measure(measurement("not-a-target.example")),
            probe.measure(measurement(TARGET)),
            probe.measure(measurement("collector.example")),  # its own name: issue 15
        )
        assert codes(answer) == ["err_not_a_target", None, None]
        assert "not a target" in answer.json()["results"][0]["error"]["message"]
        # A target removed now still takes what probes spooled before.
        client.delete(f"/api/v1/targets/{TARGET}", headers=ADMIN)
        assert TARGET not in [t["domain"] for t in client.get("/api/v1/targets").json()["data"]]
        assert codes(post(client, probe.measure(measurement(TARGET)))) == [None]
    assert stored(settings) == 3


def test_a_measurement_cannot_start_after_it_was_signed(
    settings: CollectorSettings, clock: FakeClock
) -> None:
    with serving(settings, clock) as client:
        probe = enrolled(client)
        later = datetime.now(UTC) + timedelta(minutes=2)  # inside the clock skew allowed
        body = measurement(started_at=later.isoformat().replace("+00:00", "Z"))
        assert codes(post(client, probe.measure(body))) == ["err_timestamp_out_of_window"]
    assert stored(settings) == 0


def test_oversized_and_overgrown_documents_are_refused_and_a_new_field_is_kept(
    settings: CollectorSettings, clock: FakeClock
) -> None:
    with serving(settings, clock) as client:
        probe = enrolled(client)
        huge = measurement(notes="x" * (70 * 1024))
        many = measurement(**{f"field_{i}": i for i in range(17)})
        wide = measurement(dns=[{f"k{i}": i for i in range(65)}])
        newer = measurement(quic=[{"ip": "45.76.1.2", "failure": None}])
        answer = post(client, *(probe.measure(m) for m in (huge, many, wide, newer)))
        assert codes(answer) == [
            "err_payload_too_large",
            "err_malformed_payload",
            "err_malformed_payload",
            None,
        ]
    assert stored(settings) == 1


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("path", ["/api/v1/measurements", "/api/v1/probes/enroll"])
def test_deeply_nested_json_is_a_400_not_a_500(
    settings: CollectorSettings, clock: FakeClock, path: str
) -> None:
    with serving(settings, clock) as client:
        body = '{"measurements": ' + deep(100_000) + "}"
        answer = client.post(path, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert error_code(answer) == "err_malformed_json"
        assert client.get("/healthz").status_code == 200  # and it keeps serving


def test_check_ins_live_minutes_and_measurements_days(
    settings: CollectorSettings, clock: FakeClock
) -> None:
    with serving(settings, clock) as client:
        probe = enrolled(client)
        old = datetime.now(UTC) - timedelta(minutes=11)
        checkin = probe.signed(Purpose.CHECKIN, {"software": {"version": "1"}}, at=old)
        answer = client.post("/api/v1/probes/checkin", json=checkin)
        assert answer.status_code == 422 and error_code(answer) == "err_timestamp_out_of_window"
        spooled = measurement(started_at=(old - timedelta(days=2)).isoformat())
        assert codes(post(client, probe.measure(spooled, at=old))) == [None]
        stale = TestProbe().enroll(at=old)
        answer = client.post("/api/v1/probes/enroll", json=stale)
        assert error_code(answer) == "err_timestamp_out_of_window"


def test_a_retired_key_is_accepted_only_within_the_grace_after_the_rotation(
    settings: CollectorSettings, clock: FakeClock
) -> None:
    with serving(settings, clock, retired_key_grace=3600.0) as client:
        old = enrolled(client)
        before = datetime.now(UTC) - timedelta(seconds=5)
        taken = measurement(started_at=(before - timedelta(seconds=1)).isoformat())
        spooled = [old.measure(dict(taken, measurement_id=str(uuid.uuid4())), at=before)
                   for _ in range(2)]  # fmt: skip
        new = TestProbe()
        assert client.post("/api/v1/probes/rotate", json=old.rotate_to(new)).status_code == 200
        assert codes(post(client, spooled[0])) == [None]  # signed before, sent soon after
        clock.offset_seconds += 7200  # past the grace: a stolen old key dates nothing any more
        assert codes(post(client, spooled[1])) == ["err_revoked_key"]
        assert codes(post(client, new.measure())) == [None]


def test_the_quota_counts_measurement_time_so_a_backlog_drains(
    settings: CollectorSettings, clock: FakeClock
) -> None:
    with serving(settings, clock, measurement_quota=3, measure_interval=300.0) as client:
        probe = enrolled(client)
        start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=2)
        start -= timedelta(minutes=start.minute % 5)  # the start of an interval

        def at(offset: timedelta) -> dict[str, str]:
            when = start + offset
            return probe.measure(measurement(started_at=when.isoformat()))

        same = [at(timedelta(seconds=10 * i)) for i in range(4)]
        assert codes(post(client, *same)) == [None, None, None, "err_rate_limited"]
        backlog = [at(timedelta(minutes=5 * i)) for i in range(1, 40)]  # 39 intervals
        assert codes(post(client, *backlog)) == [None] * 39
        # A duplicate gives its place back: it was not stored twice.
        assert codes(post(client, same[0])) == [None]
        assert post(client, same[0]).json()["duplicates"] == 1


def test_nobody_can_squat_another_probes_measurement_id(
    settings: CollectorSettings, clock: FakeClock
) -> None:
    with serving(settings, clock) as client:
        honest, squatter = enrolled(client), enrolled(client)
        body = measurement()
        fake = dict(body, dns=[])
        assert codes(post(client, squatter.measure(fake))) == [None]
        answer = post(client, honest.measure(body))
        assert codes(answer) == [None] and answer.json()["accepted"] == 1
    assert stored(settings) == 2


def test_the_enrollment_queue_is_bounded(settings: CollectorSettings, clock: FakeClock) -> None:
    with serving(settings, clock, max_pending_enrollments=2) as client:
        answers = [
            client.post("/api/v1/probes/enroll", json=TestProbe().enroll()) for _ in range(3)
        ]
        assert [a.status_code for a in answers] == [201, 201, 429]
        assert "queue is full" in answers[2].json()["error"]["message"]
        # With a token, enrollment does not wait in the queue.
        enrolled(client)


def test_a_real_batch_fits_the_body_limit(settings: CollectorSettings) -> None:
    """The body limit holds the largest batch the probe sends (client.MAX_BATCH items)
    of measurements the size of real ones (the demo's: 1.6 to 3.2 KB signed)."""
    from probe_agent.daemon.client import MAX_BATCH

    item = TestProbe().measure(measurement(tls=[{"certificate": {"pem": "x" * 3000}}]))
    body = json.dumps({"measurements": [item] * MAX_BATCH}).encode()
    assert len(body) * 4 < settings.max_body_bytes  # a quarter of the limit


def test_junk_naming_a_probes_key_cannot_spend_its_check_ins(
    settings: CollectorSettings, clock: FakeClock
) -> None:
    with serving(settings, clock, probe_rate_limit=2) as client:
        probe = enrolled(client)
        forged = dict(probe.checkin(), signature="A" * 86 + "==")
        for _ in range(5):
            answer = client.post("/api/v1/probes/checkin", json=forged)
            assert answer.status_code == 401 and error_code(answer) == "err_bad_signature"
        answers = [client.post("/api/v1/probes/checkin", json=probe.checkin()) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
