"""A probe for collector tests: a real Ed25519 key that signs real envelopes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from probe_agent.protocol.envelope import (
    Envelope,
    Purpose,
    b64encode,
    fingerprint,
    public_bytes,
    sign,
)

ADMIN_TOKEN = "admin-" + "x" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def measurement(domain: str = "alive.bar", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "measurement_id": str(uuid.uuid4()),
        "domain": domain,
        "port": 443,
        "scheme": "https",
        "started_at": rfc3339(datetime.now(UTC)),
        "software": {"name": "blockwatch-probe", "version": "0.1.0"},
        "decoy_sni": "example.com",
        "runtime": 0.7,
        "dns": [
            {
                "resolver": "10.0.0.53:53",
                "transport": "udp",
                "query_type": "A",
                "answers": ["45.76.1.2"],
                "failure": None,
            }
        ],
        "tcp": [{"ip": "45.76.1.2", "port": 443, "failure": None, "t0": 0.5, "t": 0.55}],
        "tls": [],
        "http": [],
        "hints": [],
    }
    body.update(extra)
    return body


@dataclass
class TestProbe:
    __test__ = False

    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    declared: dict[str, Any] | None = None
    region: str | None = None  # run --region

    @property
    def key_id(self) -> str:
        return fingerprint(public_bytes(self.key))

    def signed(
        self, purpose: Purpose, doc: dict[str, Any], *, at: datetime | None = None
    ) -> dict[str, str]:
        document = {"signed_at": rfc3339(at or datetime.now(UTC)), **doc}
        return sign(self.key, purpose, document).to_json()

    def enroll(
        self, token: str | None = None, role: str = "probe", *, at: datetime | None = None
    ) -> dict[str, str]:
        doc: dict[str, Any] = {
            "public_key": b64encode(public_bytes(self.key)),
            "role": role,
            "software": {"name": "blockwatch-probe", "version": "0.1.0"},
        }
        if token is not None:
            doc["token"] = token
        if self.declared:
            doc["declared"] = self.declared
        return self.signed(Purpose.ENROLL, doc | self._region(), at=at)

    def _region(self) -> dict[str, Any]:
        return {"region": self.region} if self.region is not None else {}

    def checkin(self, via_proxy: bool = False, **spool: int) -> dict[str, str]:
        return self.signed(
            Purpose.CHECKIN,
            {
                "declared": self.declared,
                "via_proxy": via_proxy,
                "software": {"name": "blockwatch-probe", "version": "0.1.0"},
                "spool": {"depth": spool.get("depth", 0), "evicted": spool.get("evicted", 0)},
            }
            | self._region(),
        )

    def measure(
        self,
        m: dict[str, Any] | None = None,
        *,
        at: datetime | None = None,
        via_proxy: bool = False,
    ) -> dict[str, str]:
        return self.signed(
            Purpose.MEASUREMENT,
            {
                "measurement": m or measurement(),
                "declared": self.declared,
                "via_proxy": via_proxy,
            }
            | self._region(),
            at=at,
        )

    def rotate_to(self, new: TestProbe) -> dict[str, str]:
        proof = new.key.sign(Purpose.ROTATE.prefix + self.key_id.encode())
        return self.signed(
            Purpose.ROTATE,
            {
                "new_public_key": b64encode(public_bytes(new.key)),
                "new_key_signature": b64encode(proof),
            },
        )


def tamper(envelope: dict[str, str]) -> dict[str, str]:
    """The same envelope with one payload byte changed (the signature no longer fits)."""
    raw = Envelope.from_json(envelope)
    payload = bytearray(raw.payload)
    payload[-2] ^= 0x01
    return Envelope(raw.key_id, bytes(payload), raw.signature).to_json()


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


# -- API calls that many collector tests make --------------------------------------


def token(client: TestClient, **body: object) -> str:
    answer = client.post("/api/v1/probes/tokens", json=body, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    value: str = answer.json()["token"]
    assert value.startswith("bwt_")
    return value


def enroll(client: TestClient, probe: TestProbe, **kw: object) -> dict[str, object]:
    answer = client.post("/api/v1/probes/enroll", json=probe.enroll(**kw))  # type: ignore[arg-type]
    assert answer.status_code == 201, answer.text
    result: dict[str, object] = answer.json()
    return result


def error_code(answer: object) -> str:
    return answer.json()["error"]["code"]  # type: ignore[attr-defined,no-any-return]
