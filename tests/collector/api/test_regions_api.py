"""Regions at ingest: from the operator's city database, else declared (``run --region``),
never another country's, never from a proxy's exit; stored on the measurement and its
verdict, shown at check-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mmdb_writer import MMDBWriter
from netaddr import IPSet
from sqlalchemy import select

from collector.api.app import create_app
from collector.core.db import make_engine, make_session_factory, session_scope
from collector.core.models import MeasurementRow, ProbeRow
from collector.core.settings import CollectorSettings
from tests.collector.conftest import CLIENT_IP, FakeClock, FakeGeolocator
from tests.collector.helpers import ADMIN, TestProbe, enroll, error_code, token


def _city(path: Path) -> Path:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True)
    writer.insert_network(IPSet([f"{CLIENT_IP}/32"]), {
        "country": {"iso_code": "CN"},
        "subdivisions": [{"iso_code": "GD", "names": {"en": "Guangdong"}}],
    })  # fmt: skip
    writer.to_db_file(str(path))
    return path


@pytest.fixture(params=["no city database", "city database"])
def located(
    request: pytest.FixtureRequest, settings: CollectorSettings, clock: FakeClock,
    tmp_path: Path,
) -> Iterator[tuple[TestClient, bool]]:  # fmt: skip
    city = request.param == "city database"
    if city:
        settings = settings.model_copy(update={"geoip_city_db": _city(tmp_path / "city.mmdb")})
    app = create_app(settings, geolocator=FakeGeolocator(), clock=clock)  # type: ignore[arg-type]
    with TestClient(app, client=(CLIENT_IP, 40000)) as client:
        client.post("/api/v1/targets", json={"domains": ["alive.bar"]}, headers=ADMIN)
        yield client, city
    app.state.city_regions and app.state.city_regions.close()


def stored(settings: CollectorSettings) -> list[tuple[Any, ...]]:
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as s:
            m = MeasurementRow
            return [tuple(r) for r in s.execute(select(m.cc, m.asn, m.region, m.region_source)
                                                .order_by(m.id))]  # fmt: skip
    finally:
        engine.dispose()


def test_the_city_database_wins_over_a_declaration_and_the_probe_is_told(
    located: tuple[TestClient, bool], settings: CollectorSettings
) -> None:
    client, city = located
    probe = TestProbe(region="CN-HA")
    enroll(client, probe, token=token(client))
    network = client.post("/api/v1/probes/checkin", json=probe.checkin()).json()["network"]
    answer = client.post("/api/v1/measurements", json={"measurements": [probe.measure()]})
    assert answer.json()["accepted"] == 1, answer.text
    expected = ("CN-GD", "geolocated") if city else ("CN-HA", "declared")
    assert (network["region"], network["region_source"]) == expected
    assert stored(settings) == [("CN", 4134, *expected)]
    engine = make_engine(settings.database_url)
    with session_scope(make_session_factory(engine)) as s:
        [row] = s.scalars(select(ProbeRow))
        assert (row.declared_region, row.last_region) == ("CN-HA", expected[0])
    engine.dispose()


def test_a_proxied_probe_is_never_placed_by_its_exit(
    located: tuple[TestClient, bool], settings: CollectorSettings
) -> None:
    client, _ = located
    probe = TestProbe(declared={"cc": "CN", "asn": 4837}, region="CN-HA")
    enroll(client, probe, token=token(client))
    answer = client.post("/api/v1/measurements",
                         json={"measurements": [probe.measure(via_proxy=True)]})  # fmt: skip
    assert answer.json()["accepted"] == 1, answer.text
    assert stored(settings) == [("CN", 4837, "CN-HA", "declared")]


@pytest.mark.parametrize("region", ["US-CA", "CN-ZZ"])
def test_another_countrys_or_an_unknown_region_is_no_region(
    located: tuple[TestClient, bool], settings: CollectorSettings, region: str
) -> None:
    client, city = located
    probe = TestProbe(region=region)
    enroll(client, probe, token=token(client))
    answer = client.post("/api/v1/measurements", json={"measurements": [probe.measure()]})
    assert answer.json()["accepted"] == 1, answer.text
    assert stored(settings) == [("CN", 4134, *(("CN-GD", "geolocated") if city else (None, None)))]


def test_a_malformed_region_is_refused_and_nothing_is_stored(
    located: tuple[TestClient, bool], settings: CollectorSettings
) -> None:
    client, _ = located
    probe = TestProbe(region="Henan")
    refused = client.post("/api/v1/probes/enroll", json=probe.enroll(token=token(client)))
    assert error_code(refused) == "err_malformed_payload" and "region" in refused.text
    probe.region = None
    enroll(client, probe, token=token(client))
    probe.region = "Henan"
    answer = client.post("/api/v1/measurements", json={"measurements": [probe.measure()]})
    assert answer.status_code == 200 and answer.json()["rejected"] == 1, answer.text
    assert answer.json()["results"][0]["error"]["code"] == "err_malformed_payload"
    assert stored(settings) == []


def test_a_token_vouches_only_for_a_region_iso_knows(client: TestClient) -> None:
    bad = client.post("/api/v1/probes/tokens", headers=ADMIN,
                      json={"cc": "CN", "asn": 4134, "region": "CN-ZZ"})  # fmt: skip
    assert bad.status_code == 422 and "no such subdivision" in bad.text
    assert error_code(bad) == "err_validation"


def test_the_verdict_keeps_the_measurements_region(
    located: tuple[TestClient, bool], settings: CollectorSettings, clock: FakeClock
) -> None:
    from collector.core.models import VerdictRow
    from collector.detection.passes import Detector

    client, city = located
    probe = TestProbe(region="CN-HA")
    enroll(client, probe, token=token(client))
    answer = client.post("/api/v1/measurements", json={"measurements": [probe.measure()]})
    assert answer.json()["accepted"] == 1, answer.text
    clock.offset_seconds += 60  # no control comes: the verdict is "unknown" after the wait
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    try:
        Detector(settings.model_copy(update={"control_wait": 1.0}), clock).run_pass(sessions)
        with session_scope(sessions) as s:
            [verdict] = s.scalars(select(VerdictRow))
            assert (verdict.region, verdict.region_source) == (
                ("CN-GD", "geolocated") if city else ("CN-HA", "declared")
            )
    finally:
        engine.dispose()
