"""The collector's own names as targets: which URLs name something to measure, their
ports, registration at startup (idempotent, two replicas at once, dropped endpoints
retired), and what probes and the public list get: the name with its port, and
measurements of it accepted like any target's."""

from __future__ import annotations

import base64
import threading

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from collector.api.app import create_app
from collector.core.db import session_scope
from collector.core.models import TargetRow
from collector.core.settings import CollectorSettings
from collector.services import reachability
from collector.services.targets import COLLECTOR_KIND, TargetService
from probe_agent.protocol.endpoints import Endpoint, verify
from tests.collector.conftest import CLIENT_IP, FakeClock, FakeGeolocator
from tests.collector.helpers import ADMIN, TestProbe, enroll, measurement, token

ENDPOINTS = ",".join(
    [
        "https://alt.bw.example:8443/base",
        "http://plain.bw.example:8080",  # a lab's plain HTTP: no TLS to measure
        "https://198.51.100.7",  # an address: nothing to resolve
        "https://[2001:db8::7]:8443",
        "https://bwcollectorabcdefghij.onion",  # reached through Tor, not measured
        "https://BW.example:9443",  # the public name again, another port: the first wins
        "https://xn--fiqs8s.bw.example",  # 中国 in IDNA
    ]
)


def own(settings: CollectorSettings, **update: str) -> CollectorSettings:
    return settings.model_copy(update=update)


def test_the_measured_names_are_the_https_host_names_each_once(
    settings: CollectorSettings,
) -> None:
    names = reachability.own_names(
        own(settings, public_url="https://bw.example", endpoints=ENDPOINTS)
    )
    assert [(n.domain, n.port) for n in names] == [
        ("bw.example", 443),
        ("alt.bw.example", 8443),
        ("xn--fiqs8s.bw.example", 443),
    ]


def test_a_collector_without_public_names_measures_nothing(settings: CollectorSettings) -> None:
    assert reachability.own_names(settings) == []
    assert reachability.own_names(own(settings, public_url="http://127.0.0.1:8080")) == []


def test_endpoints_are_checked_like_collector_urls(database_url: str) -> None:
    with pytest.raises(ValidationError, match="expected https:// or http://"):
        CollectorSettings(database_url=database_url, mode="lab", endpoints="ftp://bw.example")
    with pytest.raises(ValidationError, match="credentials"):
        CollectorSettings(database_url=database_url, mode="lab", endpoints="https://u:p@bw.example")
    ok = CollectorSettings(
        database_url=database_url, mode="lab", endpoints=" https://a.example/ , https://b.example"
    )
    assert ok.endpoints == "https://a.example,https://b.example"


def targets(sessions: sessionmaker[Session]) -> dict[str, tuple[str, bool, bool]]:
    """domain: (kind, enabled, removed)"""
    with session_scope(sessions) as s:
        rows = s.scalars(select(TargetRow)).all()
        return {r.domain: (r.kind, r.enabled, r.removed_at is not None) for r in rows}


def test_registration_makes_targets_and_retires_dropped_endpoints(
    settings: CollectorSettings, sessions: sessionmaker[Session]
) -> None:
    with session_scope(sessions) as s:
        TargetService().add(s, ["alive.bar"])
    first = own(settings, public_url="https://bw.example", endpoints="https://alt.bw.example")
    reachability.register_at_startup(first, sessions)
    reachability.register_at_startup(first, sessions)  # every start: nothing doubles
    assert targets(sessions) == {
        "alive.bar": ("primary", True, False),
        "bw.example": (COLLECTOR_KIND, True, False),
        "alt.bw.example": (COLLECTOR_KIND, True, False),
    }
    reachability.register_at_startup(own(settings, public_url="https://bw.example"), sessions)
    assert targets(sessions)["alt.bw.example"] == (COLLECTOR_KIND, False, True)
    assert targets(sessions)["alive.bar"] == ("primary", True, False)
    reachability.register_at_startup(settings, sessions)  # no public name left at all
    assert {d for d, (_k, enabled, _r) in targets(sessions).items() if enabled} == {"alive.bar"}


