"""The measurement engine: one flow per domain, one flow per resolved address.

For each domain: every DNS query (each resolver x UDP/TCP x A/AAAA, plus the
injection sinks) runs at once; then every resolved address gets its own flow:

1. TCP connect (the ``tcp`` observation), then on that connection a handshake
   with the decoy SNI (the SNI control), then close;
2. a new connection and a handshake with the instance's SNI, validated; then, on
   that same connection, the HTTP round trips to the Mastodon API.

The decoy goes first because after an SNI trigger the GFW blocks the whole
(client, server, port) triple for 120-180 s: a decoy measured after the real
name would fail from residue and make SNI filtering look like IP blocking.

Addresses that are bogons (a stub resolver would connect to the volunteer's own
machine or LAN) or in the forged pool (already evidence; often unrelated
services) are not dialled. Domains run under ``concurrency`` workers; an
unexpected error in one domain is reported for that domain and the others go on.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from probe_agent import __version__
from probe_agent.measure.clock import Clock, MonotonicClock
from probe_agent.measure.dns import DNSProber, DNSSettings, NetworkDNSProber
from probe_agent.measure.failures import NETWORK_ERRORS, classify
from probe_agent.measure.hints import compute_hints
from probe_agent.measure.http import HTTPSettings, fetch_instance_api
from probe_agent.measure.netio import Dialer, SocketDialer, Stream
from probe_agent.measure.observations import (
    DNSObservation,
    HTTPObservation,
    Measurement,
    TCPObservation,
    TLSObservation,
)
from probe_agent.measure.tls import TLSContexts, tls_handshake
from probe_agent.protocol.addresses import IPNetwork, is_bogon, is_forged
from probe_agent.protocol.inputs import (
    Endpoint,
    normalize_domain,
    parse_endpoint,
    parse_network,
    system_resolvers,
)
from probe_agent.protocol.times import utc_now_rfc3339
from probe_agent.protocol.vocabulary import Operation

SOFTWARE = {"name": "blockwatch-probe", "version": __version__}
QUERY_TYPES = ("A", "AAAA")
TRANSPORTS = ("udp", "tcp")
DEFAULT_DECOY_SNI = "example.com"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    resolvers: tuple[Endpoint, ...]
    injection_sinks: tuple[Endpoint, ...] = ()
    port: int = 443
    scheme: str = "https"
    decoy_sni: str = DEFAULT_DECOY_SNI
    timeout: float = 10.0
    ca_file: str | None = None
    max_addresses: int = 8
    # Networks treated as globally routable (tests and demos on loopback).
    lab_networks: tuple[IPNetwork, ...] = ()
    dns: DNSSettings = field(default_factory=DNSSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)


@dataclass(frozen=True, slots=True)
class DomainError:
    """A domain the engine could not measure because of an error of ours, not the network's."""

    domain: str
    error: BaseException


Result = Measurement | DomainError


class StopMeasuring(Exception):
    """Raised by a result callback to end ``measure_all`` early (its reader went away)."""


@dataclass(slots=True)
class _AddressResult:
    tcp: list[TCPObservation] = field(default_factory=list)
    tls: list[TLSObservation] = field(default_factory=list)
    http: list[HTTPObservation] = field(default_factory=list)


