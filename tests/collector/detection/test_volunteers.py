"""Volunteers, not keys, vote: Sybils, unvouched liars and revocations against a real pass.

Each test has its attacker and, where the attack alone could pass for a bug that
opens nothing at all, the honest counterpart that does open an event: the
difference is the trust model, not a broken pipeline.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from collector.core.db import make_engine, make_session_factory
from collector.core.settings import CollectorSettings
from collector.detection.passes import Detector
from tests.collector.analysis import builders as b
from tests.collector.conftest import FakeClock
from tests.collector.helpers import ADMIN, TestProbe, enroll, rfc3339, token

DOMAIN = b.DOMAIN
CN_ASN = 4134  # where tests.collector.conftest's FakeGeolocator puts the client


class Network:
    """Probes and a control submitting through the API; detection passes run by hand."""

    def __init__(self, client: TestClient, settings: CollectorSettings, clock: FakeClock) -> None:
        self.client, self.clock = client, clock
        self.control = TestProbe()
        enroll(client, self.control, token=token(client, role="control"), role="control")
        answer = client.post("/api/v1/targets", json={"domains": [DOMAIN]}, headers=ADMIN)
        assert answer.status_code == 201, answer.text
        self.engine = make_engine(settings.database_url)
        self.detector = Detector(settings, clock)

    def probes(self, count: int, declared: bool = False, **token_body: Any) -> list[TestProbe]:
        """*count* probes enrolled with one token made with *token_body*."""
        value = token(self.client, uses=count, **token_body)
        found = []
        for _ in range(count):
            probe = TestProbe(declared={"cc": "CN", "asn": CN_ASN} if declared else None)
            enroll(self.client, probe, token=value)
            found.append(probe)
        return found

    def submit(self, probes: list[TestProbe], m: dict[str, Any], at: datetime, proxy: bool) -> None:
        for probe in probes:
            body = dict(m, measurement_id=str(uuid.uuid4()), started_at=rfc3339(at))
            envelope = probe.measure(body, at=at, via_proxy=proxy)
            answer = self.client.post("/api/v1/measurements", json={"measurements": [envelope]})
            assert answer.json()["accepted"] == 1, answer.text

    def blocked_round(self, probes: list[TestProbe], proxy: bool = False) -> None:
        """*probes* see the block; the control reaches the instance just after."""
        at = self.clock.now() - timedelta(seconds=30)
        self.submit(probes, b.sni_blocked(), at, proxy)
        self.submit([self.control], b.control(), at + timedelta(seconds=3), proxy=False)
        self.pass_()

    def pass_(self) -> None:
        self.detector.run_pass(make_session_factory(self.engine))

    def events(self, state: str = "open") -> list[dict[str, Any]]:
        answer = self.client.get("/api/v1/events", params={"state": state}, headers=ADMIN)
        assert answer.status_code == 200, answer.text
        data: list[dict[str, Any]] = answer.json()["data"]
        return data

    def networks(self) -> list[tuple[int | None, str, int]]:
        answer = self.client.get(f"/api/v1/status/{DOMAIN}", headers=ADMIN)
        return [(n["asn"], n["state"], n["probes"]) for n in answer.json()["networks"]]


@pytest.fixture
def net(client: TestClient, settings: CollectorSettings, clock: FakeClock) -> Any:
    world = Network(client, settings, clock)
    yield world
    world.engine.dispose()


def test_ten_keys_of_one_token_are_one_volunteer_and_open_nothing(net: Network) -> None:
    sybil = net.probes(10)
    net.blocked_round(sybil)
    assert net.events() == []
    assert net.networks() == [(CN_ASN, "blocked", 1)]  # ten keys, one vote


def test_two_volunteers_open_what_ten_keys_of_one_could_not(net: Network) -> None:
    honest = net.probes(1) + net.probes(1)
    net.blocked_round(honest)
    [event] = net.events()
    assert event["probes"] == 2 and event["asns"] == [CN_ASN]


def test_three_unvouched_liars_behind_proxies_open_nothing(net: Network) -> None:
    # Declared networks (every measurement through a proxy is one) that no token
    # and no operator vouched for: seen by operators, never a vote.
    liars = net.probes(1, declared=True) + net.probes(1, declared=True)
    liars += net.probes(1, declared=True)
    net.blocked_round(liars, proxy=True)
    assert net.events() == [] and net.networks() == []
    listed = net.client.get("/api/v1/probes", headers=ADMIN).json()["data"]
    liar_rows = [p for p in listed if p["role"] == "probe"]
    assert len(liar_rows) == 3 and not any(p["declared_vouched"] for p in liar_rows)
    assert {p["network_source"] for p in liar_rows} == {None}  # none has checked in yet


def test_vouched_declared_networks_count(net: Network) -> None:
    vouched = [p for _ in range(2) for p in net.probes(1, declared=True, cc="CN", asn=CN_ASN)]
    net.blocked_round(vouched, proxy=True)
    [event] = net.events()
    assert event["asns"] == [CN_ASN] and event["probes"] == 2


def test_a_token_vouches_only_for_its_own_network(net: Network) -> None:
    elsewhere = [p for _ in range(2) for p in net.probes(1, declared=True, cc="CN", asn=4837)]
    net.blocked_round(elsewhere, proxy=True)  # they declare AS4134, vouched for AS4837
    assert net.events() == []


def test_an_operator_vouches_for_a_probe_and_its_declared_network_counts(net: Network) -> None:
    probes = net.probes(1, declared=True) + net.probes(1, declared=True)
    net.blocked_round(probes, proxy=True)
    assert net.events() == []
    listed = net.client.get("/api/v1/probes", headers=ADMIN).json()["data"]
    for row in (p for p in listed if p["role"] == "probe"):
        answer = net.client.post(
            f"/api/v1/probes/{row['probe_id']}/vouch",
            json={"cc": "CN", "asn": CN_ASN, "region": "CN-GD"},
            headers=ADMIN,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["vouched_asn"] == CN_ASN and answer.json()["region"] == "CN-GD"
    net.pass_()  # the stored verdicts count from the next pass on
    [event] = net.events()
    assert event["probes"] == 2


def test_revoked_volunteers_stop_counting_and_an_event_they_alone_opened_is_withdrawn(
    net: Network,
) -> None:
    first, second, third = net.probes(1), net.probes(1), net.probes(1)
    net.blocked_round(first + second + third)
    [event] = net.events()
    assert event["probes"] == 3
    tokens = net.client.get("/api/v1/probes/tokens", headers=ADMIN).json()["data"]
    probe_tokens = [t["token_id"] for t in tokens if t["role"] == "probe"]
    assert len(probe_tokens) == 3

    answer = net.client.post(f"/api/v1/probes/tokens/{probe_tokens[0]}/revoke", headers=ADMIN)
    assert answer.status_code == 200 and answer.json()["revoked_at"], answer.text
    net.pass_()
    assert net.networks() == [(CN_ASN, "blocked", 2)]  # the revoked volunteer is gone
    assert [e["id"] for e in net.events()] == [event["id"]]  # two still see it

    listed = net.client.get("/api/v1/probes", headers=ADMIN).json()["data"]
    for row in listed:
        if row["token_id"] in probe_tokens[1:]:
            net.client.post(f"/api/v1/probes/{row['probe_id']}/revoke", headers=ADMIN)
    net.pass_()
    assert net.events() == []  # nobody who saw it counts any more: withdrawn
    [closed] = net.events(state="closed")
    assert closed["id"] == event["id"]
    assert net.networks() == [] or all(n[2] == 0 for n in net.networks())


def test_a_revoked_token_enrolls_nobody(net: Network) -> None:
    value = token(net.client, uses=5)
    tokens = net.client.get("/api/v1/probes/tokens", headers=ADMIN).json()["data"]
    [row] = [t for t in tokens if t["role"] == "probe"]
    net.client.post(f"/api/v1/probes/tokens/{row['token_id']}/revoke", headers=ADMIN)
    answer = net.client.post("/api/v1/probes/enroll", json=TestProbe().enroll(token=value))
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "err_invalid_token"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"cc": "CN"}, "both a country"),
        ({"cc": "CN", "asn": 4134, "region": "DE-BE"}, "not in CN"),
        ({"cc": "CN", "asn": 4134, "region": "guangdong"}, "ISO 3166-2"),
    ],
)
def test_a_vouching_token_needs_a_whole_network(
    net: Network, body: dict[str, Any], message: str
) -> None:
    answer = net.client.post("/api/v1/probes/tokens", json=body, headers=ADMIN)
    assert answer.status_code == 422 and message in answer.json()["error"]["message"]
