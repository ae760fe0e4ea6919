"""What the public reads: every public GET scanned for a small network and an exact time.

The world is real: volunteers enrolled through vouching tokens submit signed
measurements through the API, the control too, and a detection pass opens the
event. Three volunteers report from AS4134 (K = 3, the default) and one from
AS137693: the public may name the first, never the second, and may show no
stored time finer than the measurement interval. The admin sees both, exactly.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError
from sqlalchemy import DateTime, select
from sqlalchemy.orm import Session

from collector.alerts.outbox import Outbox
from collector.api.app import create_app
from collector.api.metrics_listener import metrics_listener
from collector.core.db import make_engine, make_session_factory, session_scope
from collector.core.models import (
    DetectorStateRow,
    EventChangeRow,
    EventRow,
    MeasurementRow,
    NetworkStateRow,
    ProbeRow,
    VerdictRow,
)
from collector.core.publication import floor_time
from collector.core.settings import CollectorSettings
from collector.detection.passes import Detector
from tests.collector.analysis import builders as b
from tests.collector.conftest import CLIENT_IP, FakeClock, FakeGeolocator
from tests.collector.helpers import ADMIN, TestProbe, enroll, rfc3339, token
from tests.collector.serving import free_port

DOMAIN = b.DOMAIN
LARGE, SMALL = 4134, 137693  # AS137693: a number that appears nowhere else in an answer
METRICS_TOKEN = "metrics-" + "r" * 32
# Tables whose times come from volunteers' measurements and check-ins.
TIMED = (MeasurementRow, VerdictRow, EventRow, EventChangeRow, NetworkStateRow,
         DetectorStateRow, ProbeRow)  # fmt: skip


class World:
    """Four volunteers (three in AS4134, one in AS137693) and a control; one event open."""

    def __init__(self, client: TestClient, settings: CollectorSettings, clock: FakeClock) -> None:
        self.client, self.settings = client, settings
        control = TestProbe()
        enroll(client, control, token=token(client, role="control"), role="control")
        assert client.post("/api/v1/targets", json={"domains": [DOMAIN]}, headers=ADMIN).is_success
        volunteers = [self.volunteer(LARGE) for _ in range(3)] + [self.volunteer(SMALL)]
        at = clock.now() - timedelta(seconds=30)
        for probe in volunteers:
            self.submit(probe, b.sni_blocked(), at, proxy=True)
        self.submit(control, b.control(), at + timedelta(seconds=3), proxy=False)
        self.engine = make_engine(settings.database_url)
        self.sessions = make_session_factory(self.engine)
        Detector(settings, clock).run_pass(self.sessions)
        [event] = self.get("/api/v1/events", ADMIN)["data"]
        assert sorted(event["asns"]) == [LARGE, SMALL], event
        self.event_id: int = event["id"]

    def volunteer(self, asn: int) -> TestProbe:
        probe = TestProbe(declared={"cc": "CN", "asn": asn})
        enroll(self.client, probe, token=token(self.client, cc="CN", asn=asn))
        return probe

    def submit(self, probe: TestProbe, m: dict[str, Any], at: datetime, proxy: bool) -> None:
        body = dict(m, measurement_id=str(uuid.uuid4()), started_at=rfc3339(at))
        envelope = probe.measure(body, at=at, via_proxy=proxy)
        answer = self.client.post("/api/v1/measurements", json={"measurements": [envelope]})
        assert answer.json()["accepted"] == 1, answer.text

    def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        answer = self.client.get(path, headers=headers)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def stored_times(self) -> list[datetime]:
        with session_scope(self.sessions) as session:
            return [t for table in TIMED for t in _times_of(session, table)]

    def leaks(self, text: str) -> list[str]:
        """The small network's number and the exact times found in *text*."""
        found = [str(SMALL)] if str(SMALL) in text else []
        for when in self.stored_times():
            found += [form for form in exact_forms(when, self.settings) if form in text]
        return found


def _times_of(session: Session, table: Any) -> Iterator[datetime]:
    columns = [c for c in table.__table__.columns if _is_time(c.type)]
    for row in session.execute(select(*columns)):
        yield from (value for value in row if value is not None)


