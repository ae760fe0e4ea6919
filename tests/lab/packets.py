"""IPv4, TCP and UDP headers: parsed from queued packets, built for injected ones.

The lab's censors read what NFQUEUE hands them (a raw IPv4 packet) and forge
what a real censor forges: a DNS answer from the resolver's address, a RST from
either end of a connection, a block page from the web server's address. Only
IPv4: the lab's networks are IPv4.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass

PROTO_TCP = 6
PROTO_UDP = 17
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class Packet:
    """A parsed IPv4 packet with its TCP or UDP header, if any."""

    src: str
    dst: str
    proto: int
    sport: int = 0
    dport: int = 0
    seq: int = 0
    ack: int = 0
    flags: int = 0
    payload: bytes = b""

    @property
    def is_syn(self) -> bool:
        return self.proto == PROTO_TCP and self.flags & TCP_SYN and not self.flags & TCP_ACK


def parse(data: bytes) -> Packet | None:
    """Parse an IPv4 packet; None for anything else (IPv6, fragments, truncated)."""
    if len(data) < _IPV4.size or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    _, _, total, _, frag, _, proto, _, src, dst = _IPV4.unpack_from(data)
    if frag & 0x1FFF or len(data) < ihl:
        return None
    body = data[ihl:total]
    base = {"src": socket.inet_ntoa(src), "dst": socket.inet_ntoa(dst), "proto": proto}
    if proto == PROTO_TCP and len(body) >= _TCP.size:
        sport, dport, seq, ack, off, flags, _, _, _ = _TCP.unpack_from(body)
        return Packet(
            **base,
            sport=sport,
            dport=dport,
            seq=seq,
            ack=ack,
            flags=flags,
            payload=body[(off >> 4) * 4 :],
        )
    if proto == PROTO_UDP and len(body) >= _UDP.size:
        sport, dport, _, _ = _UDP.unpack_from(body)
        return Packet(**base, sport=sport, dport=dport, payload=body[_UDP.size :])
    return Packet(**base)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4(src: str, dst: str, proto: int, body: bytes, ident: int = 0) -> bytes:
    header = _IPV4.pack(
        0x45,
        0,
        _IPV4.size + len(body),
        ident,
        0x4000,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    checksum = _checksum(header)
    return header[:10] + struct.pack("!H", checksum) + header[12:] + body


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, length)


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    length = _UDP.size + len(payload)
    header = _UDP.pack(sport, dport, length, 0)
    checksum = _checksum(_pseudo(src, dst, PROTO_UDP, length) + header + payload) or 0xFFFF
    return _ipv4(src, dst, PROTO_UDP, _UDP.pack(sport, dport, length, checksum) + payload)


def tcp(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    *,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    window: int = 64240,
) -> bytes:
    header = _TCP.pack(
        sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, window, 0, 0
    )
    length = len(header) + len(payload)
    checksum = _checksum(_pseudo(src, dst, PROTO_TCP, length) + header + payload)
    header = header[:16] + struct.pack("!H", checksum) + header[18:]
    return _ipv4(src, dst, PROTO_TCP, header + payload)


class RawSender:
    """Sends hand-built IPv4 packets (IP_HDRINCL) from the censor's namespace.

    Locally generated packets take the OUTPUT path, not FORWARD, so the censor
    never queues its own forgeries.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self._sock.setblocking(False)

    def send(self, packet: bytes) -> None:
        dst = socket.inet_ntoa(packet[16:20])
        # A full buffer loses a forgery, as on a real network.
        with contextlib.suppress(OSError):
            self._sock.sendto(packet, (dst, 0))

    def close(self) -> None:
        self._sock.close()
