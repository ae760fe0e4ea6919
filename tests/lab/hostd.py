"""The lab's servers, one daemon per host namespace, switchable at run time.

Roles (any mix, from a JSON config written by the lab):

- ``authoritative``: the lab zone's authoritative server (``tests.support``'s
  DNSServer); it can be stopped and restarted (the "authoritative DNS down"
  outage);
- ``resolvers``: forwarding resolvers, e.g. the internet's recursive resolver
  (upstream: the authoritative server) and each censored network's ISP resolver
  (upstream: the recursive resolver, through the censors, so that it too gets
  the injector's forged answers first, as ISP caches do). An ISP resolver can
  answer chosen names with bogons itself (127.0.0.1, 10.x);
- ``instances``: HTTPS fediverse instances and the plain-HTTP site, each with a
  behaviour that can change (healthy, answering 500, down);
- ``doh``: a DNS-over-HTTPS resolver abroad (RFC 8484, POST and GET on
  ``/dns-query``, a certificate for its IP address), answering from the
  internet's recursive resolver;
- ``socks``: a SOCKS5 proxy abroad (``tests.support``'s), which counts the
  destinations it was asked for.

Control: one JSON request per connection on a unix socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rrset
from aiohttp import web

from tests.lab.control import serve_until_stopped
from tests.lab.labpki import load_pki
from tests.support.dns_server import DNSRecord, DNSServer
from tests.support.pki import TestPKI
from tests.support.socks_proxy import Socks5Proxy
from tests.support.tls_servers import InstanceServer, ServerBehaviour

UPSTREAM_TIMEOUT = 2.0


class Forwarder:
    """A forwarding resolver on UDP and TCP port 53: first answer wins, SERVFAIL on failure."""

    def __init__(self, ip: str, upstream: str) -> None:
        self.ip = ip
        self.upstream = upstream
        self.bogons: dict[str, str] = {}  # name -> address answered locally
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        forwarder = self

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                task = loop.create_task(forwarder._answer_udp(data, addr))
                forwarder._tasks.add(task)
                task.add_done_callback(forwarder._tasks.discard)

        self._udp, _ = await loop.create_datagram_endpoint(Proto, local_addr=(self.ip, 53))
        self._tcp = await asyncio.start_server(self._serve_tcp, self.ip, 53)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def resolve(self, data: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        name = query.question[0].name.to_text().rstrip(".").lower() if query.question else ""
        bogon = self.bogons.get(name)
        if bogon is not None:
            response = dns.message.make_response(query)
            rdtype = query.question[0].rdtype
            if (rdtype == 1) == (":" not in bogon):
                rtype = "AAAA" if ":" in bogon else "A"
                response.answer.append(
                    dns.rrset.from_text(query.question[0].name, 60, "IN", rtype, bogon)
                )
            return response.to_wire()
        try:
            answer = await dns.asyncquery.udp(query, self.upstream, timeout=UPSTREAM_TIMEOUT)
        except (dns.exception.DNSException, OSError):
            failed = dns.message.make_response(query)
            failed.set_rcode(dns.rcode.SERVFAIL)
            return failed.to_wire()
        answer.id = query.id
        return answer.to_wire()

    async def _answer_udp(self, data: bytes, addr: tuple[str, int]) -> None:
        wire = await self.resolve(data)
        if wire is not None and self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(wire, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")
            wire = await self.resolve(await reader.readexactly(size))
            if wire is not None:
                writer.write(len(wire).to_bytes(2, "big") + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


class DoHResolver:
    """RFC 8484 on https://IP/dns-query, answering through a forwarding resolver."""

    def __init__(self, ip: str, upstream: str, pki: TestPKI) -> None:
        self.ip = ip
        self.forwarder = Forwarder(ip, upstream)
        self.context = pki.server_context([ip])
        self.queries = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/dns-query", self._post)
        app.router.add_get("/dns-query", self._get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.ip, 443, ssl_context=self.context).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        if request.content_type != "application/dns-message":
            return web.Response(status=415)
        return await self._answer(await request.read())

    async def _get(self, request: web.Request) -> web.Response:
        encoded = request.query.get("dns", "")
        try:
            data = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except ValueError:
            return web.Response(status=400)
        return await self._answer(data)

    async def _answer(self, data: bytes) -> web.Response:
        self.queries += 1
        wire = await self.forwarder.resolve(data)
        if wire is None:
            return web.Response(status=400)
        return web.Response(body=wire, content_type="application/dns-message")


