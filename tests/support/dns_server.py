"""A loopback resolver (UDP and TCP on one port) with one behaviour per name, and an injector.

Where this sits in the data flow: the probe's first step is DNS (``dnsprobe``);
this server is the resolver it queries, and each name's ``DNSRecord`` says what
the network does to that query: answer, NXDOMAIN/SERVFAIL/REFUSED, silence, an
on-path injection racing the real answer (UDP only, as the GFW does), garbage,
a 5-byte datagram, or an answer with the wrong query id. ``InjectorServer``
plays the injector seen at an "injection sink": an address that runs no
resolver but answers anyway, because something on the path forges answers.

``records`` may be changed while the server runs; names are lower case without
the trailing dot; unknown names get NXDOMAIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Self

import dns.exception
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.support.tasks import cancel_all

# The first entries of the GFW's forged pools (probe_agent/data): a forged answer
# the probe must recognise and must never dial.
FORGED_A = "8.7.198.45"
FORGED_AAAA = "2a03:2880:f130:83:face:b00c:0:25de"
TTL = 60
# Header-shaped garbage: a plausible id and flags, one question, then a name that
# starts with a compression pointer far beyond the message (dnspython: BadPointer).
GARBAGE = b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + b"\xff" * 20
TRUNCATED_DATAGRAM = b"\x13\x37\x81\x80\x00"


class DNSBehaviour(StrEnum):
    ANSWER = "answer"
    NXDOMAIN = "nxdomain"
    SERVFAIL = "servfail"
    REFUSED = "refused"
    NOTIMP = "notimp"  # an rcode without a failure string of its own
    SILENT = "silent"  # never answers (UDP nor TCP)
    INJECT = "inject"  # UDP: forged answer at once, the real one after inject_delay
    MALFORMED = "malformed"  # garbage bytes (framed on TCP)
    TRUNCATED = "truncated"  # a 5-byte message
    WRONG_ID = "wrong_id"  # an answer with another query id, and nothing else
    # UDP: the wrong-id answer at once, then the real one after inject_delay (an
    # answer meant for another query must not end the wait for ours).
    WRONG_ID_THEN_ANSWER = "wrong_id_then_answer"


@dataclass(slots=True)
class DNSRecord:
    a: list[str]
    aaaa: list[str] = field(default_factory=list)
    behaviour: DNSBehaviour = DNSBehaviour.ANSWER
    forged_a: list[str] = field(default_factory=lambda: [FORGED_A])
    forged_aaaa: list[str] = field(default_factory=lambda: [FORGED_AAAA])
    inject_delay: float = 0.1


_RCODES = {
    DNSBehaviour.NXDOMAIN: dns.rcode.NXDOMAIN,
    DNSBehaviour.SERVFAIL: dns.rcode.SERVFAIL,
    DNSBehaviour.REFUSED: dns.rcode.REFUSED,
    DNSBehaviour.NOTIMP: dns.rcode.NOTIMP,
}


def answer(query: dns.message.Message, a: list[str], aaaa: list[str]) -> bytes:
    """A NOERROR response to *query* carrying the addresses of its type (maybe none)."""
    response = dns.message.make_response(query)
    question = query.question[0]
    found = {dns.rdatatype.A: a, dns.rdatatype.AAAA: aaaa}.get(question.rdtype, [])
    if found:
        response.answer.append(
            dns.rrset.from_text_list(question.name, TTL, dns.rdataclass.IN, question.rdtype, found)
        )
    return response.to_wire()


def _rcode_only(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response.to_wire()


def _with_other_id(wire: bytes) -> bytes:
    query_id = struct.unpack("!H", wire[:2])[0]
    return struct.pack("!H", query_id ^ 0x5A5A) + wire[2:]


@dataclass(frozen=True, slots=True)
class _Reply:
    """What to send for one query: datagrams now, and maybe one later (UDP only)."""

    now: list[bytes]
    later: bytes | None = None
    delay: float = 0.0


def _parse_query(data: bytes) -> dns.message.Message | None:
    try:
        query = dns.message.from_wire(data)
    except dns.exception.DNSException:
        return None
    return query if query.question else None


class DNSServer:
    """A resolver on ``ip:port`` (UDP and TCP); ``port=0`` picks a free port for both."""

    def __init__(self, ip: str = "127.0.0.1", port: int = 0) -> None:
        self.ip = ip
        self.port = port
        self.records: dict[str, DNSRecord] = {}
        self.txt: dict[str, list[str]] = {}  # TXT records by name (alert verification)
        self.queries: list[tuple[str, str, str]] = []  # (transport, name, type), for tests
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._later: set[asyncio.TimerHandle] = set()
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        return f"{self.ip}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(20):
            # Both transports on one port: take the TCP port first, then UDP; a
            # port=0 clash on UDP is retried with a new TCP port.
            tcp = await asyncio.start_server(self._serve_tcp, self.ip, self.port)
            port = tcp.sockets[0].getsockname()[1]
            try:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UDPProtocol(self), local_addr=(self.ip, port)
                )
            except OSError:
                tcp.close()
                await tcp.wait_closed()
                if self.port or attempt == 19:
                    raise
                continue
            self._tcp, self._udp, self.port = tcp, udp, port
            return

    async def stop(self) -> None:
        for handle in self._later:
            handle.cancel()
        self._later.clear()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            await cancel_all(self._conns)
            await self._tcp.wait_closed()
            self._tcp = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def reply(self, transport: str, query: dns.message.Message) -> _Reply:
        """Decide what the network answers to *query* over *transport* ("udp" or "tcp")."""
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        self.queries.append((transport, name, dns.rdatatype.to_text(question.rdtype)))
        if question.rdtype == dns.rdatatype.TXT and name in self.txt:
            response = dns.message.make_response(query)
            texts = [f'"{t}"' for t in self.txt[name]]
            response.answer.append(
                dns.rrset.from_text_list(question.name, TTL, dns.rdataclass.IN, "TXT", texts)
            )
            return _Reply([response.to_wire()])
        record = self.records.get(name)
        if record is None:
            return _Reply([_rcode_only(query, dns.rcode.NXDOMAIN)])
        behaviour = record.behaviour
        real = answer(query, record.a, record.aaaa)
        if behaviour in _RCODES:
            return _Reply([_rcode_only(query, _RCODES[behaviour])])
        if behaviour is DNSBehaviour.SILENT:
            return _Reply([])
        if behaviour is DNSBehaviour.MALFORMED:
            return _Reply([real[:2] + GARBAGE])
        if behaviour is DNSBehaviour.TRUNCATED:
            return _Reply([TRUNCATED_DATAGRAM])
        if behaviour is DNSBehaviour.WRONG_ID:
            return _Reply([_with_other_id(real)])
        if transport == "udp" and behaviour is DNSBehaviour.WRONG_ID_THEN_ANSWER:
            return _Reply([_with_other_id(real)], real, record.inject_delay)
        if transport == "udp" and behaviour is DNSBehaviour.INJECT:
            forged = answer(query, record.forged_a, record.forged_aaaa)
            return _Reply([forged], real, record.inject_delay)
        return _Reply([real])

    def _send_later(self, delay: float, data: bytes, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._later.discard(handle)
            if self._udp is not None and not self._udp.is_closing():
                self._udp.sendto(data, addr)

        handle = loop.call_later(delay, fire)
        self._later.add(handle)

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        query = _parse_query(data)
        if query is None or self._udp is None:
            return
        reply = self.reply("udp", query)
        for wire in reply.now:
            self._udp.sendto(wire, addr)
        if reply.later is not None:
            self._send_later(reply.delay, reply.later, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while True:
                length = struct.unpack("!H", await reader.readexactly(2))[0]
                query = _parse_query(await reader.readexactly(length))
                if query is None:
                    break
                for wire in self.reply("tcp", query).now:
                    writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # ``stop`` cancelled and awaits us (see InstanceServer._handle)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            self._conns.discard(task)


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer | InjectorServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server._datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier reply: nothing to do


class InjectorServer:
    """Answers every UDP query at once with forged addresses (an on-path injector's view)."""

    def __init__(
        self,
        ip: str = "127.0.0.2",
        port: int = 0,
        forged_a: list[str] | None = None,
        forged_aaaa: list[str] | None = None,
    ) -> None:
        self.ip = ip
        self.port = port
        self.forged_a = forged_a if forged_a is not None else [FORGED_A]
        self.forged_aaaa = forged_aaaa if forged_aaaa is not None else [FORGED_AAAA]
        self.queries = 0
        self._udp: asyncio.DatagramTransport | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.ip}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UDPProtocol(self), local_addr=(self.ip, self.port)
        )
        self.port = self._udp.get_extra_info("sockname")[1]

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        query = _parse_query(data)
        if query is None or self._udp is None:
            return
        self.queries += 1
        self._udp.sendto(answer(query, self.forged_a, self.forged_aaaa), addr)
