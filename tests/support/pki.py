"""A throw-away PKI for the loopback instances: one trusted CA, one untrusted CA, leaves.

Where this sits in the data flow: the probe validates the instance's certificate
against the system store plus ``--ca-file``; here ``ca_file`` holds only the
"trusted" test CA, so a leaf signed by the "untrusted" CA plays a TLS
interceptor's certificate (``ssl_unknown_authority``), a leaf for another name
plays a misrouted or intercepted connection (``ssl_invalid_hostname``), an expired
leaf plays a neglected instance (``ssl_invalid_certificate``), and a leaf padded
with a ~200 KB extension exceeds OpenSSL's 100 KiB certificate-list limit. A
leaf for the address 127.0.0.1 (``loopback_context``) serves the fake collector
over HTTPS, trusted through the same ``ca_file``.

Every key is ECDSA P-256 (fast to generate); certificates are cached per
(names, issuer, expired, huge) so that many servers share one file pair.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUSTED_CA_NAME = "Blockwatch Test Root CA"
UNTRUSTED_CA_NAME = "Untrusted Interception CA"
ISSUERS = ("trusted", "untrusted")
HUGE_EXTENSION_BYTES = 200 * 1024
# A private-enterprise OID nobody registered for anything: an opaque, non-critical
# extension that validators skip, so only its size matters.
_PADDING_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1.1")
_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class _Authority:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _new_authority(common_name: str) -> _Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Blockwatch tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 30 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Authority(name, key, cert)


def _padding_value(size: int) -> bytes:
    """A DER OCTET STRING of *size* bytes, so that strict parsers still accept it."""
    return b"\x04\x83" + size.to_bytes(3, "big") + b"\xab" * size


def _san(name: str) -> x509.GeneralName:
    """A subjectAltName entry: an IP address as one (``https://198.18.0.56``), else a name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _issue_leaf(
    ca: _Authority, names: list[str], *, expired: bool, huge: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = (
        (now - 60 * _DAY, now - 30 * _DAY) if expired else (now - _DAY, now + 30 * _DAY)
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if huge:
        padding = x509.UnrecognizedExtension(_PADDING_OID, _padding_value(HUGE_EXTENSION_BYTES))
        builder = builder.add_extension(padding, critical=False)
    return builder.sign(ca.key, hashes.SHA256()), key


@dataclass(slots=True)
class TestPKI:
    """Two CAs and a cache of server contexts, stored under one directory."""

    __test__ = False  # a support class, not a pytest test class

    directory: Path
    ca_file: Path
    authorities: dict[str, _Authority]
    _contexts: dict[tuple[tuple[str, ...], str, bool, bool], ssl.SSLContext] = field(
        default_factory=dict
    )

    @classmethod
    def create(cls, directory: Path) -> TestPKI:
        directory.mkdir(parents=True, exist_ok=True)
        authorities = {
            "trusted": _new_authority(TRUSTED_CA_NAME),
            "untrusted": _new_authority(UNTRUSTED_CA_NAME),
        }
        for label, ca in authorities.items():
            pem = ca.cert.public_bytes(serialization.Encoding.PEM)
            (directory / f"ca-{label}.pem").write_bytes(pem)
        return cls(directory, directory / "ca-trusted.pem", authorities)

    def issuer_name(self, issuer: str = "trusted") -> str:
        """The issuer of leaves signed by *issuer*, as the probe records it (RFC 4514)."""
        return self.authorities[issuer].name.rfc4514_string()

    def cert_files(
        self,
        names: list[str],
        *,
        issuer: str = "trusted",
        expired: bool = False,
        huge: bool = False,
    ) -> tuple[Path, Path]:
        """Write (once) and return the (certificate PEM, key PEM) files for these options."""
        if issuer not in ISSUERS:
            raise ValueError(f"issuer must be one of {ISSUERS}, not {issuer!r}")
        if not names:
            raise ValueError("a leaf certificate needs at least one name")
        label = "-".join([issuer, "expired" if expired else "", "huge" if huge else "", *names])
        stem = "leaf-" + "".join(c if c.isalnum() or c in "-." else "_" for c in label)[:120]
        cert_path = self.directory / f"{stem}.pem"
        key_path = self.directory / f"{stem}.key"
        if not cert_path.exists():
            cert, key = _issue_leaf(self.authorities[issuer], names, expired=expired, huge=huge)
            key_path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def server_context(
        self,
        names: list[str],
        *,
        issuer: str = "trusted",
        expired: bool = False,
        huge: bool = False,
    ) -> ssl.SSLContext:
        """A server-side context presenting a leaf for *names* (cached per options)."""
        key = (tuple(names), issuer, expired, huge)
        context = self._contexts.get(key)
        if context is None:
            cert_path, key_path = self.cert_files(names, issuer=issuer, expired=expired, huge=huge)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert_path, key_path)
            context.set_alpn_protocols(["http/1.1"])
            self._contexts[key] = context
        return context

    def loopback_context(self) -> ssl.SSLContext:
        """A server context for ``https://127.0.0.1`` (an IP SAN), from the trusted CA."""
        return self.server_context(["127.0.0.1"])
