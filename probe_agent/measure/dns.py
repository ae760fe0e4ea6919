"""DNS round trips over UDP (with late-answer capture) and TCP, one observation each.

UDP is where on-path injection shows: the GFW's injector answers first with a
forged address and the real resolver's answer arrives later on the same socket,
so after the first response we keep listening (``late_wait``, at least 500 ms)
and record every later response. A query to an address that runs no resolver
(the injection sink) should get no answer at all; any answer there is injected.
TCP goes through dnspython's own exchange; the two transports are compared by
the analysis, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from probe_agent.measure.clock import Clock
from probe_agent.measure.failures import NETWORK_ERRORS, FailureInfo, classify, dns_failure
from probe_agent.measure.netio import Dialer, SocketDialer, recv_exactly
from probe_agent.measure.observations import DNSObservation
from probe_agent.protocol.inputs import Endpoint
from probe_agent.protocol.vocabulary import Failure, Operation

MAX_UDP_RESPONSES = 16  # an answer flood beyond this is counted, not kept


@dataclass(frozen=True, slots=True)
class DNSSettings:
    timeout: float = 5.0
    # How long to keep listening after the first UDP answer for late/duplicate ones.
    late_wait: float = 0.5
    # UDP retransmission interval: one lost datagram must not look like a block.
    retransmit_after: float = 2.0


class DNSProber(Protocol):
    async def query(
        self,
        endpoint: Endpoint,
        transport: str,
        qname: str,
        qtype: str,
        clock: Clock,
        *,
        injection_sink: bool = False,
    ) -> DNSObservation: ...


@dataclass(slots=True)
class _Parsed:
    rcode: str
    answers: list[str]
    cnames: list[str]


def _parse(response: dns.message.Message, rdtype: dns.rdatatype.RdataType) -> _Parsed:
    answers: list[str] = []
    cnames: list[str] = []
    for rrset in response.answer:
        for rd in rrset:
            if rrset.rdtype == rdtype and rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                answers.append(str(rd.address))
            elif rrset.rdtype == dns.rdatatype.CNAME:
                cnames.append(str(rd.target).rstrip("."))
    return _Parsed(dns.rcode.to_text(response.rcode()), answers, cnames)


def _fill(obs: DNSObservation, parsed: _Parsed) -> None:
    obs.rcode = parsed.rcode
    obs.answers = parsed.answers
    obs.cnames = parsed.cnames
    failure = dns_failure(parsed.rcode, len(parsed.answers))
    if failure is not None:
        obs.failure = failure
        obs.failed_operation = Operation.RESOLVE.value


class _Inbox(asyncio.DatagramProtocol):
    """Collects every datagram, tells valid answers from the rest as they arrive.

    Only a valid answer (it parses, and its id, flags and question match our
    query) ends the wait: a spoof with the wrong id or a garbage datagram must
    not stop the retransmissions or shorten the wait for the real answer.
    """

    def __init__(self, query: dns.message.Message) -> None:
        self.query = query
        self.valid: list[dns.message.Message] = []
        self.invalid = 0
        self.overflow = 0
        self.parse_error: BaseException | None = None
        self.error: OSError | None = None
        self.answered = asyncio.Event()  # a valid answer or a socket error

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if len(self.valid) + self.invalid >= MAX_UDP_RESPONSES:
            self.overflow += 1
            return
        try:
            response = dns.message.from_wire(data)
        except NETWORK_ERRORS as exc:  # malformed or truncated: evidence, not a crash
            self.invalid += 1
            self.parse_error = self.parse_error or exc
            return
        if not self.query.is_response(response):
            self.invalid += 1  # another query's answer, or a spoof with the wrong id
            return
        self.valid.append(response)
        self.answered.set()

    def error_received(self, exc: Exception) -> None:
        if self.error is None and isinstance(exc, OSError):
            self.error = exc
        self.answered.set()


class NetworkDNSProber:
    """The real DNS prober: UDP by hand (to see every answer), TCP over the dialer."""

    def __init__(self, settings: DNSSettings, dialer: Dialer | None = None) -> None:
        self.settings = settings
        self.dialer = dialer or SocketDialer()

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
        obs = DNSObservation(
            t0=clock.elapsed(),
            t=0.0,
            resolver=str(endpoint),
            transport=transport,
            query_type=qtype,
            injection_sink=injection_sink,
        )
        rdtype = dns.rdatatype.from_text(qtype)
        query = dns.message.make_query(dns.name.from_text(qname), rdtype)
        try:
            if transport == "udp":
                await self._udp(endpoint, query, rdtype, obs)
            else:
                await self._tcp(endpoint, query, rdtype, obs)
        except NETWORK_ERRORS as exc:
            obs.fail(classify(exc, Operation.RESOLVE))
        obs.t = clock.elapsed()
        return obs

    async def _tcp(
        self,
        endpoint: Endpoint,
        query: dns.message.Message,
        rdtype: dns.rdatatype.RdataType,
        obs: DNSObservation,
    ) -> None:
        wire = query.to_wire()
        async with asyncio.timeout(self.settings.timeout):
            stream = await self.dialer.connect(endpoint.ip, endpoint.port, self.settings.timeout)
            try:
                # RFC 1035 4.2.2: each message prefixed by its two-byte length.
                await stream.send(len(wire).to_bytes(2, "big") + wire)
                obs.queries_sent = 1
                size = int.from_bytes(await recv_exactly(stream, 2), "big")
                data = await recv_exactly(stream, size)
            finally:
                stream.close()
        response = dns.message.from_wire(data)
        if not query.is_response(response):
            msg = "the TCP answer does not match the query"
            raise dns.exception.FormError(msg)  # type: ignore[no-untyped-call]
        obs.responses = 1
        _fill(obs, _parse(response, rdtype))

    async def _udp(
        self,
        endpoint: Endpoint,
        query: dns.message.Message,
        rdtype: dns.rdatatype.RdataType,
        obs: DNSObservation,
    ) -> None:
        loop = asyncio.get_running_loop()
        wire = query.to_wire()
        inbox = _Inbox(query)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: inbox, remote_addr=(endpoint.ip, endpoint.port)
        )
        try:
            first_at = await self._send_until_answer(transport, wire, inbox, obs)
            if first_at is not None:
                # Keep listening: an injected answer races ahead of the real one.
                await asyncio.sleep(max(0.0, first_at + self.settings.late_wait - time.monotonic()))
            elif inbox.error is not None:
                # An ICMP error but no answer: give an injector the same grace period.
                await asyncio.sleep(self.settings.late_wait)
        finally:
            transport.close()
        self._interpret(rdtype, inbox, obs)

    async def _send_until_answer(
        self,
        transport: asyncio.DatagramTransport,
        wire: bytes,
        inbox: _Inbox,
        obs: DNSObservation,
    ) -> float | None:
        """Send (and resend) the query; return the monotonic time of the first datagram."""
        deadline = time.monotonic() + self.settings.timeout
        while True:
            transport.sendto(wire)
            obs.queries_sent += 1
            wait = min(self.settings.retransmit_after, deadline - time.monotonic())
            # asyncio.timeout, not wait_for: wait_for wraps the wait in a task of its own.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.0)):
                    await inbox.answered.wait()
            if inbox.valid:
                return time.monotonic()
            if inbox.error is not None or time.monotonic() >= deadline:
                return None

    def _interpret(
        self, rdtype: dns.rdatatype.RdataType, inbox: _Inbox, obs: DNSObservation
    ) -> None:
        parsed = [_parse(response, rdtype) for response in inbox.valid]
        obs.responses = len(parsed)
        obs.ignored = inbox.invalid + inbox.overflow
        if not parsed:
            if inbox.parse_error is not None:
                obs.fail(classify(inbox.parse_error, Operation.RESOLVE))
            elif inbox.error is not None:
                obs.fail(classify(inbox.error, Operation.RESOLVE))
            else:
                obs.fail(FailureInfo(Failure.GENERIC_TIMEOUT.value, Operation.RESOLVE))
            return
        _fill(obs, parsed[0])
        first_key = (parsed[0].rcode, sorted(parsed[0].answers))
        for later in parsed[1:]:
            for ip in later.answers:
                if ip not in obs.late_answers:
                    obs.late_answers.append(ip)
            if (later.rcode, sorted(later.answers)) != first_key:
                obs.responses_agree = False