def test_two_replicas_registering_at_once_both_start(
    settings: CollectorSettings, sessions: sessionmaker[Session]
) -> None:
    names = own(settings, public_url="https://bw.example", endpoints="https://alt.bw.example")
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def replica() -> None:
        start.wait()
        try:
            reachability.register_at_startup(names, sessions)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(targets(sessions)) == ["alt.bw.example", "bw.example"]


def test_probes_get_the_collector_names_with_their_ports_and_may_measure_them(
    settings: CollectorSettings,
) -> None:
    app = create_app(
        own(settings, public_url="https://bw.example", endpoints="https://alt.bw.example:8443"),
        geolocator=FakeGeolocator(),
        clock=FakeClock(),
    )
    with TestClient(app, client=(CLIENT_IP, 40000)) as client:
        client.post("/api/v1/targets", json={"domains": ["alive.bar"]}, headers=ADMIN)
        probe = TestProbe()
        enroll(client, probe, token=token(client))
        answer = client.post("/api/v1/probes/checkin", json=probe.checkin())
        assert answer.status_code == 200, answer.text
        handed = {t["domain"]: (t["kind"], t["port"]) for t in answer.json()["targets"]}
        assert handed == {
            "alive.bar": ("primary", None),
            "alt.bw.example": (COLLECTOR_KIND, 8443),
            "bw.example": (COLLECTOR_KIND, 443),
        }
        listed = {t["domain"]: t["port"] for t in client.get("/api/v1/targets").json()["data"]}
        assert listed == {"alive.bar": None, "alt.bw.example": 8443, "bw.example": 443}
        m = measurement("alt.bw.example", port=8443)
        stored = client.post("/api/v1/measurements", json={"measurements": [probe.measure(m)]})
        assert stored.json()["results"][0]["status"] == "accepted", stored.text
        status = client.get("/api/v1/status/alt.bw.example")
        assert status.status_code == 200, status.text


def test_check_in_hands_out_the_endpoints_signed_with_the_collector_key(
    settings: CollectorSettings,
) -> None:
    app = create_app(
        own(
            settings,
            public_url="https://bw.example",
            endpoints="https://bw.example;address=203.0.113.9,https://alt.bw.example:8443",
        ),
        geolocator=FakeGeolocator(),
        clock=FakeClock(),
    )
    with TestClient(app, client=(CLIENT_IP, 40000)) as client:
        well_known = client.get("/.well-known/blockwatch.json").json()
        probe = TestProbe()
        enrolled = enroll(client, probe, token=token(client))
        assert enrolled["collector_key_id"] == well_known["collector_key_id"]
        assert enrolled["collector_public_key"] == well_known["public_key"]
        answer = client.post("/api/v1/probes/checkin", json=probe.checkin()).json()
    listed, public = verify(answer["endpoints"], well_known["collector_key_id"])
    assert base64.b64encode(public).decode() == well_known["public_key"]
    assert listed.endpoints == (
        Endpoint("https://bw.example"),
        Endpoint("https://bw.example", address="203.0.113.9"),
        Endpoint("https://alt.bw.example:8443"),
    )


def test_a_collector_with_no_url_to_hand_out_sends_no_list(settings: CollectorSettings) -> None:
    app = create_app(settings, geolocator=FakeGeolocator(), clock=FakeClock())
    with TestClient(app, client=(CLIENT_IP, 40000)) as client:
        probe = TestProbe()
        enroll(client, probe, token=token(client))
        answer = client.post("/api/v1/probes/checkin", json=probe.checkin()).json()
    assert answer["endpoints"] is None


def test_check_in_hands_out_the_operators_decoy_pool(settings: CollectorSettings) -> None:
    raw = "www.Apple.com,static.example.net,www.apple.com"
    pooled = CollectorSettings.model_validate(settings.model_dump() | {"decoy_snis": raw})
    app = create_app(pooled, geolocator=FakeGeolocator(), clock=FakeClock())
    with TestClient(app, client=(CLIENT_IP, 40000)) as client:
        probe = TestProbe()
        enroll(client, probe, token=token(client))
        answer = client.post("/api/v1/probes/checkin", json=probe.checkin()).json()
    assert answer["decoys"] == ["www.apple.com", "static.example.net"]
    with pytest.raises(ValidationError, match="invalid decoy name"):
        CollectorSettings(database_url=settings.database_url, mode="lab", decoy_snis="bad name")
