"""The censor: a router namespace whose forwarded packets pass through NFQUEUE.

Each censor (the national one, the regional one in front of ``cn-b``) runs this
daemon inside its namespace. Every forwarded packet is queued; the policy
decides, per domain or address, what a real censor would do with it:

- delay every packet (``delay_ms`` each way: 20 ms gives the 40 ms RTT of the
  censored paths) and throttle per destination (more delay, random loss);
- blackhole an address (drop), or answer its SYNs with RST;
- DNS: inject a forged answer (from the GFW's pool) ahead of the real one, which
  still goes through; or inject NXDOMAIN and drop the query. This works for any
  resolver address, including one that runs no resolver (the injection sink);
- TLS: on a ClientHello naming a blocked SNI, RST both ends or drop silently,
  then block the (client, server, port) triple for ``residual_seconds``;
- HTTP: answer a request for a blocked Host with a block page and RST the server;
- TLS interception: redirect an address's port 443 to a local proxy that
  presents a certificate from an untrusted CA (iptables nat REDIRECT).

The policy changes at run time through a unix socket (``control``).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rrset

from tests.lab import packets
from tests.lab.control import serve_until_stopped
from tests.lab.nfqueue import NF_ACCEPT, NF_DROP, NFQueue, QueuedPacket, serve
from tests.support.clienthello import parse_sni

FORGED_POOL = Path(__file__).resolve().parents[2] / "probe_agent" / "protocol" / "data"
BLOCK_PAGE = (
    b"<html><head><title>403</title></head><body>This site is blocked (lab censor).</body></html>"
)


@dataclass
class Policy:
    """What the censor does. Domains match themselves and their subdomains."""

    inside: list[str] = field(default_factory=list)  # CIDRs of the censored side
    delay_ms: float = 0.0
    dns_inject: list[str] = field(default_factory=list)
    dns_nxdomain: list[str] = field(default_factory=list)
    blackhole: list[str] = field(default_factory=list)  # addresses
    rst_connect: list[str] = field(default_factory=list)  # addresses
    sni_rst: list[str] = field(default_factory=list)
    sni_drop: list[str] = field(default_factory=list)
    http_block: list[str] = field(default_factory=list)
    mitm: list[str] = field(default_factory=list)  # addresses whose :443 is intercepted
    throttle: dict[str, dict[str, float]] = field(default_factory=dict)  # ip -> delay_ms, loss
    residual_seconds: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown policy fields: {sorted(unknown)}")
        return cls(**data)


def matches(name: str, domains: list[str]) -> bool:
    name = name.lower().rstrip(".")
    return any(name == d or name.endswith("." + d) for d in domains)


def _load_pool(name: str) -> list[str]:
    lines = (FORGED_POOL / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


class Censor:
    def __init__(self, queue: NFQueue, sender: packets.RawSender, mitm_port: int) -> None:
        self.queue = queue
        self.sender = sender
        self.mitm_port = mitm_port
        self.policy = Policy()
        self.residual: dict[tuple[str, str, int], float] = {}
        self.stats: dict[str, int] = {}
        self._forged_v4 = itertools.cycle(_load_pool("gfw-forged-ips-v4.txt"))
        self._forged_v6 = itertools.cycle(_load_pool("gfw-forged-ips-v6.txt"))
        self._inside = [ip_network("0.0.0.0/32")]
        self._loop = asyncio.get_running_loop()
        self._random = random.Random(7)

    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self._inside = [ip_network(c) for c in policy.inside]
        if not policy.residual_seconds:
            self.residual.clear()
        self._apply_mitm(policy.mitm, policy.inside)

    def _apply_mitm(self, addresses: list[str], inside: list[str]) -> None:
        subprocess.run(["iptables", "-t", "nat", "-F", "BW_MITM"], check=True)
        # Only connections from the censored side: the internet's own traffic (the
        # collector's control vantage) crosses this namespace's bridge too.
        for ip, source in ((ip, source) for ip in addresses for source in inside):
            subprocess.run(
                [
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "BW_MITM",
                    "-s",
                    source,
                    "-d",
                    ip,
                    "-p",
                    "tcp",
                    "--dport",
                    "443",
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    str(self.mitm_port),
                ],
                check=True,
            )

    def _is_inside(self, ip: str) -> bool:
        addr = ip_address(ip)
        return any(addr in net for net in self._inside)

    async def control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "set":
            self.set_policy(Policy.from_dict(request["policy"]))
            return {"ok": True}
        if op == "get":
            return {"ok": True, "policy": asdict(self.policy)}
        if op == "stats":
            return {"ok": True, "stats": self.stats, "residual": len(self.residual)}
        return {"ok": False, "error": f"unknown op {op!r}"}

    # -- the verdict -----------------------------------------------------------

    def handle(self, queued: QueuedPacket) -> None:
        self.count("packets")
        pkt = packets.parse(queued.payload)
        verdict = NF_ACCEPT if pkt is None else self._decide(pkt)
        if verdict == NF_DROP:
            self.count("dropped")
            self.queue.verdict(queued.packet_id, NF_DROP)
            return
        delay = self.policy.delay_ms
        if pkt is not None:
            for ip in (pkt.src, pkt.dst):
                shaping = self.policy.throttle.get(ip)
                if shaping:
                    if self._random.random() < shaping.get("loss", 0.0):
                        self.count("lost")
                        self.queue.verdict(queued.packet_id, NF_DROP)
                        return
                    delay += shaping.get("delay_ms", 0.0)
        if delay > 0:
            self._loop.call_later(delay / 1000, self.queue.verdict, queued.packet_id, NF_ACCEPT)
        else:
            self.queue.verdict(queued.packet_id, NF_ACCEPT)

    def _decide(self, pkt: packets.Packet) -> int:
        p = self.policy
        if pkt.src in p.blackhole or pkt.dst in p.blackhole:
            return NF_DROP
        if not self._is_inside(pkt.src):
            return NF_ACCEPT  # the censor filters what leaves the censored side
        if pkt.proto == packets.PROTO_UDP and pkt.dport == 53:
            return self._dns(pkt)
        if pkt.proto != packets.PROTO_TCP:
            return NF_ACCEPT
        triple = (pkt.src, pkt.dst, pkt.dport)
        expiry = self.residual.get(triple)
        if expiry is not None:
            if time.monotonic() < expiry:
                self.count("residual")
                if pkt.is_syn:
                    self._rst_to_client(pkt)
                return NF_DROP
            del self.residual[triple]
        if pkt.is_syn and pkt.dst in p.rst_connect:
            self._rst_to_client(pkt)
            return NF_DROP
        if pkt.payload and pkt.dport == 80:
            return self._http(pkt)
        if pkt.payload and pkt.payload[0] == 22:  # a TLS handshake record
            return self._tls(pkt, triple)
        return NF_ACCEPT

    def _dns(self, pkt: packets.Packet) -> int:
        try:
            query = dns.message.from_wire(pkt.payload)
            question = query.question[0]
        except Exception:  # not DNS, or garbage: a censor lets it through
            return NF_ACCEPT
        name = question.name.to_text()
        if matches(name, self.policy.dns_nxdomain):
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.NXDOMAIN)
            self._inject_udp(pkt, response.to_wire())
            self.count("dns_nxdomain")
            return NF_DROP
        if matches(name, self.policy.dns_inject) and question.rdtype in (1, 28):
            response = dns.message.make_response(query)
            forged = next(self._forged_v4 if question.rdtype == 1 else self._forged_v6)
            rtype = "A" if question.rdtype == 1 else "AAAA"
            response.answer.append(dns.rrset.from_text(question.name, 300, "IN", rtype, forged))
            self._inject_udp(pkt, response.to_wire())
            self.count("dns_injected")
        return NF_ACCEPT  # the real query goes on: its answer arrives later

    def _tls(self, pkt: packets.Packet, triple: tuple[str, str, int]) -> int:
        try:
            # The record header is 5 bytes; the ClientHello message follows.
            sni = parse_sni(pkt.payload[5:])
        except (ValueError, IndexError):
            return NF_ACCEPT
        if sni is None:
            return NF_ACCEPT
        rst, drop = matches(sni, self.policy.sni_rst), matches(sni, self.policy.sni_drop)
        if not (rst or drop):
            return NF_ACCEPT
        if rst:
            self._rst_to_client(pkt)
            self._rst_to_server(pkt)
        self.count("sni_rst" if rst else "sni_drop")
        if self.policy.residual_seconds > 0:
            self.residual[triple] = time.monotonic() + self.policy.residual_seconds
        return NF_DROP

    def _http(self, pkt: packets.Packet) -> int:
        head = pkt.payload.split(b"\r\n\r\n", 1)[0].decode("latin-1", "replace")
        host = ""
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "host":
                host = value.strip().split(":")[0]
        if not host or not matches(host, self.policy.http_block):
            return NF_ACCEPT
        page = (
            f"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: "
            f"{len(BLOCK_PAGE)}\r\nConnection: close\r\n\r\n"
        ).encode() + BLOCK_PAGE
        self.sender.send(
            packets.tcp(
                pkt.dst,
                pkt.dport,
                pkt.src,
                pkt.sport,
                seq=pkt.ack,
                ack=pkt.seq + len(pkt.payload),
                flags=packets.TCP_PSH | packets.TCP_ACK | packets.TCP_FIN,
                payload=page,
            )
        )
        self._rst_to_server(pkt)
        self.count("http_block_page")
        return NF_DROP

    def _inject_udp(self, pkt: packets.Packet, payload: bytes) -> None:
        self.sender.send(packets.udp(pkt.dst, pkt.dport, pkt.src, pkt.sport, payload))

    def _rst_to_client(self, pkt: packets.Packet) -> None:
        advance = len(pkt.payload) + (1 if pkt.is_syn else 0)
        seq = pkt.ack if pkt.flags & packets.TCP_ACK else 0
        self.sender.send(
            packets.tcp(
                pkt.dst,
                pkt.dport,
                pkt.src,
                pkt.sport,
                seq=seq,
                ack=pkt.seq + advance,
                flags=packets.TCP_RST | packets.TCP_ACK,
            )
        )

    def _rst_to_server(self, pkt: packets.Packet) -> None:
        self.sender.send(
            packets.tcp(
                pkt.src,
                pkt.sport,
                pkt.dst,
                pkt.dport,
                seq=pkt.seq,
                ack=0,
                flags=packets.TCP_RST,
            )
        )


async def main(argv: list[str]) -> None:
    """``censor.py CONTROL_SOCKET QUEUE_NUM MITM_PORT MITM_CERT_DIR``: run until SIGTERM."""
    from tests.lab.mitm import start_mitm

    control_path, queue_num, mitm_port, cert_dir = argv[0], int(argv[1]), int(argv[2]), argv[3]
    queue = NFQueue(queue_num)
    sender = packets.RawSender()
    censor = Censor(queue, sender, mitm_port)
    serve(queue, censor.handle)
    mitm = await start_mitm(mitm_port, Path(cert_dir))
    try:
        await serve_until_stopped(
            control_path, censor.control, (KeyError, TypeError, subprocess.CalledProcessError)
        )
    finally:
        mitm.close()
        asyncio.get_running_loop().remove_reader(queue.fileno())
        queue.close()
        sender.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
