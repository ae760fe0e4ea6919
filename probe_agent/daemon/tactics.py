"""Ways to reach the collector when the plain one is blocked, and the TLS each needs.

Where this sits in the data flow: the collector client (``daemon.client``) tries
its ways in order, the one that worked last first. A *way* is an ``Endpoint``
(``protocol.endpoints``): a configured ``--collector`` URL, or one of the signed
list the collector handed out at check-in, tried in the way it names:

- ``direct``: the URL as it is;
- ``address``: connect to the listed address instead of resolving the name (a
  poisoned or blocked name); the URL's host still goes in the SNI and the Host
  header, and the certificate is verified for it;
- ``front``: the ClientHello carries another name (``sni``), for a front the
  operator runs that answers any SNI with the collector's certificate; the
  certificate is verified for the URL's host all the same, and the Host header
  names it. Not third-party CDN fronting: a CDN that routes by SNI or checks the
  SNI against the Host does not carry it, and the front sees the real Host;
- ``onion``: a ``.onion`` URL, only through a SOCKS ``--proxy`` (Tor): without
  one it is skipped;
- ``doh``: with ``--collector-doh URL``, each named way once more, last, its name
  resolved over DNS-over-HTTPS (RFC 8484) instead of the system resolver (a
  poisoned answer leads nowhere or to a certificate that does not fit); then as
  ``address``. Not through ``--proxy``: the proxy resolves names itself.

Through ``--proxy`` every way goes through the proxy. With ``--collector-pin``
(base64 SHA-256 of the certificate's SubjectPublicKeyInfo, HPKP's pin-sha256),
every handshake must also present that key, or it fails before a request byte
is sent: a CA that issued a certificate for the collector's name to someone
else is not enough to read what the probe sends.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from probe_agent.protocol.addresses import is_address
from probe_agent.protocol.endpoints import Endpoint
from probe_agent.protocol.errors import InvalidOptionError
from probe_agent.protocol.messages import N_
from probe_agent.state.reach import DOH_PREFIX

DIRECT, ONION, DOH = "direct", "onion", "doh"  # Endpoint.kind's values, and DoH


class PinMismatch(ssl.SSLCertVerificationError):
    """The collector's certificate does not carry the pinned key."""


class NameMismatch(ssl.SSLCertVerificationError):
    """The certificate a front presented is not valid for the collector's name."""


def parse_pin(text: str) -> str:
    """A ``--collector-pin``: base64 of a SHA-256 (44 characters, ``=``-padded)."""
    value = text.strip().removeprefix("sha256/").removeprefix("pin-sha256:").strip('"')
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise InvalidOptionError(
            N_(
                "invalid --collector-pin %(text)r: expected the base64 SHA-256 of the "
                "certificate's public key (openssl x509 -pubkey | openssl pkey -pubin -outform "
                "der | openssl dgst -sha256 -binary | base64)"
            ),
            text=text,
        )
    return base64.b64encode(raw).decode("ascii")


def spki_pin(certificate_der: bytes) -> str:
    """The pin of a certificate: base64 SHA-256 of its SubjectPublicKeyInfo."""
    cert = x509.load_der_x509_certificate(certificate_der)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def valid_for(certificate_der: bytes, host: str) -> bool:
    """RFC 6125 matching of *host* against the certificate's subjectAltName: an exact
    name or address, or a wildcard as the whole leftmost label of a name."""
    cert = x509.load_der_x509_certificate(certificate_der)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return address in names.get_values_for_type(x509.IPAddress)
    wanted = host.lower().rstrip(".").split(".")
    for name in names.get_values_for_type(x509.DNSName):
        labels = name.lower().rstrip(".").split(".")
        if labels == wanted:
            return True
        if len(labels) == len(wanted) > 2 and labels[0] == "*" and labels[1:] == wanted[1:]:
            return True
    return False


class _CheckedSSLObject(ssl.SSLObject):
    """Checks the peer's certificate after the library verified its chain: the pin,
    and for a front the collector's own name (the SNI named the front)."""

    def do_handshake(self) -> None:
        super().do_handshake()
        context = self.context
        if not isinstance(context, WayContext):
            return
        der = self.getpeercert(binary_form=True)
        if der is None:
            raise PinMismatch("the collector presented no certificate")
        if context.expected_host is not None and not valid_for(der, context.expected_host):
            raise NameMismatch("the front's certificate is not valid for the collector's name")
        if context.pin is not None and spki_pin(der) != context.pin:
            raise PinMismatch("the collector's certificate does not carry the pinned key")


