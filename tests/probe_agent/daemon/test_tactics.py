"""Ways to the collector, against a real HTTPS server on loopback: another address
for a name that does not resolve, the operator's front (an SNI of its own, the
certificate still checked for the collector's name), the certificate key pin
(checked before a request byte is sent), the order (the way that answered last
first, .onion only through SOCKS) and what is counted of each attempt."""

from __future__ import annotations

import ssl
from pathlib import Path

import dns.message
import dns.rdatatype
import dns.rrset
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from probe_agent.daemon.client import CollectorClient
from probe_agent.daemon.tactics import Way, parse_pin, spki_pin, valid_for, ways
from probe_agent.protocol.endpoints import Endpoint
from probe_agent.protocol.errors import CollectorUnreachable, InvalidOptionError
from tests.support.aiohttp_site import serve_app
from tests.support.fake_collector import FakeCollector
from tests.support.pki import TestPKI
from tests.support.simnet import free_tcp_port

NAME = "collector.test"  # resolves nowhere: only an address or a front reaches it


class Served:
    """A fake collector over HTTPS with a certificate for *names*, noting each SNI."""

    def __init__(self, pki: TestPKI, names: list[str]) -> None:
        cert, key = pki.cert_files(names)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sni: list[str | None] = []
        self.context.sni_callback = lambda _obj, name, _ctx: self.sni.append(name)
        self.pin = spki_pin(
            x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
        )
        self.fake = FakeCollector(tls=self.context)


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return TestPKI.create(tmp_path / "pki")


def closed() -> str:
    return f"https://127.0.0.1:{free_tcp_port('127.0.0.1')}"


async def enroll_through(
    pki: TestPKI, served: Served, **endpoint: str
) -> tuple[CollectorClient, Exception | None]:
    """Enroll through a blocked URL, then *served* at the listed *endpoint* options."""
    async with served.fake as fake:
        port = fake.url.rsplit(":", 1)[1]
        listed = Endpoint(f"https://{NAME}:{port}", **endpoint)
        async with CollectorClient(
            [closed()], Ed25519PrivateKey.generate(), ca_file=str(pki.ca_file), endpoints=[listed]
        ) as client:
            try:
                await client.enroll(None)
            except CollectorUnreachable as exc:
                return client, exc
    return client, None


async def test_a_listed_address_reaches_a_name_that_does_not_resolve(pki: TestPKI) -> None:
    served = Served(pki, [NAME])
    client, error = await enroll_through(pki, served, address="127.0.0.1")
    assert error is None and len(served.fake.enrollments) == 1
    assert served.sni == [NAME]  # the collector's own name, on the listed address
    assert [(a.way.kind, a.ok) for a in client.attempts] == [("direct", False), ("address", True)]
    assert client.answered_way is not None and client.answered_way.kind == "address"
    assert served.fake.problems == []


async def test_a_front_gets_its_own_sni_and_the_certificate_is_checked_for_the_collector(
    pki: TestPKI,
) -> None:
    served = Served(pki, [NAME])
    client, error = await enroll_through(pki, served, address="127.0.0.1", sni="cdn.example")
    assert error is None
    assert served.sni == ["cdn.example"]
    assert client.attempts[-1].ok and client.attempts[-1].way.kind == "front"


async def test_a_front_whose_certificate_is_not_the_collectors_is_refused(pki: TestPKI) -> None:
    served = Served(pki, ["cdn.example"])  # valid for the SNI, not for the collector
    _, error = await enroll_through(pki, served, address="127.0.0.1", sni="cdn.example")
    assert error is not None and "front not valid for the collector" in str(error)
    assert served.fake.received == []  # refused in the handshake: not a byte of the request


async def test_the_pin_passes_the_right_key_and_stops_another_before_any_request(
    pki: TestPKI,
) -> None:
    served = Served(pki, [NAME])
    other = Served(pki, [NAME, "other.test"])  # same CA, same name, another key
    async with served.fake as fake, other.fake as impostor:
        for server, ok in ((fake, True), (impostor, False)):
            port = server.url.rsplit(":", 1)[1]
            way = Endpoint(f"https://{NAME}:{port}", address="127.0.0.1")
            async with CollectorClient(
                [closed()], Ed25519PrivateKey.generate(), ca_file=str(pki.ca_file),
                endpoints=[way], pin=served.pin,
            ) as client:  # fmt: skip
                if ok:
                    await client.enroll(None)
                else:
                    with pytest.raises(CollectorUnreachable, match="not the pinned one"):
                        await client.enroll(None)
    assert len(fake.enrollments) == 1
    assert impostor.received == []


def test_the_way_that_answered_last_goes_first_and_onions_need_socks() -> None:
    listed = (
        Endpoint("https://a.example"),  # also configured: once, as configured
        Endpoint("https://a.example", address="203.0.113.1"),
        Endpoint("http://bwcollectorabcdefghij.onion"),
    )
    plain = ways(("https://a.example", "https://b.example"), listed, socks_proxy=False)
    assert [(w.source, w.position, w.kind) for w in plain] == [
        ("configured", 1, "direct"),
        ("configured", 2, "direct"),
        ("endpoint", 2, "address"),
    ]
    socks = ways(("https://a.example",), listed, socks_proxy=True, preferred=listed[2].text())
    assert [w.kind for w in socks] == ["onion", "direct", "address"]
    assert socks[0].label == "listed endpoint 3 (onion)"
    assert "203.0.113.1" not in " ".join(w.label for w in plain)  # never an address


