"""Enrollment, check-in, rotation, revocation, approval: on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from tests.collector.conftest import FakeClock, FakeGeolocator
from tests.collector.helpers import ADMIN, TestProbe, enroll, error_code, tamper, token

NO_REGION = {"region": None, "region_source": None}


def test_enroll_with_token_then_checkin(client: TestClient) -> None:
    probe = TestProbe()
    enrolled = enroll(client, probe, token=token(client))
    assert enrolled["status"] == "active"
    assert enrolled["key_id"] == probe.key_id
    client.post("/api/v1/targets", json={"domains": ["alive.bar", "o3o.ca"]}, headers=ADMIN)
    answer = client.post("/api/v1/probes/checkin", json=probe.checkin(depth=3, evicted=2))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [t["domain"] for t in body["targets"]] == ["alive.bar", "o3o.ca"]
    assert body["network"] == {"cc": "CN", "asn": 4134, "source": "geolocated", **NO_REGION}
    assert body["interval_seconds"] == 300
    assert body["retest_spacing_seconds"] == 180
    probes = client.get("/api/v1/probes", headers=ADMIN).json()["data"]
    assert probes[0]["spool_depth"] == 3
    assert probes[0]["evicted_total"] == 2


def test_token_is_single_use_by_default(client: TestClient) -> None:
    value = token(client)
    enroll(client, TestProbe(), token=value)
    again = client.post("/api/v1/probes/enroll", json=TestProbe().enroll(token=value))
    assert again.status_code == 401
    assert error_code(again) == "err_invalid_token"


def test_n_use_token(client: TestClient) -> None:
    value = token(client, uses=2)
    enroll(client, TestProbe(), token=value)
    enroll(client, TestProbe(), token=value)
    third = client.post("/api/v1/probes/enroll", json=TestProbe().enroll(token=value))
    assert error_code(third) == "err_invalid_token"


def test_expired_token(client: TestClient, clock: FakeClock) -> None:
    value = token(client, expires_in=60)
    clock.offset_seconds = 120
    # The probe's clock agrees with the collector's: only the token is stale.
    late = datetime.now(UTC) + timedelta(seconds=120)
    answer = client.post("/api/v1/probes/enroll", json=TestProbe().enroll(token=value, at=late))
    assert answer.status_code == 401
    assert error_code(answer) == "err_invalid_token"


def test_enroll_is_idempotent(client: TestClient) -> None:
    probe = TestProbe()
    value = token(client)
    first = enroll(client, probe, token=value)
    again = client.post("/api/v1/probes/enroll", json=probe.enroll(token=value))
    assert again.status_code == 200
    assert again.json()["probe_id"] == first["probe_id"]


def test_without_token_waits_for_approval(client: TestClient) -> None:
    probe = TestProbe()
    enrolled = enroll(client, probe)
    assert enrolled["status"] == "pending"
    refused = client.post("/api/v1/probes/checkin", json=probe.checkin())
    assert refused.status_code == 403
    assert error_code(refused) == "err_probe_pending"
    approved = client.post(f"/api/v1/probes/{enrolled['probe_id']}/approve", headers=ADMIN)
    assert approved.json()["status"] == "active"
    assert client.post("/api/v1/probes/checkin", json=probe.checkin()).status_code == 200


def test_open_enrollment(client: TestClient) -> None:
    client.app.state.settings.open_enrollment = True  # type: ignore[attr-defined]
    assert enroll(client, TestProbe())["status"] == "active"


def test_control_role_needs_a_control_token(client: TestClient) -> None:
    plain = client.post("/api/v1/probes/enroll", json=TestProbe().enroll(role="control"))
    assert plain.status_code == 403
    assert error_code(plain) == "err_forbidden"
    wrong = client.post(
        "/api/v1/probes/enroll", json=TestProbe().enroll(token=token(client), role="control")
    )
    assert error_code(wrong) == "err_forbidden"
    right = enroll(client, TestProbe(), token=token(client, role="control"), role="control")
    assert right["role"] == "control"


def test_enroll_signature_must_verify(client: TestClient) -> None:
    answer = client.post("/api/v1/probes/enroll", json=tamper(TestProbe().enroll()))
    assert answer.status_code in (401, 422)
    listing = client.get("/api/v1/probes", headers=ADMIN).json()
    assert listing["count"] == 0


def test_unknown_key_and_bad_signature_on_checkin(client: TestClient) -> None:
    stranger = client.post("/api/v1/probes/checkin", json=TestProbe().checkin())
    assert stranger.status_code == 401
    assert error_code(stranger) == "err_unknown_key"
    probe = TestProbe()
    enroll(client, probe, token=token(client))
    forged = client.post("/api/v1/probes/checkin", json=tamper(probe.checkin()))
    assert forged.status_code == 401
    assert error_code(forged) == "err_bad_signature"


def test_signature_is_domain_separated(client: TestClient) -> None:
    """A measurement envelope is not a valid check-in, even from the right key."""
    probe = TestProbe()
    enroll(client, probe, token=token(client))
    envelope = probe.measure()
    answer = client.post("/api/v1/probes/checkin", json=envelope)
    assert error_code(answer) == "err_bad_signature"


def test_revocation(client: TestClient) -> None:
    probe = TestProbe()
    enrolled = enroll(client, probe, token=token(client))
    client.post(f"/api/v1/probes/{enrolled['probe_id']}/revoke", headers=ADMIN)
    answer = client.post("/api/v1/probes/checkin", json=probe.checkin())
    assert answer.status_code == 403
    assert error_code(answer) == "err_revoked_key"


def test_key_rotation(client: TestClient) -> None:
    old, new = TestProbe(), TestProbe()
    client.post("/api/v1/targets", json={"domains": ["alive.bar"]}, headers=ADMIN)
    enrolled = enroll(client, old, token=token(client))
    before = old.measure()  # signed before the rotation: still accepted afterwards
    answer = client.post("/api/v1/probes/rotate", json=old.rotate_to(new))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "probe_id": enrolled["probe_id"],
        "key_id": new.key_id,
        "status": "active",
    }
    assert client.post("/api/v1/probes/checkin", json=new.checkin()).status_code == 200
    stale = client.post("/api/v1/probes/checkin", json=old.checkin())
    assert error_code(stale) == "err_revoked_key"
    batch = client.post("/api/v1/measurements", json={"measurements": [before, old.measure()]})
    assert [r["status"] for r in batch.json()["results"]] == ["accepted", "rejected"]


def test_rotation_needs_the_new_keys_agreement(client: TestClient) -> None:
    old, new, other = TestProbe(), TestProbe(), TestProbe()
    enroll(client, old, token=token(client))
    envelope = old.rotate_to(new)
    # Swap in a key that never signed the proof.
    import base64
    import json

    from probe_agent.protocol.envelope import Purpose, b64encode, public_bytes

    doc = json.loads(base64.b64decode(envelope["payload"]))
    doc["new_public_key"] = b64encode(public_bytes(other.key))
    doc.pop("signed_at")
    forged = old.signed(Purpose.ROTATE, doc)
    answer = client.post("/api/v1/probes/rotate", json=forged)
    assert error_code(answer) == "err_bad_signature"


def test_declared_network_only_when_geolocation_is_impossible(
    client: TestClient, geolocator: FakeGeolocator
) -> None:
    probe = TestProbe(declared={"cc": "IR", "asn": 58224})
    enroll(client, probe, token=token(client))
    located = client.post("/api/v1/probes/checkin", json=probe.checkin()).json()
    assert located["network"] == {"cc": "CN", "asn": 4134, "source": "geolocated", **NO_REGION}
    proxied = client.post("/api/v1/probes/checkin", json=probe.checkin(via_proxy=True)).json()
    assert proxied["network"] == {"cc": "IR", "asn": 58224, "source": "declared", **NO_REGION}
    geolocator.table.clear()  # an address the database does not know
    unknown = client.post("/api/v1/probes/checkin", json=probe.checkin()).json()
    assert unknown["network"]["source"] == "declared"


def test_admin_endpoints_need_the_token(client: TestClient) -> None:
    for method, path in [
        ("post", "/api/v1/probes/tokens"),
        ("get", "/api/v1/probes"),
        ("post", "/api/v1/targets"),
        ("post", "/api/v1/probes/p_x/revoke"),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            answer = client.request(
                method.upper(), path, json={"domains": ["a.example"]}, headers=headers
            )
            assert answer.status_code == 401, (path, headers)
            assert error_code(answer) == "err_unauthorized"


def test_rotation_to_an_enrolled_key_conflicts(client: TestClient) -> None:
    first, second = TestProbe(), TestProbe()
    enroll(client, first, token=token(client))
    enroll(client, second, token=token(client))
    answer = client.post("/api/v1/probes/rotate", json=first.rotate_to(second))
    assert (answer.status_code, error_code(answer)) == (409, "err_conflict")


def test_rate_limit_per_key(client: TestClient) -> None:
    from collector.api.ratelimit import RateLimiter

    probe = TestProbe()
    enroll(client, probe, token=token(client))
    client.app.state.rate_limiter = RateLimiter(per_minute=2)  # type: ignore[attr-defined]
    answers = [client.post("/api/v1/probes/checkin", json=probe.checkin()) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert error_code(answers[2]) == "err_rate_limited"
    assert int(answers[2].headers["Retry-After"]) >= 1
    # Another probe has its own bucket.
    other = TestProbe()
    enroll(client, other, token=token(client))
    assert client.post("/api/v1/probes/checkin", json=other.checkin()).status_code == 200


def test_a_bug_is_a_500_with_a_code_and_the_service_keeps_serving(
    settings: object, geolocator: FakeGeolocator
) -> None:
    from fastapi.testclient import TestClient as Client

    from collector.api.app import create_app

    app = create_app(settings, geolocator=geolocator)  # type: ignore[arg-type]

    @app.get("/api/v1/boom")
    def boom() -> None:
        raise RuntimeError("a bug of ours")

    with Client(app, raise_server_exceptions=False) as client:
        answer = client.get("/api/v1/boom")
        assert (answer.status_code, error_code(answer)) == (500, "err_internal")
        assert "a bug of ours" not in answer.text
        assert client.get("/api/v1/targets").status_code == 200
