"""TLS handshakes over a measured TCP stream, driven through memory BIOs.

Driving OpenSSL through ``MemoryBIO`` (rather than ``loop.start_tls``) keeps the
transport events visible: a RST after our ClientHello surfaces as
``ConnectionResetError`` from ``recv`` (``connection_reset``), a FIN as an empty
read (``eof_error``), silence as our timer (``generic_timeout_error``), and each
certificate problem as OpenSSL's verification code. asyncio's SSL protocol folds
several of these into one "connection lost".

Two kinds of handshake per address: with the instance's name as SNI, validated
against the system store plus ``--ca-file``; and with a decoy SNI, not validated,
which tells SNI filtering (decoy works, real name fails) from IP blocking (both
fail). The engine runs the decoy first: see ``engine``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import ssl
from dataclasses import dataclass

from cryptography import x509

from probe_agent.measure.clock import Clock
from probe_agent.measure.failures import NETWORK_ERRORS, classify
from probe_agent.measure.netio import RECV_CHUNK, Stream
from probe_agent.measure.observations import CertificateInfo, TLSObservation
from probe_agent.protocol.vocabulary import Operation

# OpenSSL refuses certificate chains above its own limit (100 KiB by default); this
# bounds what we buffer before it gets the chance, against a peer that streams junk.
MAX_HANDSHAKE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class TLSContexts:
    """The two client contexts, built once per run and shared by every handshake."""

    validating: ssl.SSLContext
    decoy: ssl.SSLContext

    @classmethod
    def create(cls, ca_file: str | None = None) -> TLSContexts:
        validating = ssl.create_default_context()
        if ca_file:
            validating.load_verify_locations(cafile=ca_file)
        validating.set_alpn_protocols(["http/1.1"])
        # No trust store for the decoy: it is not validated, and loading the store
        # makes OpenSSL build a chain on every handshake for nothing (~0.3 ms).
        decoy = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        decoy.check_hostname = False
        decoy.verify_mode = ssl.CERT_NONE
        decoy.minimum_version = ssl.TLSVersion.TLSv1_2
        decoy.set_alpn_protocols(["http/1.1"])
        return cls(validating, decoy)


class TLSStream:
    """A Stream carrying TLS application data over another Stream."""

    def __init__(
        self, raw: Stream, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        self._raw = raw
        self._obj = obj
        self._incoming = incoming
        self._outgoing = outgoing

    async def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            await self._raw.send(data)

    async def send(self, data: bytes) -> None:
        self._obj.write(data)
        await self._flush()

    async def recv(self, max_bytes: int = RECV_CHUNK) -> bytes:
        while True:
            try:
                return self._obj.read(max_bytes)
            except ssl.SSLWantReadError:
                await self._flush()
                chunk = await self._raw.recv(RECV_CHUNK)
                if chunk:
                    self._incoming.write(chunk)
                else:
                    self._incoming.write_eof()
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLEOFError:
                # A FIN without close_notify after the handshake (a "ragged EOF"):
                # many servers end a close-delimited body that way, so it is an
                # EOF, as with the ssl module's default suppress_ragged_eofs.
                return b""

    def close(self) -> None:
        self._raw.close()


def _describe(der_chain: list[bytes]) -> CertificateInfo | None:
    if not der_chain:
        return None
    found = _describe_leaf(der_chain[0])
    return None if found is None else dataclasses.replace(found, chain_length=len(der_chain))


@functools.lru_cache(maxsize=256)
def _describe_leaf(leaf_der: bytes) -> CertificateInfo | None:
    """Parse a leaf once: the same certificate is seen on every address and name it serves."""
    try:
        cert = x509.load_der_x509_certificate(leaf_der)
    except ValueError:
        return None
    sans: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [*ext.get_values_for_type(x509.DNSName)]
        sans += [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    except (x509.ExtensionNotFound, ValueError):
        pass
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=tuple(sans),
        sha256=hashlib.sha256(leaf_der).hexdigest(),
        not_before=cert.not_valid_before_utc.isoformat().replace("+00:00", "Z"),
        not_after=cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
        chain_length=1,
    )


def _peer_chain(obj: ssl.SSLObject, verified: bool) -> list[bytes]:
    """The certificates the peer sent, leaf first, as DER.

    Python 3.13 made ``get_unverified_chain`` public; 3.11 and 3.12 have it on the
    private ``_sslobj`` only. Without it we still have the leaf.
    """
    inner = getattr(obj, "_sslobj", None)
    getter = getattr(inner, "get_verified_chain" if verified else "get_unverified_chain", None)
    if getter is not None:
        try:
            chain = getter() or []
            return [c.public_bytes(2) for c in chain]  # 2 == _ssl.ENCODING_DER
        except (ssl.SSLError, ValueError, AttributeError):
            pass
    leaf = obj.getpeercert(binary_form=True) if verified else None
    return [leaf] if leaf else []


async def _drive_handshake(
    raw: Stream, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> None:
    received = 0
    while True:
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            data = outgoing.read()
            if data:
                await raw.send(data)
            chunk = await raw.recv(RECV_CHUNK)
            if not chunk:
                incoming.write_eof()  # the next do_handshake raises SSLEOFError
                continue
            received += len(chunk)
            if received > MAX_HANDSHAKE_BYTES:
                raise ssl.SSLError("handshake larger than the probe accepts") from None
            incoming.write(chunk)
        else:
            break
    data = outgoing.read()  # our Finished (TLS 1.3) or last flight
    if data:
        await raw.send(data)


async def tls_handshake(
    raw: Stream,
    *,
    ip: str,
    port: int,
    sni: str,
    contexts: TLSContexts,
    decoy: bool,
    timeout: float,
    clock: Clock,
) -> tuple[TLSObservation, TLSStream | None]:
    """Handshake over *raw*; on failure *raw* stays open and the caller closes it."""
    obs = TLSObservation(t0=clock.elapsed(), t=0.0, ip=ip, port=port, sni=sni, decoy=decoy)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    ctx = contexts.decoy if decoy else contexts.validating
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        async with asyncio.timeout(timeout):
            await _drive_handshake(raw, obj, incoming, outgoing)
    except NETWORK_ERRORS as exc:
        obs.fail(classify(exc, Operation.TLS_HANDSHAKE))
        if isinstance(exc, ssl.SSLCertVerificationError):
            # The handshake reached the certificate: keep it as evidence (an
            # interception certificate names the interceptor's CA).
            obs.cert_valid = False
            obs.certificate = _describe(_peer_chain(obj, verified=False))
        obs.t = clock.elapsed()
        return obs, None
    obs.t = clock.elapsed()
    obs.version = obj.version()
    cipher = obj.cipher()
    obs.cipher = cipher[0] if cipher else None
    obs.cert_valid = None if decoy else True
    obs.certificate = _describe(_peer_chain(obj, verified=not decoy) or _leaf(obj))
    return obs, TLSStream(raw, obj, incoming, outgoing)


def _leaf(obj: ssl.SSLObject) -> list[bytes]:
    leaf = obj.getpeercert(binary_form=True)
    return [leaf] if leaf else []
