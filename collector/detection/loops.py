"""The background loops of ``serve``: the control prober and the detector.

Every collector process starts ``BackgroundLoops``; the one that holds the
``singletons`` lease runs both (so the detector can ask the control prober for
a control at once), the others wait and take over if it dies. The detector's
pass runs in a thread (SQLAlchemy is synchronous); the control prober runs on
the event loop, as the probe's engine does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from collector.alerts.outbox import Outbox
from collector.core import metrics
from collector.core.clock import Clock
from collector.core.db import session_scope
from collector.core.settings import CollectorSettings
from collector.detection.control import ControlProber, control_enabled
from collector.detection.passes import Detector
from collector.services import leases
from collector.services.geo import Geolocator

log = logging.getLogger("blockwatch.collector.loops")
LEASE = "singletons"


class BackgroundLoops:
    def __init__(
        self,
        settings: CollectorSettings,
        clock: Clock,
        sessions: sessionmaker[Session],
        geolocator: Geolocator | None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.sessions = sessions
        self.geolocator = geolocator
        self.holder = f"{socket.gethostname()[:20]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop = asyncio.Event()
        self.prober: ControlProber | None = None
        self._prober_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._alerts_task: asyncio.Task[None] | None = None
        self.passes = 0
        self.held = False
        self.renewed_at: float | None = None  # monotonic: when this process last held the lease
        self.outbox = Outbox(settings, clock, sessions)

    @property
    def lease_ttl(self) -> float:
        return max(10.0, 3 * self.settings.detect_interval)

    def liveness(self) -> str | None:
        """None while the loops run (``/readyz``), else why this process is not alive:
        a loop that ended, or, on the lease holder, a lease left to lapse (a pass
        hanging past the lease's lifetime: another replica takes over) or a
        control prober that stopped."""
        if self.stop.is_set():
            return "shutting down"
        for name, task in (("detector", self._task), ("alerts", self._alerts_task)):
            if task is not None and task.done():
                return f"the {name} loop has stopped"
        if not self.held or self.renewed_at is None:
            return None  # a standby: nothing of the singletons runs here
        age = time.monotonic() - self.renewed_at
        if age > self.lease_ttl:
            return f"the lease holder has not renewed its lease for {age:.0f} s"
        prober = self._prober_task
        if control_enabled(self.settings) and prober is not None and prober.done():
            return "the control prober has stopped"
        return None

    def start(self) -> None:
        metrics.DETECTOR_INTERVAL.set(self.settings.detect_interval)
        self._task = asyncio.create_task(self._run(), name="blockwatch-loops")
        self._alerts_task = asyncio.create_task(self._alerts(), name="blockwatch-alerts")

    async def close(self) -> None:
        self.stop.set()
        for task in (self._prober_task, self._task, self._alerts_task):
            if task is not None:
                try:
                    await asyncio.wait_for(task, timeout=self.settings.control_timeout + 5)
                except (TimeoutError, asyncio.CancelledError):
                    task.cancel()
        if self._task is not None and self.holder:
            try:
                await asyncio.to_thread(self._release)
            except Exception:  # shutting down: the lease expires by itself
                log.warning("could not release the lease")

    def _release(self) -> None:
        with session_scope(self.sessions) as session:
            leases.release(session, LEASE, self.holder)

    def _acquire(self) -> bool:
        with session_scope(self.sessions) as session:
            held = leases.acquire(session, LEASE, self.holder, self.lease_ttl, self.clock.now())
        if held:
            self.renewed_at = time.monotonic()
        return held

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()

        def request_control(domains: set[str]) -> None:
            prober = self.prober
            if prober is not None:
                loop.call_soon_threadsafe(prober.wanted.ask, domains)

        detector = Detector(self.settings, self.clock, self.geolocator, request_control)
        while not self.stop.is_set():
            try:
                held = self.held = await asyncio.to_thread(self._acquire)
                metrics.LEASE_HELD.labels(lease=LEASE).set(1 if held else 0)
                if held:
                    self._start_prober()
                    await asyncio.to_thread(detector.run_pass, self.sessions)
                    # The pass's event changes become deliveries at once.
                    await asyncio.to_thread(self.outbox.fan_out)
                    self.passes += 1
                else:
                    await self._stop_prober()
            except Exception:  # a bad pass must not end the loop: log, count, go on
                log.exception("detector pass failed")
                metrics.LOOP_ERRORS.labels(loop="detector").inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=self.settings.detect_interval)
        await self._stop_prober()

    async def _alerts(self) -> None:
        """Send due deliveries: every process on PostgreSQL (rows are claimed with
        SKIP LOCKED), the lease holder alone on SQLite."""
        shared = not self.settings.is_sqlite
        async with self.outbox.http_session() as http:
            while not self.stop.is_set():
                try:
                    if shared or self.held:
                        while await self.outbox.send_due(http) and not self.stop.is_set():
                            pass
                        await asyncio.to_thread(self.outbox.gauges)
                except Exception:  # the loop must go on: log, count, retry
                    log.exception("alert round failed")
                    metrics.LOOP_ERRORS.labels(loop="alerts").inc()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=self.settings.alert_interval)

    def _start_prober(self) -> None:
        if self._prober_task is not None or not control_enabled(self.settings):
            return
        self.prober = ControlProber(self.settings, self.clock, self.sessions)
        self._prober_task = asyncio.create_task(
            self.prober.run(self.stop), name="blockwatch-control"
        )
        log.info(
            "control prober started (interval %s)",
            timedelta(seconds=self.settings.measure_interval),
        )

    async def _stop_prober(self) -> None:
        task, self._prober_task = self._prober_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.prober = None
