"""The UDP response interpretation: first answer wins, later ones are evidence."""

from __future__ import annotations

import dns.message
import dns.rdatatype
import dns.rrset

from probe_agent.measure.dns import DNSSettings, NetworkDNSProber, _Inbox
from probe_agent.measure.observations import DNSObservation
from probe_agent.protocol.vocabulary import UNKNOWN_FAILURE_PREFIX, Failure

QNAME = "alive.bar."


def _query() -> dns.message.QueryMessage:
    return dns.message.make_query(QNAME, "A")


def _answer(query: dns.message.Message, *ips: str, rcode: int = 0, qid: int | None = None) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for ip in ips:
        response.answer.append(dns.rrset.from_text(QNAME, 60, "IN", "A", ip))
    if qid is not None:
        response.id = qid
    return response.to_wire()


def _interpret(query: dns.message.Message, datagrams: list[bytes]) -> DNSObservation:
    inbox = _Inbox(query)
    for data in datagrams:
        inbox.datagram_received(data, ("192.0.2.53", 53))
    obs = DNSObservation(t0=0, t=0, resolver="192.0.2.53:53", transport="udp", query_type="A")
    NetworkDNSProber(DNSSettings())._interpret(dns.rdatatype.A, inbox, obs)
    return obs


def test_single_answer() -> None:
    q = _query()
    obs = _interpret(q, [_answer(q, "45.76.1.2")])
    assert obs.answers == ["45.76.1.2"]
    assert obs.rcode == "NOERROR"
    assert obs.failure is None
    assert obs.responses_agree
    assert obs.late_answers == []


def test_forged_first_real_later() -> None:
    q = _query()
    obs = _interpret(q, [_answer(q, "8.7.198.45"), _answer(q, "45.76.1.2")])
    assert obs.answers == ["8.7.198.45"]
    assert obs.late_answers == ["45.76.1.2"]
    assert obs.responses == 2
    assert not obs.responses_agree


def test_identical_duplicates_agree() -> None:
    q = _query()
    obs = _interpret(q, [_answer(q, "45.76.1.2"), _answer(q, "45.76.1.2")])
    assert obs.responses == 2
    assert obs.responses_agree


def test_wrong_id_is_ignored() -> None:
    q = _query()
    obs = _interpret(q, [_answer(q, "8.7.198.45", qid=(q.id + 1) % 65536), _answer(q, "45.76.1.2")])
    assert obs.answers == ["45.76.1.2"]
    assert obs.responses == 1
    assert obs.ignored == 1


def test_wrong_id_does_not_end_the_wait() -> None:
    q = _query()
    inbox = _Inbox(q)
    inbox.datagram_received(_answer(q, "8.7.198.45", qid=(q.id + 1) % 65536), ("192.0.2.53", 53))
    inbox.datagram_received(b"garbage", ("192.0.2.53", 53))
    assert not inbox.answered.is_set()
    inbox.datagram_received(_answer(q, "45.76.1.2"), ("192.0.2.53", 53))
    assert inbox.answered.is_set()


def test_only_garbage_is_unknown_failure() -> None:
    obs = _interpret(_query(), [b"\x12\x34\x00"])
    assert obs.failure is not None
    assert obs.failure.startswith(UNKNOWN_FAILURE_PREFIX + "malformed DNS message")


def test_nothing_is_timeout() -> None:
    assert _interpret(_query(), []).failure == Failure.GENERIC_TIMEOUT.value


def test_refused_by_icmp() -> None:
    inbox = _Inbox(_query())
    inbox.error_received(ConnectionRefusedError(111, "Connection refused"))
    obs = DNSObservation(t0=0, t=0, resolver="192.0.2.53:53", transport="udp", query_type="A")
    NetworkDNSProber(DNSSettings())._interpret(dns.rdatatype.A, inbox, obs)
    assert obs.failure == Failure.CONNECTION_REFUSED.value


def test_nxdomain_then_answer_disagree() -> None:
    q = _query()
    obs = _interpret(q, [_answer(q, rcode=3), _answer(q, "45.76.1.2")])
    assert obs.failure == Failure.DNS_NXDOMAIN.value
    assert obs.late_answers == ["45.76.1.2"]
    assert not obs.responses_agree