class Host:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.pki = load_pki(Path(config["pki_dir"]))
        self.authoritative: DNSServer | None = None
        self.resolvers: dict[str, Forwarder] = {}
        self.instances: dict[str, InstanceServer] = {}
        self.doh: DoHResolver | None = None
        self.socks: Socks5Proxy | None = None

    async def start(self) -> None:
        if "authoritative" in self.config:
            await self.start_authoritative()
        for spec in self.config.get("resolvers", []):
            forwarder = Forwarder(spec["ip"], spec["upstream"])
            await forwarder.start()
            self.resolvers[spec["ip"]] = forwarder
        for spec in self.config.get("instances", []):
            await self.set_instance(spec["domain"], spec["behaviour"])
        if "doh" in self.config:
            spec = self.config["doh"]
            self.doh = DoHResolver(spec["ip"], spec["upstream"], self.pki)
            await self.doh.start()
        if "socks" in self.config:
            spec = self.config["socks"]
            self.socks = Socks5Proxy(spec["ip"], spec["port"])
            await self.socks.__aenter__()

    async def start_authoritative(self) -> None:
        spec = self.config["authoritative"]
        server = DNSServer(spec["ip"], 53)
        for name, a in spec["records"].items():
            server.records[name] = DNSRecord(a=list(a))
        await server.start()
        self.authoritative = server

    async def set_instance(self, domain: str, behaviour: str) -> None:
        spec = next(s for s in self.config["instances"] if s["domain"] == domain)
        current = self.instances.get(domain)
        if current is not None and current.behaviour == behaviour:
            return
        old = self.instances.pop(domain, None)
        if old is not None:
            await old.stop()
        server = InstanceServer(
            spec["ip"], spec["port"], ServerBehaviour(behaviour), spec["names"], self.pki
        )
        await server.start()
        self.instances[domain] = server

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "instance":
            await self.set_instance(request["domain"], request["behaviour"])
        elif op == "authoritative":
            if request["up"] and self.authoritative is None:
                await self.start_authoritative()
            elif not request["up"] and self.authoritative is not None:
                await self.authoritative.stop()
                self.authoritative = None
        elif op == "bogons":
            self.resolvers[request["resolver"]].bogons = dict(request["answers"])
        elif op == "counts":  # what the DoH resolver and the proxy were asked
            return {
                "ok": True,
                "doh_queries": self.doh.queries if self.doh is not None else 0,
                "socks": [list(d) for d in self.socks.destinations] if self.socks else [],
            }
        elif op == "ping":
            pass
        else:
            return {"ok": False, "error": f"unknown op {op!r}"}
        return {"ok": True}

    async def stop(self) -> None:
        if self.doh is not None:
            await self.doh.stop()
        if self.socks is not None:
            await self.socks.__aexit__(None, None, None)
        for server in self.instances.values():
            await server.stop()
        for forwarder in self.resolvers.values():
            await forwarder.stop()
        if self.authoritative is not None:
            await self.authoritative.stop()


async def main(argv: list[str]) -> None:
    """``hostd.py CONFIG_JSON``: serve until SIGTERM."""
    config = json.loads(Path(argv[0]).read_text())
    host = Host(config)
    await host.start()

    try:
        await serve_until_stopped(
            config["control"], host.handle, (KeyError, StopIteration, OSError)
        )
    finally:
        await host.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
