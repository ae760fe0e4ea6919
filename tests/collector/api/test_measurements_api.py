"""Signed ingestion: per-item answers, idempotence, every rejection, limits, gzip."""

from __future__ import annotations

import gzip
import json
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select

from collector.core.models import MeasurementRow
from collector.core.settings import CollectorSettings
from probe_agent.protocol.envelope import Envelope, Purpose, public_bytes, verify
from tests.collector.helpers import ADMIN, TestProbe, enroll, error_code, measurement, tamper, token


@pytest.fixture
def probe(client: TestClient) -> TestProbe:
    # Measurements must be of targets: the one these tests measure is one.
    answer = client.post("/api/v1/targets", json={"domains": ["alive.bar"]}, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    p = TestProbe()
    enroll(client, p, token=token(client))
    return p


def submit(client: TestClient, *envelopes: object, **kw: object) -> dict[str, object]:
    answer = client.post("/api/v1/measurements", json={"measurements": list(envelopes)}, **kw)  # type: ignore[arg-type]
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def stored(settings: CollectorSettings) -> list[MeasurementRow]:
    engine = create_engine(settings.database_url.replace("sqlite:///", "sqlite:///"))
    with engine.connect() as conn:
        rows = list(conn.execute(select(MeasurementRow)))
    engine.dispose()
    return rows  # type: ignore[return-value]


def statuses(body: dict[str, object]) -> list[str]:
    return [r["status"] for r in body["results"]]  # type: ignore[attr-defined,index]


def test_accept_and_store_verifiable_evidence(
    client: TestClient, probe: TestProbe, settings: CollectorSettings
) -> None:
    envelope = probe.measure(measurement("Alive.Bar", hints=["dns_forged_ip"]))
    body = submit(client, envelope)
    assert body["accepted"] == 1
    assert statuses(body) == ["accepted"]
    [row] = stored(settings)
    assert row.domain == "alive.bar"
    assert (row.cc, row.asn, row.network_source) == ("CN", 4134, "geolocated")
    assert json.loads(row.hints) == ["dns_forged_ip"]
    # The stored bytes are the signed bytes: anyone can verify them again.
    kept = Envelope(row.key_id, zlib.decompress(row.payload), row.signature)
    verify(
        kept,
        Purpose.MEASUREMENT,
        public_bytes(probe.key),
    )
    assert kept.payload == Envelope.from_json(envelope).payload


def test_resubmission_is_duplicate_and_stores_nothing(
    client: TestClient, probe: TestProbe, settings: CollectorSettings
) -> None:
    envelope = probe.measure()
    assert statuses(submit(client, envelope)) == ["accepted"]
    again = submit(client, envelope, envelope)
    assert statuses(again) == ["duplicate", "duplicate"]
    assert again["duplicates"] == 2
    assert len(stored(settings)) == 1
    # The same measurement id re-signed later (a replay with a fresh signature) too.
    m = json.loads(Envelope.from_json(envelope).payload)["measurement"]
    assert statuses(submit(client, probe.measure(m))) == ["duplicate"]


def test_duplicate_within_one_batch(client: TestClient, probe: TestProbe) -> None:
    envelope = probe.measure()
    assert statuses(submit(client, envelope, envelope)) == ["accepted", "duplicate"]


def test_a_bad_item_never_stops_the_others(
    client: TestClient, probe: TestProbe, settings: CollectorSettings
) -> None:
    stranger = TestProbe()
    items = [
        probe.measure(),
        tamper(probe.measure()),
        stranger.measure(),
        {"key_id": probe.key_id, "payload": "%%%", "signature": "AAAA"},
        "not an envelope",
        probe.measure(measurement("bad_name!.example")),
        probe.measure(at=datetime.now(UTC) + timedelta(hours=1)),
        probe.measure(at=datetime.now(UTC) - timedelta(days=30)),
        probe.signed(Purpose.MEASUREMENT, {"measurement": {"measurement_id": "x"}}),
        probe.signed(Purpose.CHECKIN, {"measurement": measurement()}),
        probe.measure(),
    ]
    body = submit(client, *items)
    results = body["results"]  # type: ignore[index]
    codes = [(r.get("error") or {}).get("code") for r in results]  # type: ignore[union-attr]
    assert codes == [
        None,
        "err_bad_signature",
        "err_unknown_key",
        "err_malformed_envelope",
        "err_malformed_envelope",
        "err_invalid_domain",
        "err_timestamp_out_of_window",
        "err_timestamp_out_of_window",
        "err_malformed_payload",
        "err_bad_signature",
        None,
    ]
    assert (body["accepted"], body["rejected"]) == (2, 9)
    assert len(stored(settings)) == 2


def test_revoked_and_pending_probes_are_refused(client: TestClient, probe: TestProbe) -> None:
    pending = TestProbe()
    enroll(client, pending)
    probes = client.get("/api/v1/probes", headers=ADMIN).json()["data"]
    probe_id = next(p["probe_id"] for p in probes if p["key_id"] == probe.key_id)
    client.post(f"/api/v1/probes/{probe_id}/revoke", headers=ADMIN)
    body = submit(client, probe.measure(), pending.measure())
    assert [r["error"]["code"] for r in body["results"]] == [  # type: ignore[index]
        "err_revoked_key",
        "err_probe_pending",
    ]


def test_gzip_body(client: TestClient, probe: TestProbe) -> None:
    raw = json.dumps({"measurements": [probe.measure(), probe.measure()]}).encode()
    answer = client.post(
        "/api/v1/measurements",
        content=gzip.compress(raw),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert answer.status_code == 200
    assert answer.json()["accepted"] == 2


def test_bad_encodings(client: TestClient) -> None:
    corrupt = client.post(
        "/api/v1/measurements", content=b"\x1f\x8bnot gzip", headers={"Content-Encoding": "gzip"}
    )
    assert (corrupt.status_code, error_code(corrupt)) == (400, "err_bad_encoding")
    brotli = client.post("/api/v1/measurements", content=b"{}", headers={"Content-Encoding": "br"})
    assert (brotli.status_code, error_code(brotli)) == (400, "err_bad_encoding")


def test_limits(client: TestClient, probe: TestProbe, settings: CollectorSettings) -> None:
    settings.max_batch_items = 3
    over = client.post(
        "/api/v1/measurements", json={"measurements": [probe.measure() for _ in range(4)]}
    )
    assert (over.status_code, error_code(over)) == (413, "err_batch_too_large")
    big = b'{"measurements": ["' + b"x" * (settings.max_body_bytes + 10) + b'"]}'
    too_big = client.post("/api/v1/measurements", content=big)
    assert (too_big.status_code, error_code(too_big)) == (413, "err_body_too_large")
    bomb = gzip.compress(b'{"measurements": [' + b" " * (settings.max_body_bytes + 10) + b"]}")
    inflated = client.post(
        "/api/v1/measurements", content=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert (inflated.status_code, error_code(inflated)) == (413, "err_body_too_large")
    assert stored(settings) == []


def test_malformed_bodies(client: TestClient) -> None:
    not_json = client.post("/api/v1/measurements", content=b"{nope")
    assert (not_json.status_code, error_code(not_json)) == (400, "err_malformed_json")
    wrong = client.post("/api/v1/measurements", json={"measurement": []})
    assert (wrong.status_code, error_code(wrong)) == (422, "err_validation")
    assert client.post("/api/v1/measurements", json=[1, 2]).status_code == 422


def test_huge_strings_are_rejected_not_stored(
    client: TestClient, probe: TestProbe, settings: CollectorSettings
) -> None:
    body = submit(
        client,
        probe.measure(measurement(hints=["x" * 10_000])),
        probe.measure(measurement(domain="a" * 5000 + ".example")),
    )
    assert statuses(body) == ["rejected", "rejected"]
    assert stored(settings) == []


def test_rejections_are_counted(client: TestClient, probe: TestProbe) -> None:
    submit(client, tamper(probe.measure()))
    metrics = client.get("/metrics", headers=ADMIN).text
    assert 'blockwatch_rejections_total{reason="bad_signature"}' in metrics
    assert 'blockwatch_measurements_total{status="rejected"}' in metrics