def _is_time(kind: Any) -> bool:
    return isinstance(kind, DateTime) or isinstance(getattr(kind, "impl_instance", None), DateTime)


def exact_forms(when: datetime, settings: CollectorSettings) -> list[str]:
    """How *when* could be written, at each precision finer than the interval that tells
    it from its rounded value (12:03:17.25 with 5 minutes: to the minute, second, microsecond)."""
    rounded = floor_time(when, settings.measure_interval)
    forms = []
    if when.replace(second=0, microsecond=0) != rounded:
        forms += [when.strftime("%Y-%m-%dT%H:%M"), when.strftime("%Y-%m-%d %H:%M")]
    if when.replace(microsecond=0) != rounded:
        forms += [when.strftime("%Y-%m-%dT%H:%M:%S"), str(int(when.timestamp()))]
    if when != rounded:
        forms.append(when.strftime("%H:%M:%S.%f")[:12])  # to the millisecond, any format
    return forms


@pytest.fixture
def world(client: TestClient, settings: CollectorSettings, clock: FakeClock) -> Iterator[World]:
    made = World(client, settings, clock)
    yield made
    made.engine.dispose()


def path_values(world: World) -> dict[str, str]:
    """A realistic value for each path parameter a public route may have."""
    return {"domain": DOMAIN, "event_id": str(world.event_id), "id": str(world.event_id),
            "cc": "CN", "sub_id": "sub_nobody", "name": "site.css"}  # fmt: skip


def get_paths(routes: Iterable[Any], prefix: str = "") -> Iterator[str]:
    """The path of every GET route, included routers' too (whatever FastAPI's layout)."""
    for route in routes:
        context = getattr(route, "include_context", None)
        if context is not None:
            yield from get_paths(context.included_router.routes, prefix + context.prefix)
        elif isinstance(route, APIRoute) and "GET" in (route.methods or ()):
            yield prefix + route.path


def public_answers(world: World) -> dict[str, str]:
    """Every GET route of the app, asked without a token (those that answer), and /metrics
    with the metrics token: path -> the answer's text."""
    values, answers = path_values(world), {}
    for template in get_paths(world.client.app.routes):  # type: ignore[attr-defined]
        names = re.findall(r"{(\w+)(?::\w+)?}", template)
        missing = [n for n in names if n not in values]
        assert not missing, f"{template}: add a value for {missing} to path_values"
        path = re.sub(r"{(\w+)(?::\w+)?}", lambda m: values[m.group(1)], template)
        headers = {"Authorization": f"Bearer {METRICS_TOKEN}"} if path == "/metrics" else None
        for query in ("", f"?domain={DOMAIN}", "?state=open", "?cc=CN"):
            answer = world.client.get(path + query, headers=headers)
            if answer.status_code in (401, 403):  # needs a token: not public
                break
            answers[path + query] = answer.text
    assert {"/metrics", f"/api/v1/status/{DOMAIN}", "/api/v1/events", "/", f"/i/{DOMAIN}",
            f"/i/{DOMAIN}/badge.svg", "/?cc=CN"} <= set(answers)  # the pages too  # fmt: skip
    return answers


@pytest.fixture
def settings(settings: CollectorSettings) -> CollectorSettings:
    return settings.model_copy(update={"metrics_token": SecretStr(METRICS_TOKEN)})


def test_no_public_answer_names_a_small_network_or_an_exact_time(world: World) -> None:
    leaks = {path: found for path, text in public_answers(world).items()
             if (found := world.leaks(text))}  # fmt: skip
    assert leaks == {}


def test_the_admin_sees_the_small_network_and_the_exact_times(world: World) -> None:
    # The scan above could fail: on the admin's answers it finds both.
    status = world.get(f"/api/v1/status/{DOMAIN}", ADMIN)
    assert [(n["asn"], n["probes"]) for n in status["networks"]] == [(LARGE, 3), (SMALL, 1)]
    event = world.get(f"/api/v1/events/{world.event_id}", ADMIN)
    assert str(SMALL) in world.leaks(json.dumps(event))
    assert len(world.leaks(json.dumps(event))) > 1 and event["withheld_networks"] == 0


