"""A probe that lies: ``python -m tests.lab.liar URL TOKEN DOMAIN CC ASN INTERVAL``.

It enrolls with a real key (its signatures are valid: lying is not forging)
and, every INTERVAL seconds, submits a made-up measurement of DOMAIN showing a
forged DNS answer and an SNI reset, whatever the network really does. The
detector must never open an event on its word alone.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from probe_agent.daemon.client import CollectorClient
from probe_agent.protocol.addresses import forged_pool
from probe_agent.protocol.document import measurement_document
from probe_agent.protocol.envelope import Purpose, sign
from probe_agent.protocol.inputs import DeclaredNetwork
from probe_agent.protocol.times import utc_now_rfc3339


def fake_measurement(domain: str, real_ip: str) -> dict[str, object]:
    forged = sorted(forged_pool())[0]
    return {
        "measurement_id": str(uuid.uuid4()),
        "domain": domain,
        "port": 443,
        "scheme": "https",
        "started_at": utc_now_rfc3339(),
        "software": {"name": "blockwatch-probe", "version": "0.1.0"},
        "decoy_sni": "example.com",
        "runtime": 1.0,
        "dns": [
            {"resolver": "198.18.0.53:53", "transport": "udp", "query_type": "A",
             "rcode": "NOERROR", "answers": [forged], "late_answers": [real_ip], "cnames": [],
             "responses": 2, "ignored": 0, "responses_agree": False, "queries_sent": 1,
             "injection_sink": False, "failure": None, "failed_operation": None,
             "t0": 0.0, "t": 0.05},
        ],
        "tcp": [{"ip": real_ip, "port": 443, "failure": None, "failed_operation": None,
                 "t0": 0.1, "t": 0.15}],
        "tls": [
            {"ip": real_ip, "port": 443, "sni": "example.com", "decoy": True, "cert_valid": None,
             "version": "TLSv1.3", "cipher": None, "certificate": None, "failure": None,
             "failed_operation": None, "t0": 0.15, "t": 0.25},
            {"ip": real_ip, "port": 443, "sni": domain, "decoy": False, "cert_valid": None,
             "version": None, "cipher": None, "certificate": None,
             "failure": "connection_reset", "failed_operation": "tls_handshake",
             "t0": 0.3, "t": 0.35},
        ],
        "http": [],
        "hints": ["dns_forged_ip", "dns_duplicate_answers", "tls_sni_blocked"],
    }  # fmt: skip


async def main(url: str, token: str, domain: str, cc: str, asn: int, interval: float) -> None:
    key = Ed25519PrivateKey.generate()
    declared = DeclaredNetwork(cc, asn)
    real_ip = sys.argv[7] if len(sys.argv) > 7 else "198.18.1.1"
    async with CollectorClient([url], key) as client:
        await client.enroll(token, declared=declared)
        print("ready", flush=True)
        while True:
            document = measurement_document(fake_measurement(domain, real_ip), declared, False)
            await client.submit([sign(key, Purpose.MEASUREMENT, document)])
            await asyncio.sleep(interval)


if __name__ == "__main__":
    url, token, domain, cc, asn, interval = sys.argv[1:7]
    asyncio.run(main(url, token, domain, cc, int(asn), float(interval)))
