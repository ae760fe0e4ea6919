"""A small pure-Python reader of the nfnetlink queue protocol (NFQUEUE).

The lab's censors see every forwarded packet through an iptables ``NFQUEUE``
rule and decide its fate here: accept now, accept later (emulated delay, since
this kernel has no netem qdisc), drop (blackhole, loss), or accept after
injecting forged packets ahead of it. Binding libnetfilter_queue through a
compiled package does not install everywhere, and the protocol is small:
netlink messages of type ``(NFNL_SUBSYS_QUEUE << 8) | msg`` carrying a
``nfgenmsg`` header and attributes (linux/netfilter/nfnetlink_queue.h).

Verdicts may be given in any order, which is what lets a packet be held for
20 ms while the ones behind it pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_PAYLOAD = 10
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_PACKET = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
NF_DROP = 0
NF_ACCEPT = 1

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (big endian)
_NLATTR = struct.Struct("=HH")


class NFQueueError(OSError):
    """The kernel refused a queue command (no permission, queue taken, no module)."""


@dataclass(frozen=True, slots=True)
class QueuedPacket:
    packet_id: int
    payload: bytes  # the IP packet, from the IP header on


def _attr(kind: int, data: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _message(msg: int, queue: int, attrs: bytes, flags: int, seq: int) -> bytes:
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, queue) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def _attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size:
            return
        yield kind & 0x7FFF, data[offset + _NLATTR.size : offset + length]
        offset += (length + 3) & ~3


class NFQueue:
    """One bound queue: ``packets()`` yields queued packets, ``verdict()`` releases them."""

    def __init__(self, queue_num: int, maxlen: int = 4096) -> None:
        self.queue_num = queue_num
        self._seq = 0
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            self._sock.bind((0, 0))
            self._command(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
            self._command(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0xFFFF, NFQNL_COPY_PACKET)))
            self._command(_attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)))
        except BaseException:
            self._sock.close()
            raise
        self._sock.setblocking(False)

    def _command(self, attrs: bytes) -> None:
        self._seq += 1
        self._sock.send(
            _message(NFQNL_MSG_CONFIG, self.queue_num, attrs, NLM_F_REQUEST | NLM_F_ACK, self._seq)
        )
        reply = self._sock.recv(65536)
        _, kind, _, _, _ = _NLMSGHDR.unpack_from(reply)
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", reply, _NLMSGHDR.size)
            if code != 0:
                raise NFQueueError(-code, f"nfqueue config refused: {os.strerror(-code)}")

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_packets(self) -> list[QueuedPacket]:
        """Every packet waiting on the socket now (non-blocking); [] when none."""
        found: list[QueuedPacket] = []
        while True:
            try:
                data = self._sock.recv(1 << 17)
            except BlockingIOError:
                return found
            except OSError:  # ENOBUFS: the kernel dropped messages; go on with the rest
                return found
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    break
                if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    body = data[offset + _NLMSGHDR.size + _NFGENMSG.size : offset + length]
                    packet = self._parse(body)
                    if packet is not None:
                        found.append(packet)
                offset += (length + 3) & ~3

    @staticmethod
    def _parse(body: bytes) -> QueuedPacket | None:
        packet_id: int | None = None
        payload = b""
        for kind, value in _attributes(body):
            if kind == NFQA_PACKET_HDR:
                (packet_id,) = struct.unpack_from("!I", value)
            elif kind == NFQA_PAYLOAD:
                payload = value
        return None if packet_id is None else QueuedPacket(packet_id, payload)

    def verdict(self, packet_id: int, verdict: int, payload: bytes | None = None) -> None:
        attrs = _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
        if payload is not None:
            attrs += _attr(NFQA_PAYLOAD, payload)
        self._seq += 1
        with contextlib.suppress(BlockingIOError):
            self._sock.send(
                _message(NFQNL_MSG_VERDICT, self.queue_num, attrs, NLM_F_REQUEST, self._seq)
            )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.setblocking(True)
            self._command(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, 0)))
        self._sock.close()


def serve(queue: NFQueue, handler: Callable[[QueuedPacket], None]) -> asyncio.Handle | None:
    """Call *handler* for every packet, from the running loop's reader callback."""
    loop = asyncio.get_running_loop()

    def on_readable() -> None:
        for packet in queue.read_packets():
            handler(packet)

    loop.add_reader(queue.fileno(), on_readable)
    return None