def test_the_public_sees_the_large_network_and_the_country_row(world: World) -> None:
    status = world.get(f"/api/v1/status/{DOMAIN}")
    large, country = status["networks"]
    assert (large["asn"], large["state"], large["probes"]) == (LARGE, "blocked", 3)
    assert (country["cc"], country["asn"], country["state"]) == ("CN", None, "blocked")
    assert country["probes"] == 1 and country["methods"] == ["dns", "tls"]
    for network in status["networks"]:
        since = datetime.fromisoformat(network["since"])
        assert since == floor_time(since, world.settings.measure_interval)
    [event] = world.get("/api/v1/events")["data"]
    assert (event["asns"], event["withheld_networks"], event["probes"]) == ([LARGE], 1, 4)
    # A subscriber's token, or a wrong one, reads the public view.
    wrong = world.get("/api/v1/events", {"Authorization": "Bearer not-the-admin"})
    assert wrong["data"] == [event]


def test_alerts_are_k_anonymous_and_rounded_with_their_id_and_evidence_url(
    world: World, clock: FakeClock
) -> None:
    outbox = Outbox(world.settings, clock, world.sessions)
    with session_scope(world.sessions) as session:
        [change] = session.scalars(select(EventChangeRow))
        document = outbox.document(session, change)
    assert world.leaks(json.dumps(document)) == []
    data = document["data"]
    assert (data["id"], data["asns"], data["withheld_networks"]) == (world.event_id, [LARGE], 1)
    assert data["evidence_url"].endswith(f"/api/v1/events/{world.event_id}")


def test_publish_min_volunteers_1_names_every_network_and_still_rounds(
    database_url: str, geolocator: FakeGeolocator, clock: FakeClock
) -> None:
    settings = CollectorSettings(
        database_url=database_url, mode="lab", admin_token=ADMIN["Authorization"][7:],
        probe_rate_limit=0, detector=False, publish_min_volunteers=1,
    )  # fmt: skip
    with TestClient(create_app(settings, geolocator=geolocator, clock=clock),
                    client=(CLIENT_IP, 40000)) as client:  # fmt: skip
        world = World(client, settings, clock)
        try:
            status = world.get(f"/api/v1/status/{DOMAIN}")
            assert [n["asn"] for n in status["networks"]] == [LARGE, SMALL]
            [event] = world.get("/api/v1/events")["data"]
            assert sorted(event["asns"]) == [LARGE, SMALL] and event["withheld_networks"] == 0
            for text in (json.dumps(status), json.dumps(event)):
                assert world.leaks(text) == [str(SMALL)]  # named, but no exact time
        finally:
            world.engine.dispose()


def test_metrics_need_a_token_on_the_main_listener(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "err_unauthorized"
    for bearer in (METRICS_TOKEN, ADMIN["Authorization"][7:]):
        answer = client.get("/metrics", headers={"Authorization": f"Bearer {bearer}"})
        assert answer.status_code == 200 and "blockwatch_rejections_total" in answer.text


def test_the_private_listener_serves_metrics_without_a_token(
    settings: CollectorSettings,
) -> None:
    private = settings.model_copy(update={"metrics_host": "127.0.0.1", "metrics_port": free_port()})
    with metrics_listener(private) as where:
        assert where is not None
        base = f"http://{where[0]}:{where[1]}"
        answer = httpx.get(base + "/metrics")
        assert answer.status_code == 200 and "blockwatch_measurements_total" in answer.text
        assert httpx.get(base + "/").status_code == 404  # /metrics and nothing else
    with TestClient(create_app(private)) as client:  # the main listener still asks a token
        assert client.get("/metrics").status_code == 401


def test_a_metrics_host_needs_a_metrics_port(settings: CollectorSettings) -> None:
    with pytest.raises(ValidationError, match="--metrics-host needs --metrics-port"):
        CollectorSettings(
            **settings.model_dump(exclude={"metrics_host", "metrics_port"}), metrics_host="::1"
        )
