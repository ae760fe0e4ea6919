"""Evidence bundles from a real app: real probes' signed measurements, a real detection
pass, the bundle verified offline; who may fetch what, and when.

The world: four volunteers in CN AS4134 (located from the request's address), three
of them running with --public-evidence, and one vouched volunteer in CN AS4837
(declared, through a proxy) with --public-evidence: with K = 3, the public sees the
three AS4134 measurements of volunteers who opted in, and two are withheld.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from collector.core.db import make_engine, make_session_factory
from collector.core.keys import CollectorKey
from collector.core.settings import CollectorSettings
from collector.detection.passes import Detector
from probe_agent.protocol.envelope import Purpose, fingerprint
from probe_agent.protocol.evidence import verify_bundle
from tests.collector.analysis import builders as b
from tests.collector.conftest import FakeClock
from tests.collector.helpers import ADMIN, TestProbe, enroll, error_code, rfc3339, token

DOMAIN = b.DOMAIN
ROOT = Path(__file__).resolve().parents[3]
PROBE_CLI = str(Path(sys.executable).parent / "blockwatch-probe")


class World:
    """Probes and a control submitting through the API, one detection pass by hand."""

    def __init__(self, client: TestClient, settings: CollectorSettings, clock: FakeClock) -> None:
        self.client, self.clock = client, clock
        self.located = [TestProbe() for _ in range(4)]  # CN AS4134, geolocated
        self.proxied = TestProbe(declared={"cc": "CN", "asn": 4837})  # vouched by its token
        for n, probe in enumerate(self.located):
            enroll(client, probe, token=token(client))
            self.check_in(probe, public_evidence=n < 3)
        enroll(client, self.proxied, token=token(client, cc="CN", asn=4837, region="CN-GD"))
        self.check_in(self.proxied, public_evidence=True)
        self.control = TestProbe()
        enroll(client, self.control, token=token(client, role="control"), role="control")
        answer = client.post("/api/v1/targets", json={"domains": [DOMAIN]}, headers=ADMIN)
        assert answer.status_code == 201, answer.text
        self.engine = make_engine(settings.database_url)
        self.detector = Detector(settings, clock)

    @property
    def probes(self) -> list[TestProbe]:
        return [*self.located, self.proxied]

    def check_in(self, probe: TestProbe, *, public_evidence: bool) -> None:
        document = {
            "declared": probe.declared,
            "via_proxy": probe.declared is not None,
            "public_evidence": public_evidence,
            "software": {"name": "blockwatch-probe", "version": "0.1.0"},
            "spool": {"depth": 0, "evicted": 0},
        }
        envelope = probe.signed(Purpose.CHECKIN, document)
        answer = self.client.post("/api/v1/probes/checkin", json=envelope)
        assert answer.status_code == 200, answer.text

    def submit(self, probe: TestProbe, m: dict[str, Any], at: datetime) -> None:
        body = dict(m, measurement_id=str(uuid.uuid4()), started_at=rfc3339(at))
        envelope = probe.measure(body, at=at, via_proxy=probe.declared is not None)
        answer = self.client.post("/api/v1/measurements", json={"measurements": [envelope]})
        assert answer.json()["accepted"] == 1, answer.text

    def open_event(self) -> dict[str, Any]:
        blocked_at = self.clock.now() - timedelta(seconds=60)
        for probe in self.probes:
            self.submit(probe, b.sni_blocked(), blocked_at)
        self.submit(self.control, b.control(), blocked_at + timedelta(seconds=3))
        sessions = make_session_factory(self.engine)
        self.detector.run_pass(sessions)
        self.clock.offset_seconds += 60
        self.detector.run_pass(sessions)
        [event] = self.client.get("/api/v1/events", headers=ADMIN).json()["data"]
        assert len(event["evidence"]) == 5, event
        opened: dict[str, Any] = event
        return opened

    def evidence(self, event_id: int, **headers: str) -> Any:
        return self.client.get(f"/api/v1/events/{event_id}/evidence", headers=headers)


@pytest.fixture
def world(client: TestClient, settings: CollectorSettings, clock: FakeClock) -> Any:
    w = World(client, settings, clock)
    yield w
    w.engine.dispose()


@pytest.fixture
def event(world: World) -> dict[str, Any]:
    return world.open_event()


def statement_of(bundle: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(base64.b64decode(bundle["statement"]))
    return parsed


def collector_key_id(client: TestClient) -> str:
    answer = client.get("/.well-known/blockwatch.json")
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert fingerprint(base64.b64decode(document["public_key"])) == document["collector_key_id"]
    key_id: str = document["collector_key_id"]
    return key_id


def test_the_admins_bundle_holds_every_measurement_and_verifies(
    world: World, event: dict[str, Any]
) -> None:
    assert event["evidence_bundle_url"] == f"/api/v1/events/{event['id']}/evidence"
    answer = world.client.get(event["evidence_bundle_url"], headers=ADMIN)
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    assert bundle["format"] == "blockwatch-evidence/1" and bundle["withheld"] == 0
    assert bundle["collector_key_id"] == collector_key_id(world.client)
    probes = [m for m in bundle["measurements"] if m["role"] == "probe"]
    controls = [m for m in bundle["measurements"] if m["role"] == "control"]
    assert sorted(m["id"] for m in probes) == sorted(event["evidence"])
    assert len(controls) == 1 and controls[0]["key_id"] == world.control.key_id
    assert {(m["cc"], m["asn"], m["network_source"]) for m in probes} == {
        ("CN", 4134, "geolocated"),
        ("CN", 4837, "declared"),
    }
    statement = statement_of(bundle)
    assert statement["audience"] == "full"
    assert statement["event"]["id"] == event["id"] and statement["event"]["domain"] == DOMAIN
    assert statement["event"]["regions"] == ["CN-GD"]
    assert statement["event"]["started_at"] == event["started_at"]  # exact for the operator

    result = verify_bundle(bundle, bundle["collector_key_id"])
    assert result.ok, [c.line() for c in result.checks]
    assert result.anchored and result.valid_measurements == 6


def test_tampering_with_a_payload_an_attribution_or_the_key_fails(
    world: World, event: dict[str, Any]
) -> None:
    bundle = world.evidence(event["id"], **ADMIN).json()
    key_id = bundle["collector_key_id"]

    payload = json.loads(json.dumps(bundle))
    first = payload["measurements"][0]
    raw = bytearray(base64.b64decode(first["payload"]))
    raw[raw.index(b"alive.bar")] ^= 0x20  # "Alive.bar": same length, another document
    first["payload"] = base64.b64encode(bytes(raw)).decode()
    failed = [c for c in verify_bundle(payload, key_id).checks if not c.ok]
    assert [c.subject for c in failed] == [f"measurement {first['id']}"]
    assert "signature" in failed[0].detail

    # Moving a measurement to another network in the statement breaks its signature...
    moved = json.loads(json.dumps(bundle))
    text = base64.b64decode(moved["statement"]).replace(b'"asn":4837', b'"asn":4134')
    moved["statement"] = base64.b64encode(text).decode()
    failed = [c for c in verify_bundle(moved, key_id).checks if not c.ok]
    assert failed[0].subject == "statement" and "signature" in failed[0].detail
    # ... and in the bundle's copy, which the statement no longer agrees with.
    copied = json.loads(json.dumps(bundle))
    copied["measurements"][0]["asn"] = 9808
    failed = [c for c in verify_bundle(copied, key_id).checks if not c.ok]
    assert "asn" in failed[0].detail

    # Another collector's key, even re-signing everything consistently, is not anchored.
    forged = _resigned(bundle)
    assert verify_bundle(forged, None).ok  # consistent, but anyone could have made it
    failed = [c for c in verify_bundle(forged, key_id).checks if not c.ok]
    assert [c.subject.split()[:2] for c in failed] == [["collector", "key"]]
    swapped = dict(bundle, collector_public_key=forged["collector_public_key"])
    assert not verify_bundle(swapped, key_id).ok


def _resigned(bundle: dict[str, Any]) -> dict[str, Any]:
    """The bundle as another collector would sign it (its own key, a consistent statement)."""
    other = CollectorKey.generate()
    statement = statement_of(bundle)
    statement["collector_key_id"] = other.key_id
    raw = json.dumps(statement).encode()
    signature = other.sign(b"blockwatch/v1/evidence\n", raw)
    return dict(
        bundle,
        collector_key_id=other.key_id,
        collector_public_key=base64.b64encode(other.public_key).decode(),
        statement=base64.b64encode(raw).decode(),
        statement_signature=base64.b64encode(signature).decode(),
    )


def test_anonymous_callers_wait_for_the_delay_then_see_k_anonymous_evidence(
    world: World, event: dict[str, Any], settings: CollectorSettings
) -> None:
    early = world.evidence(event["id"])
    assert early.status_code == 403 and error_code(early) == "err_evidence_not_public"
    assert "becomes public at 20" in early.json()["error"]["message"]
    wrong = world.evidence(event["id"], Authorization="Bearer bwm_not-a-subscription")
    assert wrong.status_code == 403

    world.clock.offset_seconds += settings.evidence_delay + settings.measure_interval
    answer = world.evidence(event["id"])
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    opted_in = {p.key_id for p in world.located[:3]}
    probes = [m for m in bundle["measurements"] if m["role"] == "probe"]
    assert {m["key_id"] for m in probes} == opted_in
    assert bundle["withheld"] == 2
    statement = statement_of(bundle)
    assert statement["audience"] == "public"
    withheld = [e for e in statement["measurements"] if not e["published"]]
    assert len(withheld) == 2 and all("key_id" not in e for e in withheld)
    # The lone AS4837 volunteer's network is not named; AS4134 (four volunteers) is.
    folded = sorted((e["asn"] is None, e["region"]) for e in withheld)
    assert folded == [(False, None), (True, None)]
    assert statement["event"]["asns"] == [4134] and statement["event"]["regions"] == []
    started = datetime.fromisoformat(statement["event"]["started_at"].replace("Z", "+00:00"))
    assert started.timestamp() % settings.measure_interval == 0  # rounded, as public times

    result = verify_bundle(bundle, collector_key_id(world.client))
    assert result.ok, [c.line() for c in result.checks]
    assert result.withheld == 2 and result.valid_measurements == 4  # three probes, the control


def test_verified_subscribers_get_the_public_bundle_at_once(
    world: World, event: dict[str, Any]
) -> None:
    hook = {"domain": DOMAIN, "channel": "webhook", "url": "https://hooks.example/x"}
    verified = world.client.post("/api/v1/subscriptions", json=hook, headers=ADMIN).json()
    pending = world.client.post("/api/v1/subscriptions", json=hook).json()
    assert pending["state"] == "pending"
    refused = world.evidence(event["id"], Authorization=f"Bearer {pending['token']}")
    assert refused.status_code == 403
    answer = world.evidence(event["id"], Authorization=f"Bearer {verified['token']}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["audience"] == "public" and answer.json()["withheld"] == 2


def test_an_unknown_event_is_404(world: World) -> None:
    answer = world.evidence(999, **ADMIN)
    assert answer.status_code == 404 and error_code(answer) == "err_not_found"


def test_probe_cli_verify_exit_codes_from_a_file_and_stdin(
    world: World, event: dict[str, Any], tmp_path: Path
) -> None:
    bundle = world.evidence(event["id"], **ADMIN).json()
    good = tmp_path / "bundle.json"
    good.write_text(json.dumps(bundle))
    saved = tmp_path / "blockwatch.json"
    saved.write_text(world.client.get("/.well-known/blockwatch.json").text)

    ran = _verify([str(good), "--collector-key", str(saved)])
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = ran.stdout.splitlines()
    assert sum(line.startswith("ok    measurement ") for line in lines) == 6
    assert lines[-1].startswith("valid: 6 of 6 measurements valid") and "anchored" in lines[-1]

    ran = _verify(["-", "--collector-key", bundle["collector_key_id"]], stdin=good.read_text())
    assert ran.returncode == 0, ran.stdout + ran.stderr

    unanchored = _verify([str(good)])
    assert unanchored.returncode == 0 and "NOT anchored" in unanchored.stdout.splitlines()[-1]

    bad = json.loads(json.dumps(bundle))
    bad["measurements"][1]["signature"] = bad["measurements"][0]["signature"]
    ran = _verify(["-", "--collector-key", str(saved)], stdin=json.dumps(bad))
    assert ran.returncode == 1
    assert sum(line.startswith("FAIL  measurement ") for line in ran.stdout.splitlines()) == 1
    assert ran.stdout.splitlines()[-1].startswith("INVALID: 5 of 6")

    other = "0" * 64
    assert _verify([str(good), "--collector-key", other]).returncode == 1
    assert _verify(["-"], stdin="not json").returncode == 1
    assert _verify([str(tmp_path / "missing.json")]).returncode == 1


def _verify(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROBE_CLI, "verify", *args],
        input=stdin or "",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_documented_verifier_checks_a_real_bundle(
    world: World, event: dict[str, Any], tmp_path: Path
) -> None:
    doc = (ROOT / "docs" / "evidence.md").read_text()
    [snippet] = re.findall(r"<!-- verifier -->\s*```python\n(.*?)```", doc, re.S)
    assert len(snippet.strip().splitlines()) <= 25
    script = tmp_path / "verify_bundle.py"
    script.write_text(snippet)
    bundle = world.evidence(event["id"], **ADMIN).json()
    key_id = bundle["collector_key_id"]

    ran = _run_snippet(script, tmp_path, bundle, key_id)
    assert ran.returncode == 0, ran.stderr
    assert len(ran.stdout.splitlines()) == len(bundle["measurements"])
    assert "probe CN 4837 declared" in ran.stdout  # the statement's attribution

    swapped = json.loads(json.dumps(bundle))
    swapped["measurements"][0]["payload"] = swapped["measurements"][1]["payload"]
    ran = _run_snippet(script, tmp_path, swapped, key_id)
    assert ran.returncode == 1 and "InvalidSignature" in ran.stderr
    ran = _run_snippet(script, tmp_path, _resigned(bundle), key_id)
    assert ran.returncode == 1 and "not the collector's key" in ran.stderr


def _run_snippet(
    script: Path, tmp_path: Path, bundle: dict[str, Any], key_id: str
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "snippet-bundle.json"
    path.write_text(json.dumps(bundle))
    return subprocess.run(
        [sys.executable, str(script), str(path), key_id],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
