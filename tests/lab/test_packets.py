"""Packet building and parsing (offline): the censor's forgeries must be valid packets."""

from __future__ import annotations

import struct

from tests.lab import nfqueue, packets


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_udp_round_trip_and_checksums() -> None:
    raw = packets.udp("198.18.0.53", 53, "10.1.0.11", 40000, b"answer")
    assert _sum16(raw[:20]) == 0xFFFF  # IPv4 header checksum verifies
    pseudo = bytes([198, 18, 0, 53, 10, 1, 0, 11, 0, 17]) + struct.pack("!H", 8 + 6)
    assert _sum16(pseudo + raw[20:]) == 0xFFFF  # UDP checksum verifies
    parsed = packets.parse(raw)
    assert parsed is not None
    assert (parsed.src, parsed.sport, parsed.dst, parsed.dport) == (
        "198.18.0.53",
        53,
        "10.1.0.11",
        40000,
    )
    assert parsed.payload == b"answer"


def test_tcp_rst_round_trip() -> None:
    raw = packets.tcp(
        "198.18.1.1", 443, "10.1.0.11", 50000, seq=7, ack=9, flags=packets.TCP_RST | packets.TCP_ACK
    )
    pseudo = bytes([198, 18, 1, 1, 10, 1, 0, 11, 0, 6]) + struct.pack("!H", 20)
    assert _sum16(pseudo + raw[20:]) == 0xFFFF
    parsed = packets.parse(raw)
    assert parsed is not None
    assert parsed.flags == packets.TCP_RST | packets.TCP_ACK
    assert (parsed.seq, parsed.ack) == (7, 9)
    assert not parsed.is_syn


def test_parse_rejects_what_it_cannot_read() -> None:
    assert packets.parse(b"") is None
    assert packets.parse(b"\x60" + b"\0" * 39) is None  # IPv6
    fragment = bytearray(packets.udp("1.2.3.4", 1, "5.6.7.8", 2, b"x"))
    fragment[6:8] = struct.pack("!H", 0x0001)  # a non-first fragment
    assert packets.parse(bytes(fragment)) is None


def test_nfqueue_packet_message_parsing() -> None:
    payload = packets.udp("10.1.0.11", 40000, "198.18.0.53", 53, b"q")
    body = nfqueue._attr(nfqueue.NFQA_PACKET_HDR, struct.pack("!IHB", 42, 0x0800, 2))
    body += nfqueue._attr(nfqueue.NFQA_PAYLOAD, payload)
    queued = nfqueue.NFQueue._parse(body)
    assert queued is not None
    assert queued.packet_id == 42
    assert queued.payload == payload


def test_nfqueue_attributes_are_padded() -> None:
    attr = nfqueue._attr(nfqueue.NFQA_PAYLOAD, b"abc")
    assert len(attr) % 4 == 0
    assert list(nfqueue._attributes(attr)) == [(nfqueue.NFQA_PAYLOAD, b"abc")]
