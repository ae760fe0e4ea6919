"""A collector's Ed25519 key for tests, and the endpoint lists it signs."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from probe_agent.protocol.endpoints import Endpoint, EndpointList, signed
from probe_agent.protocol.envelope import fingerprint, public_bytes


class CollectorKey:
    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        self.public = public_bytes(self.private)
        self.key_id = fingerprint(self.public)

    def listing(self, *urls: str, issued: str = "2026-12-03T07:00:00Z") -> dict[str, str]:
        endpoints = tuple(Endpoint(u) for u in urls)
        return signed(
            EndpointList(self.key_id, issued, endpoints),
            self.public,
            lambda prefix, message: self.private.sign(prefix + message),
        )