class WayContext(ssl.SSLContext):
    """A client context that verifies the chain always, and the name itself for a front."""

    expected_host: str | None = None
    pin: str | None = None


def way_context(ca_file: str | None, pin: str | None, front_for: str | None) -> WayContext:
    """*front_for*: the collector's host name, when the SNI names a front instead."""
    context = WayContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_default_certs()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidOptionError(
                N_("cannot load the CA bundle %(path)r: %(reason)s"), path=ca_file, reason=str(exc)
            ) from exc
    if front_for is not None:
        context.check_hostname = False  # the SNI is the front's; checked for the real name
        context.expected_host = front_for
    context.verify_mode = ssl.CERT_REQUIRED
    context.pin = pin
    context.sslobject_class = _CheckedSSLObject
    return context


@dataclass(frozen=True, slots=True)
class Way:
    """One way to a collector: the endpoint, where it came from, its place there."""

    endpoint: Endpoint
    source: str  # "configured" | "endpoint" (the signed list)
    position: int  # 1-based, within its source
    doh: bool = False  # the name resolved over DNS-over-HTTPS (then reached as an address)

    @property
    def key(self) -> str:
        """How the state remembers it (the state directory is the volunteer's own)."""
        return (DOH_PREFIX if self.doh else "") + self.endpoint.text()

    @property
    def kind(self) -> str:
        return DOH if self.doh else self.endpoint.kind

    def at(self, address: str) -> Way:
        """This way, reaching its host at *address* (what DoH answered)."""
        endpoint = Endpoint(self.endpoint.url, address, self.endpoint.sni)
        return Way(endpoint, self.source, self.position)

    @property
    def host(self) -> str:
        return (urlsplit(self.endpoint.url).hostname or "").lower()

    @property
    def label(self) -> str:
        """For messages and ``status``: never the URL or an address."""
        name = "collector" if self.source == "configured" else "listed endpoint"
        plain = self.source == "configured" and self.kind == DIRECT
        return f"{name} {self.position}" + ("" if plain else f" ({self.kind})")

    def request(self) -> tuple[str, dict[str, Any]]:
        """The base URL to request and aiohttp's extra request arguments."""
        url, extra = self.endpoint.url, dict[str, Any]()
        parts = urlsplit(url)
        if self.endpoint.address is not None:
            address = ipaddress.ip_address(self.endpoint.address)
            literal = f"[{address}]" if address.version == 6 else str(address)
            netloc = literal + (f":{parts.port}" if parts.port else "")
            url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
            extra["headers"] = {"Host": parts.netloc.rpartition("@")[2]}
            if parts.scheme == "https":
                extra["server_hostname"] = self.host
        if self.endpoint.sni is not None:
            extra["server_hostname"] = self.endpoint.sni
        return url, extra


def ways(
    configured: tuple[str, ...],
    listed: tuple[Endpoint, ...],
    *,
    socks_proxy: bool,
    preferred: str | None = None,
    doh: bool = False,
) -> list[Way]:
    """Every way, each once: the one that worked last first, then the configured URLs
    in order, then the listed endpoints in the collector's order, then (*doh*) every
    way to a name without an address once more, resolved over DoH. ``.onion`` ways
    only with a SOCKS proxy."""
    found: dict[Endpoint, Way] = {}
    for position, url in enumerate(configured, 1):
        found.setdefault(Endpoint(url), Way(Endpoint(url), "configured", position))
    for position, endpoint in enumerate(listed, 1):
        found.setdefault(endpoint, Way(endpoint, "endpoint", position))
    usable = [w for w in found.values() if w.kind != ONION or socks_proxy]
    if doh:
        usable += [
            Way(w.endpoint, w.source, w.position, doh=True)
            for w in list(usable)
            if w.endpoint.address is None and w.kind != ONION and not is_address(w.host)
        ]
    first = [w for w in usable if w.key == preferred]
    return first + [w for w in usable if w.key != preferred]
