"""The lab's PKI on disk, shared by the processes of one run.

The lab makes ``tests.support``'s TestPKI once, then writes its CA keys into the
run directory (mode 0700, removed at teardown) so that each daemon, in its own
namespace and process, can load the same authorities and issue what it needs.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.pki import ISSUERS, TestPKI, _Authority


def save_pki(pki: TestPKI) -> None:
    for label, authority in pki.authorities.items():
        key = authority.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = pki.directory / f"ca-{label}.key"
        path.write_bytes(key)
        path.chmod(0o600)


def load_pki(directory: Path) -> TestPKI:
    authorities: dict[str, _Authority] = {}
    for label in ISSUERS:
        cert = x509.load_pem_x509_certificate((directory / f"ca-{label}.pem").read_bytes())
        key = serialization.load_pem_private_key(
            (directory / f"ca-{label}.key").read_bytes(), password=None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"ca-{label}.key is not an EC key")
        authorities[label] = _Authority(cert.subject, key, cert)
    return TestPKI(directory, directory / "ca-trusted.pem", authorities)