def test_a_listed_address_keeps_the_name_in_the_host_header_and_the_sni() -> None:
    way = Way(Endpoint("https://bw.example:8443/base", address="2001:db8::1"), "endpoint", 1)
    assert way.request() == (
        "https://[2001:db8::1]:8443/base",
        {"headers": {"Host": "bw.example:8443"}, "server_hostname": "bw.example"},
    )
    front = Way(Endpoint("https://bw.example", sni="cdn.example"), "endpoint", 2)
    assert front.request() == ("https://bw.example", {"server_hostname": "cdn.example"})


def test_names_match_as_rfc_6125_says(pki: TestPKI) -> None:
    cert, _ = pki.cert_files(["*.bw.example", "bw.example"])
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
    assert valid_for(der, "bw.example") and valid_for(der, "API.bw.example")
    assert not valid_for(der, "a.b.bw.example")  # a wildcard is one label
    assert not valid_for(der, "evilbw.example") and not valid_for(der, "203.0.113.1")


def test_a_pin_is_base64_of_32_bytes() -> None:
    good = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    assert parse_pin(good) == good
    assert parse_pin(f'pin-sha256:"{good}"') == good
    for bad in ("", "abc", good[:-4], "sha1/" + good):
        with pytest.raises(InvalidOptionError, match="collector-pin"):
            parse_pin(bad)


class DoHServer:
    """RFC 8484 over HTTPS on loopback: answers *records* (name -> IPv4), counts queries."""

    def __init__(self, pki: TestPKI, records: dict[str, str]) -> None:
        self.pki, self.records = pki, records
        self.queries: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        assert request.headers["Content-Type"] == "application/dns-message"
        query = dns.message.from_wire(await request.read())
        self.queries.append(query.question[0].name.to_text(omit_final_dot=True))
        answer = dns.message.make_response(query)
        name = query.question[0].name
        address = self.records.get(name.to_text(omit_final_dot=True))
        if address is not None and query.question[0].rdtype == dns.rdatatype.A:
            answer.answer.append(dns.rrset.from_text(name, 60, "IN", "A", address))
        return web.Response(body=answer.to_wire(), content_type="application/dns-message")

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/dns-query", self.handle)
        self.runner, port = await serve_app(app, ssl_context=self.pki.loopback_context())
        return f"https://127.0.0.1:{port}/dns-query"

    async def __aexit__(self, *_exc: object) -> None:
        await self.runner.cleanup()


@pytest.mark.parametrize("pinned", [False, True])
async def test_a_name_the_system_cannot_resolve_is_reached_through_doh(
    pki: TestPKI, pinned: bool
) -> None:
    # With --collector-pin too: the pin names the collector's key, and the DoH server,
    # with its own certificate, is not asked for it.
    served = Served(pki, [NAME])
    async with served.fake as fake, DoHServer(pki, {NAME: "127.0.0.1"}) as doh_url:
        port = fake.url.rsplit(":", 1)[1]
        async with CollectorClient(
            [f"https://{NAME}:{port}"], Ed25519PrivateKey.generate(),
            ca_file=str(pki.ca_file), doh=doh_url, pin=served.pin if pinned else None,
        ) as client:  # fmt: skip
            await client.enroll(None)
    assert [(a.way.kind, a.ok) for a in client.attempts] == [("direct", False), ("doh", True)]
    assert served.sni == [NAME]  # the real name in the handshake, at DoH's address
    assert client.attempts[1].way.key.startswith("doh:")
    assert len(fake.enrollments) == 1


async def test_doh_without_an_answer_fails_that_way_only(pki: TestPKI) -> None:
    server = DoHServer(pki, {})
    async with server as doh_url, CollectorClient(
        [f"https://{NAME}:1"], Ed25519PrivateKey.generate(), ca_file=str(pki.ca_file),
        doh=doh_url,
    ) as client:  # fmt: skip
        with pytest.raises(CollectorUnreachable, match="DNS-over-HTTPS: no address"):
            await client.enroll(None)
    assert server.queries == [NAME, NAME]  # A, then AAAA


def test_no_doh_way_through_a_proxy_nor_for_an_address() -> None:
    listed = (Endpoint("https://bw.example", address="203.0.113.1"),)
    found = ways(
        ("https://bw.example", "https://127.0.0.1:8443"), listed, socks_proxy=False, doh=True
    )
    assert [(w.kind, w.host) for w in found] == [
        ("direct", "bw.example"), ("direct", "127.0.0.1"), ("address", "bw.example"),
        ("doh", "bw.example"),
    ]  # fmt: skip
    client = CollectorClient(
        ["https://bw.example"], Ed25519PrivateKey.generate(), proxy="socks5://127.0.0.1:9050",
        doh="https://127.0.0.1/dns-query",
    )  # fmt: skip
    assert [w.kind for w in client._ways] == ["direct"]
