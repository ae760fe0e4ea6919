"""The control prober: the collector's own, uncensored vantage.

It measures every enabled target each ``measure_interval`` with the probe's own
engine (same steps, same observations), and at once any domain the detector
asks about (a measurement that failed needs a control taken after it: a control
from before an outage would make the outage look like a block). It signs what
it measures with the collector's own Ed25519 key, registered as the probe
``control-collector`` with the role ``control``, and stores it through the same
ingestion as any probe: a control is evidence anyone can verify, like the
measurements it judges.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from collector.core import metrics
from collector.core.clock import Clock
from collector.core.db import session_scope
from collector.core.models import ProbeKeyRow, ProbeRow, ServiceKeyRow, TargetRow
from collector.core.settings import CollectorSettings
from collector.services import reachability
from collector.services.geo import Network, NetworkSource
from collector.services.ingest import IngestService
from probe_agent.measure.engine import (
    DEFAULT_DECOY_SNI,
    Engine,
    EngineConfig,
    Result,
    Scheme,
    engine_config,
)
from probe_agent.measure.observations import Measurement
from probe_agent.protocol.document import measurement_document
from probe_agent.protocol.envelope import Purpose, fingerprint, public_bytes, sign

log = logging.getLogger("blockwatch.collector.control")

CONTROL_PROBE_ID = "control-collector"
KEY_NAME = "control"


def control_engine_config(settings: CollectorSettings) -> EngineConfig:
    resolvers = [r for r in settings.control_resolvers.split(",") if r.strip()]
    networks = [n for n in settings.lab_networks.split(",") if n.strip()]
    return engine_config(
        resolver=resolvers or None,
        injection_sink=None,
        ca_file=settings.ca_file,
        port=settings.control_port,
        scheme=Scheme.HTTPS,
        timeout=settings.control_timeout,
        decoy_sni=DEFAULT_DECOY_SNI,
        lab_network=networks or None,
    )


def control_enabled(settings: CollectorSettings) -> bool:
    """Off with --no-control; off in the lab and demo unless resolvers are named."""
    if settings.no_control:
        return False
    return settings.mode == "production" or bool(settings.control_resolvers.strip())


def _load_key(session: Session) -> Ed25519PrivateKey:
    row = session.get(ServiceKeyRow, KEY_NAME)
    if row is None:
        key = Ed25519PrivateKey.generate()
        session.add(ServiceKeyRow(name=KEY_NAME, private_key=key.private_bytes_raw()))
        session.flush()
        return key
    return Ed25519PrivateKey.from_private_bytes(row.private_key)


def ensure_identity(session: Session, settings: CollectorSettings) -> Ed25519PrivateKey:
    """The control's key, and its probe row: made once, shared by every replica."""
    key = _load_key(session)
    public = public_bytes(key)
    key_id = fingerprint(public)
    probe = session.get(ProbeRow, CONTROL_PROBE_ID)
    if probe is None:
        probe = ProbeRow(
            id=CONTROL_PROBE_ID,
            status="active",
            role="control",
            declared_cc=settings.control_cc,
            spool_depth=0,
            evicted_total=0,
        )
        session.add(probe)
    probe.status, probe.role, probe.declared_cc = "active", "control", settings.control_cc
    if session.get(ProbeKeyRow, key_id) is None:
        session.add(
            ProbeKeyRow(
                key_id=key_id, probe_id=CONTROL_PROBE_ID, public_key=public, status="active"
            )
        )
    return key


@dataclass
class Wanted:
    """Domains the detector wants measured now, rate-limited per domain."""

    min_gap: float
    domains: set[str] = field(default_factory=set)
    last: dict[str, float] = field(default_factory=dict)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def ask(self, domains: Iterable[str]) -> None:
        """Called on the event loop (the detector thread uses call_soon_threadsafe)."""
        now = time.monotonic()
        fresh = {d for d in domains if now - self.last.get(d, -1e18) >= self.min_gap}
        if fresh:
            self.domains |= fresh
            self.event.set()

    def take(self) -> list[str]:
        now = time.monotonic()
        taken = sorted(self.domains)
        for domain in taken:
            self.last[domain] = now
        self.domains.clear()
        self.event.clear()
        return taken


class ControlProber:
    def __init__(
        self,
        settings: CollectorSettings,
        clock: Clock,
        sessions: sessionmaker[Session],
        engine: Engine | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.sessions = sessions
        self.engine = engine or Engine(control_engine_config(settings))
        self.ingest = IngestService(settings, clock)
        self.wanted = Wanted(min_gap=min(settings.measure_interval, 30.0) / 2)
        self.network = Network(settings.control_cc, 0, NetworkSource.DECLARED)
        with session_scope(sessions) as session:
            self.key = ensure_identity(session, settings)

    def targets(self) -> list[str]:
        with session_scope(self.sessions) as session:
            return list(
                session.scalars(
                    select(TargetRow.domain).where(TargetRow.enabled).order_by(TargetRow.domain)
                )
            )

    async def measure(self, domains: list[str]) -> int:
        """Measure *domains*, sign and store the results; the number stored."""
        if not domains:
            return 0
        items: list[dict[str, str]] = []

        def on_result(result: Result) -> None:
            if isinstance(result, Measurement):
                document = measurement_document(result.to_dict(), None, via_proxy=False)
                items.append(sign(self.key, Purpose.MEASUREMENT, document).to_json())
            else:
                log.warning("control: internal error measuring a target: %s", result.error)

        started = time.monotonic()
        await self.engine.measure_all(
            domains,
            self.settings.control_concurrency,
            on_result,
            reachability.ports(self.settings),  # the collector's own names, at their ports
        )
        stored = await asyncio.to_thread(self._store, items)
        metrics.CONTROL_MEASUREMENTS.inc(stored)
        metrics.CONTROL_ROUND_SECONDS.observe(time.monotonic() - started)
        return stored

    def _store(self, items: list[dict[str, str]]) -> int:
        limit = self.settings.max_batch_items
        stored = 0
        for start in range(0, len(items), limit):
            with session_scope(self.sessions) as session:
                results = self.ingest.ingest(
                    session, items[start : start + limit], lambda _d, _p, _r=None: self.network
                )
            stored += sum(r.status == "accepted" for r in results)
            for r in results:
                if r.status == "rejected":
                    log.error("control: own measurement refused: %s", r.code)
        return stored

    async def run(self, stop: asyncio.Event) -> None:
        """Every interval, every target; in between, what the detector asks for."""
        interval = self.settings.measure_interval
        next_round = time.monotonic()
        while not stop.is_set():
            if time.monotonic() >= next_round:
                next_round = time.monotonic() + interval
                await self._guarded(None)
            wait = max(0.0, next_round - time.monotonic())
            stop_task = asyncio.ensure_future(stop.wait())
            want_task = asyncio.ensure_future(self.wanted.event.wait())
            await asyncio.wait({stop_task, want_task}, timeout=wait, return_when="FIRST_COMPLETED")
            stop_task.cancel()
            want_task.cancel()
            if self.wanted.event.is_set() and not stop.is_set():
                await self._guarded(self.wanted.take())

    async def _guarded(self, domains: list[str] | None) -> None:
        """Measure *domains* (None: every target); an error is logged, never fatal."""
        try:
            if domains is None:
                domains = await asyncio.to_thread(self.targets)
            await self.measure(domains)
        except Exception:  # the loop must go on: log, count, retry next interval
            log.exception("control round failed")
            metrics.LOOP_ERRORS.labels(loop="control").inc()