def select_addresses(
    dns: Iterable[DNSObservation], limit: int, lab_networks: tuple[IPNetwork, ...] = ()
) -> list[str]:
    """Addresses worth dialling, in answer order: first answers, then late ones."""
    chosen: list[str] = []
    for obs in dns:
        if obs.injection_sink:
            continue
        for ip in [*obs.answers, *obs.late_answers]:
            if ip in chosen or is_bogon(ip, lab_networks) or is_forged(ip):
                continue
            chosen.append(ip)
    return chosen[:limit]


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        *,
        dns_prober: DNSProber | None = None,
        dialer: Dialer | None = None,
        tls_contexts: TLSContexts | None = None,
        clock_factory: Callable[[], Clock] = MonotonicClock,
        address_gate: Callable[[str, int], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        # Called before an address is first dialled in a measurement: the daemon's
        # retest spacing (the GFW's residual blocking of a triggered triple).
        self.address_gate = address_gate
        self.dns = dns_prober or NetworkDNSProber(config.dns)
        self.dialer = dialer or SocketDialer()
        self.tls = tls_contexts or TLSContexts.create(config.ca_file)
        self.clock_factory = clock_factory

    async def measure(self, domain: str, port: int | None = None) -> Measurement:
        """Measure one (already validated, ASCII) domain, at *port* (default: the config's)."""
        cfg = self.config
        port = port or cfg.port
        clock = self.clock_factory()
        m = Measurement(
            measurement_id=str(uuid.uuid4()),
            domain=domain,
            port=port,
            scheme=cfg.scheme,
            started_at=utc_now_rfc3339(),
            software=dict(SOFTWARE),
            decoy_sni=cfg.decoy_sni if cfg.scheme == "https" else None,
        )
        flows: dict[str, asyncio.Task[_AddressResult]] = {}
        async with asyncio.TaskGroup() as tg:

            def dial_new(obs: DNSObservation) -> None:
                # Dial as soon as any answer names an address: TCP answers come
                # back long before the UDP queries finish their late-answer window.
                for ip in select_addresses([obs], cfg.max_addresses, cfg.lab_networks):
                    if ip not in flows and len(flows) < cfg.max_addresses:
                        flows[ip] = tg.create_task(self._address_flow(domain, ip, port, clock))

            queries = [
                tg.create_task(self._query(q, domain, clock, dial_new)) for q in self._plan()
            ]
        m.dns = [query.result() for query in queries]
        # Report in answer order (first answers, then late ones), whatever order they came in.
        for ip in select_addresses(m.dns, sys.maxsize, cfg.lab_networks):
            if ip not in flows:
                continue
            result = flows[ip].result()
            m.tcp += result.tcp
            m.tls += result.tls
            m.http += result.http
        m.hints = compute_hints(m.dns, m.tls, cfg.lab_networks)
        m.runtime = clock.elapsed()
        return m

    def _plan(self) -> list[tuple[Endpoint, str, str, bool]]:
        """Every DNS query of a measurement: (resolver, transport, type, injection sink)."""
        plan = [
            (ep, transport, qtype, False)
            for ep in self.config.resolvers
            for transport in TRANSPORTS
            for qtype in QUERY_TYPES
        ]
        plan += [
            (ep, "udp", qtype, True) for ep in self.config.injection_sinks for qtype in QUERY_TYPES
        ]
        return plan

    async def _query(
        self,
        planned: tuple[Endpoint, str, str, bool],
        domain: str,
        clock: Clock,
        on_answer: Callable[[DNSObservation], None],
    ) -> DNSObservation:
        endpoint, transport, qtype, sink = planned
        obs = await self.dns.query(endpoint, transport, domain, qtype, clock, injection_sink=sink)
        on_answer(obs)
        return obs

    async def _connect(
        self, ip: str, port: int, clock: Clock
    ) -> tuple[TCPObservation, Stream | None]:
        obs = TCPObservation(t0=clock.elapsed(), t=0.0, ip=ip, port=port)
        try:
            stream = await self.dialer.connect(ip, port, self.config.timeout)
        except NETWORK_ERRORS as exc:
            obs.fail(classify(exc, Operation.CONNECT))
            obs.t = clock.elapsed()
            return obs, None
        obs.t = clock.elapsed()
        return obs, stream

    async def _address_flow(self, domain: str, ip: str, port: int, clock: Clock) -> _AddressResult:
        """One address's steps: TCP, then the decoy handshake, a new connection, the
        instance's handshake and HTTP over it (``https``), or HTTP alone (``http``)."""
        out = _AddressResult()
        if self.address_gate is not None:
            await self.address_gate(ip, port)
        tcp_obs, stream = await self._connect(ip, port, clock)
        out.tcp.append(tcp_obs)
        if stream is None:
            return out
        if self.config.scheme != "https":
            try:
                out.http += await self._fetch_api(
                    stream, self.config.scheme, domain, ip, port, clock
                )
            finally:
                stream.close()
            return out
        try:
            decoy_obs, _ = await self._handshake(
                stream, ip, port, self.config.decoy_sni, clock, decoy=True
            )
            out.tls.append(decoy_obs)
        finally:
            stream.close()
        tls_obs, http_obs = await self._instance_handshake(domain, ip, port, clock)
        out.tls.append(tls_obs)
        out.http += http_obs
        return out

    async def _instance_handshake(
        self, domain: str, ip: str, port: int, clock: Clock
    ) -> tuple[TLSObservation, list[HTTPObservation]]:
        """The handshake with the instance's name on a fresh connection (the decoy's is
        spent), then the API round trip over it when the handshake worked."""
        tcp_obs, stream = await self._connect(ip, port, clock)
        if stream is None:
            # No ClientHello was sent: the handshake reports the connect's failure.
            return TLSObservation(
                t0=tcp_obs.t0,
                t=tcp_obs.t,
                ip=ip,
                port=port,
                sni=domain,
                failure=tcp_obs.failure,
                failed_operation=tcp_obs.failed_operation,
            ), []
        try:
            tls_obs, tls_stream = await self._handshake(
                stream, ip, port, domain, clock, decoy=False
            )
            if tls_stream is None:
                return tls_obs, []
            return tls_obs, await self._fetch_api(tls_stream, "https", domain, ip, port, clock)
        finally:
            stream.close()

    async def _handshake(
        self, stream: Stream, ip: str, port: int, sni: str, clock: Clock, *, decoy: bool
    ) -> tuple[TLSObservation, Stream | None]:
        # The caller says which handshake this is: an instance may be named like the decoy.
        return await tls_handshake(
            stream,
            ip=ip,
            port=port,
            sni=sni,
            contexts=self.tls,
            decoy=decoy,
            timeout=self.config.timeout,
            clock=clock,
        )

    async def _fetch_api(
        self, stream: Stream, scheme: str, domain: str, ip: str, port: int, clock: Clock
    ) -> list[HTTPObservation]:
        return await fetch_instance_api(
            stream,
            scheme=scheme,
            domain=domain,
            ip=ip,
            port=port,
            settings=self.config.http,
            clock=clock,
        )

    async def measure_all(
        self,
        domains: Iterable[str],
        concurrency: int,
        on_result: Callable[[Result], None],
        ports: Mapping[str, int] | None = None,
        jitter: float = 0.0,
    ) -> None:
        """Measure every domain with at most *concurrency* at once, reporting each result.

        *ports*: the domains measured at another port than the config's (a collector
        served on its own port is measured there, like a target). *jitter*: each
        domain waits a random 0 to *jitter* seconds before it starts, so that a round's
        connections do not leave in the same rhythm every time (the daemon's rounds)."""
        pending = iter(domains)
        stopped = False
        draw = random.SystemRandom()

        async def worker() -> None:
            nonlocal stopped
            for domain in pending:
                if stopped:
                    return
                if jitter > 0:
                    await asyncio.sleep(draw.uniform(0, jitter))
                try:
                    result: Result = await self.measure(domain, (ports or {}).get(domain))
                except Exception as exc:  # our bug: report it for this domain, go on
                    result = DomainError(domain, exc)
                if stopped:
                    return
                try:
                    on_result(result)
                except StopMeasuring:
                    stopped = True  # the others finish what they hold, then stop
                    return

        async with asyncio.TaskGroup() as tg:
            for _ in range(max(1, concurrency)):
                tg.create_task(worker())


class Scheme(StrEnum):
    HTTPS = "https"
    HTTP = "http"


def engine_config(
    *,
    resolver: list[str] | None,
    injection_sink: list[str] | None,
    ca_file: Path | None,
    port: int,
    scheme: Scheme,
    timeout: float,
    decoy_sni: str,
    lab_network: list[str] | None,
) -> EngineConfig:
    """The engine's configuration from its options; raises InvalidInputError."""
    resolvers = (
        tuple(parse_endpoint(r) for r in resolver) if resolver else tuple(system_resolvers())
    )
    sinks = tuple(parse_endpoint(s) for s in injection_sink or ())
    decoy = normalize_domain(decoy_sni)
    lab_networks = tuple(parse_network(n) for n in lab_network or ())
    return EngineConfig(
        resolvers=resolvers,
        injection_sinks=sinks,
        port=port,
        scheme=scheme.value,
        decoy_sni=decoy,
        timeout=timeout,
        ca_file=str(ca_file) if ca_file else None,
        lab_networks=lab_networks,
        dns=DNSSettings(timeout=timeout),
        http=HTTPSettings(timeout=timeout),
    )
