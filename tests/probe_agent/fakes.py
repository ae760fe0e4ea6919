"""Fakes for the probe's protocols (CONTRIBUTING.md 12): clock, streams, dialer, DNS prober.

``TLSPeerStream`` is a real TLS server (an ``ssl.SSLObject`` over memory BIOs)
behind the ``Stream`` interface: the engine's TLS and HTTP code runs unchanged
against it, without sockets, so unit tests stay offline and fast.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from probe_agent.measure.clock import Clock
from probe_agent.measure.observations import DNSObservation
from probe_agent.protocol.inputs import Endpoint


class FakeClock:
    """Advances by a fixed step at every reading, so t0 < t always holds."""

    def __init__(self, step: float = 0.001) -> None:
        self.now = 0.0
        self.step = step

    def elapsed(self) -> float:
        self.now += self.step
        return round(self.now, 6)


class ScriptedStream:
    """A stream that replays a script of reads: bytes, or an exception to raise."""

    def __init__(self, reads: list[bytes | BaseException]) -> None:
        self.reads = list(reads)
        self.sent = bytearray()
        self.closed = False

    async def send(self, data: bytes) -> None:
        self.sent += data

    async def recv(self, max_bytes: int = 65536) -> bytes:
        await asyncio.sleep(0)
        if not self.reads:
            return b""
        item = self.reads.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class UnitCA:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@cache
def make_ca(names: tuple[str, ...] = ("instance.test",)) -> UnitCA:
    """A CA and a leaf for *names*, generated once per process."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Blockwatch unit-test CA"))
        .issuer_name(_name("Blockwatch unit-test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return UnitCA(
        ca_pem=ca.public_bytes(pem),
        cert_pem=leaf.public_bytes(pem),
        key_pem=key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


Responder = Callable[[str], tuple[int, bytes]]


def mastodon_responder(domain: str) -> Responder:
    def respond(path: str) -> tuple[int, bytes]:
        if path == "/api/v2/instance":
            return 200, json.dumps({"domain": domain, "version": "4.3.0"}).encode()
        return 404, b"not found"

    return respond


class TLSPeerStream:
    """A client-side Stream whose peer is an in-memory TLS server answering HTTP/1.1."""

    def __init__(self, server_ctx: ssl.SSLContext, respond: Responder) -> None:
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = server_ctx.wrap_bio(self._in, self._out, server_side=True)
        self._respond = respond
        self._handshaken = False
        self._request = b""
        self.server_name: str | None = None
        self.closed = False

    async def send(self, data: bytes) -> None:
        self._in.write(data)
        if not self._handshaken:
            try:
                self._tls.do_handshake()
                self._handshaken = True
            except ssl.SSLWantReadError:
                return
        try:
            self._request += self._tls.read(65536)
        except ssl.SSLWantReadError:
            return
        while b"\r\n\r\n" in self._request:
            head, _, self._request = self._request.partition(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            status, body = self._respond(path)
            self._tls.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
            )

    async def recv(self, max_bytes: int = 65536) -> bytes:
        await asyncio.sleep(0)
        return self._out.read() or b""

    def close(self) -> None:
        self.closed = True


def server_context(ca: UnitCA, tmp_dir: Path) -> ssl.SSLContext:
    cert, key = tmp_dir / "leaf.pem", tmp_dir / "key.pem"
    cert.write_bytes(ca.cert_pem)
    key.write_bytes(ca.key_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class FakeDialer:
    """Hands out streams from a factory per (ip, connection number); records the dials."""

    factory: Callable[[str, int], object]
    dials: list[str] = field(default_factory=list)

    async def connect(self, ip: str, port: int, timeout: float) -> object:
        self.dials.append(ip)
        made = self.factory(ip, self.dials.count(ip))
        if isinstance(made, BaseException):
            raise made
        return made


@dataclass
class FakeDNSProber:
    """Answers every query from a table: qtype -> (answers, late_answers, failure)."""

    table: dict[str, tuple[list[str], list[str], str | None]]
    queries: list[tuple[str, str, str, bool]] = field(default_factory=list)

    async def query(
        self,
        endpoint: Endpoint,
        transport: str,
        qname: str,
        qtype: str,
        clock: Clock,
        *,
        injection_sink: bool = False,
    ) -> DNSObservation:
        self.queries.append((str(endpoint), transport, qtype, injection_sink))
        answers, late, failure = self.table.get(qtype, ([], [], "dns_no_answer"))
        t0 = clock.elapsed()
        return DNSObservation(
            t0=t0,
            t=clock.elapsed(),
            failure=failure,
            failed_operation="resolve" if failure else None,
            resolver=str(endpoint),
            transport=transport,
            query_type=qtype,
            rcode="NOERROR",
            answers=list(answers),
            late_answers=list(late) if transport == "udp" else [],
            responses=1 + (1 if late and transport == "udp" else 0),
            responses_agree=not (late and transport == "udp"),
            injection_sink=injection_sink,
        )
