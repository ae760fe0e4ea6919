"""A simulated network on 127.0.0.0/8: one resolver, one test CA, one server per instance.

Where this sits in the data flow: it is the whole "internet" a probe measures in
an integration test. Every instance gets its own loopback address (127.0.1.1,
127.0.1.2, ...), all on one shared port (the probe's ``--port``); the resolver on
127.0.0.1 holds an A record for each instance, with that instance's DNS
behaviour. ``probe_args`` gives the CLI options that point the probe at it, and
``engine_config`` the same for an in-process ``Engine``.

    async with SimulatedNetwork(tmp_path, [SimInstance("a.example")]) as net:
        ... blockwatch-probe measure a.example *net.probe_args() ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from probe_agent.measure.dns import DNSSettings
from probe_agent.measure.engine import EngineConfig
from probe_agent.measure.http import HTTPSettings
from probe_agent.protocol.inputs import parse_endpoint
from tests.support.dns_server import DNSBehaviour, DNSRecord, DNSServer
from tests.support.pki import TestPKI
from tests.support.tls_servers import InstanceServer, ServerBehaviour

LAB_NETWORK = "127.0.0.0/8"
RESOLVER_IP = "127.0.0.1"
FIRST_INSTANCE = ipaddress.IPv4Address("127.0.1.1")
STEP_TIMEOUT = 2.0


@dataclass(slots=True)
class SimInstance:
    domain: str
    behaviour: ServerBehaviour = ServerBehaviour.MASTODON
    dns: DNSBehaviour = DNSBehaviour.ANSWER
    ip: str | None = None


def instance_ip(index: int) -> str:
    """The *index*-th instance address: 127.0.1.1 ... 127.0.1.254, 127.0.2.1 ..."""
    third, fourth = divmod(index, 254)
    return str(FIRST_INSTANCE + third * 256 + fourth)


def free_tcp_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((ip, 0))
        port: int = sock.getsockname()[1]
        return port


class SimulatedNetwork:
    """The resolver, the PKI and the instance servers; an async context manager."""

    def __init__(
        self, directory: Path, instances: list[SimInstance], port: int | None = None
    ) -> None:
        self.directory = directory
        self.instances = list(instances)
        self.port = port or 0
        self._fixed_port = port is not None
        self.pki = TestPKI.create(directory / "pki")
        self.dns = DNSServer(RESOLVER_IP, 0)
        self.servers: dict[str, InstanceServer] = {}  # by IP
        self._ips: dict[str, str] = {}  # domain -> IP
        next_index = 0
        for inst in self.instances:
            if inst.ip is None:
                inst.ip = instance_ip(next_index)
                next_index += 1
            self._ips[inst.domain.lower()] = inst.ip

    @property
    def resolver(self) -> str:
        return self.dns.endpoint

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_file

    def ip_of(self, domain: str) -> str:
        return self._ips[domain.lower()]

    def server_of(self, domain: str) -> InstanceServer:
        return self.servers[self.ip_of(domain)]

    def probe_args(self) -> list[str]:
        return [
            "--resolver",
            self.resolver,
            "--port",
            str(self.port),
            "--ca-file",
            str(self.ca_file),
            "--lab-network",
            LAB_NETWORK,
            "--timeout",
            f"{STEP_TIMEOUT:g}",
        ]

    def engine_config(self, **overrides: Any) -> EngineConfig:
        """The in-process equivalent of ``probe_args`` (short timeouts, fast retransmits)."""
        config = EngineConfig(
            resolvers=(parse_endpoint(self.resolver),),
            port=self.port,
            ca_file=str(self.ca_file),
            lab_networks=(ipaddress.ip_network(LAB_NETWORK),),
            timeout=STEP_TIMEOUT,
            dns=DNSSettings(timeout=STEP_TIMEOUT, late_wait=0.5, retransmit_after=1.0),
            http=HTTPSettings(timeout=STEP_TIMEOUT),
        )
        return dataclasses.replace(config, **overrides)

    async def start(self) -> None:
        await self.dns.start()
        for inst in self.instances:
            assert inst.ip is not None
            self.dns.records[inst.domain.lower()] = DNSRecord(a=[inst.ip], behaviour=inst.dns)
        for attempt in range(10):
            if not self._fixed_port:
                self.port = free_tcp_port(instance_ip(0))
            try:
                await self._start_servers()
            except OSError as exc:
                await self._stop_servers()
                if self._fixed_port or exc.errno != errno.EADDRINUSE or attempt == 9:
                    await self.dns.stop()
                    raise
                continue
            return

    async def _start_servers(self) -> None:
        by_ip: dict[str, list[SimInstance]] = {}
        for inst in self.instances:
            assert inst.ip is not None
            by_ip.setdefault(inst.ip, []).append(inst)
        for ip, group in by_ip.items():
            behaviours = {inst.behaviour for inst in group}
            if len(behaviours) != 1:
                raise ValueError(f"instances sharing {ip} must share a behaviour: {behaviours}")
            names = [inst.domain.lower() for inst in group]
            server = InstanceServer(ip, self.port, group[0].behaviour, names, self.pki)
            self.servers[ip] = server
            await server.start()

    async def _stop_servers(self) -> None:
        servers, self.servers = list(self.servers.values()), {}
        for server in servers:
            with contextlib.suppress(OSError):
                await server.stop()

    async def stop(self) -> None:
        await self._stop_servers()
        await self.dns.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def run_once_args(net: SimulatedNetwork, state_dir: Path, *collectors: str) -> list[str]:
    args = ["--once", "--state-dir", str(state_dir), *net.probe_args()]
    for url in collectors:
        args += ["--collector", url]
    return args
