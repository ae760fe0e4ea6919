"""The control prober on a real engine and database, the lease, and the on-demand queue."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from collector.core.clock import SystemClock
from collector.core.db import make_engine, make_session_factory, migrate, session_scope
from collector.core.models import MeasurementRow, ProbeKeyRow
from collector.core.settings import CollectorSettings, Mode
from collector.detection.control import CONTROL_PROBE_ID, ControlProber, Wanted, control_enabled
from collector.services import leases
from collector.services.targets import TargetService
from probe_agent.measure.engine import Engine
from probe_agent.protocol.envelope import Envelope, Purpose, verify
from tests.support.simnet import SimInstance, SimulatedNetwork
from tests.support.tls_servers import ServerBehaviour


async def test_control_prober_measures_signs_and_stores(
    settings: CollectorSettings, tmp_path: Path
) -> None:
    engine = make_engine(settings.database_url)
    migrate(engine)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as session:
        TargetService().add(session, ["alive.example", "sni.example"])
    instances = [
        SimInstance("alive.example"),
        SimInstance("sni.example", ServerBehaviour.RESET_AFTER_HELLO),
    ]
    try:
        async with SimulatedNetwork(tmp_path / "net", instances) as net:
            prober = ControlProber(
                settings, SystemClock(), sessions, engine=Engine(net.engine_config())
            )
            assert await prober.measure(prober.targets()) == 2
            # Another replica finds the same identity, not a second one.
            again = ControlProber(
                settings, SystemClock(), sessions, engine=Engine(net.engine_config())
            )
            assert again.key.private_bytes_raw() == prober.key.private_bytes_raw()
        with session_scope(sessions) as session:
            rows = list(session.scalars(select(MeasurementRow)))
            keys = {k.key_id: k.public_key for k in session.scalars(select(ProbeKeyRow))}
    finally:
        engine.dispose()
    assert sorted(r.domain for r in rows) == ["alive.example", "sni.example"]
    for row in rows:
        assert (row.probe_id, row.role, row.cc, row.network_source) == (
            CONTROL_PROBE_ID, "control", "ZZ", "declared",
        )  # fmt: skip
        # A control is evidence too: signed, verifiable by anyone with the public key.
        kept = Envelope(row.key_id, zlib.decompress(row.payload), row.signature)
        verify(kept, Purpose.MEASUREMENT, keys[row.key_id])
        measured = json.loads(kept.payload)["measurement"]
        instance_tls = [t for t in measured["tls"] if not t["decoy"]]
        if row.domain == "alive.example":
            assert instance_tls and instance_tls[0]["failure"] is None
        else:
            assert instance_tls and instance_tls[0]["failure"] is not None


def test_control_is_off_in_the_lab_unless_resolvers_are_named() -> None:
    lab = CollectorSettings(mode=Mode.LAB)
    assert not control_enabled(lab)
    assert control_enabled(lab.model_copy(update={"control_resolvers": "127.0.0.1:5353"}))
    production = CollectorSettings(admin_token="x" * 32)
    assert control_enabled(production)
    assert not control_enabled(production.model_copy(update={"no_control": True}))


async def test_on_demand_requests_are_rate_limited() -> None:
    wanted = Wanted(min_gap=60)
    wanted.ask({"a.example", "b.example"})
    assert wanted.event.is_set()
    assert wanted.take() == ["a.example", "b.example"]
    assert not wanted.event.is_set()
    wanted.ask({"a.example"})  # measured a moment ago
    assert not wanted.event.is_set() and wanted.take() == []
    wanted.ask({"c.example"})
    assert wanted.take() == ["c.example"]


def test_one_lease_holder_at_a_time(settings: CollectorSettings) -> None:
    engine = make_engine(settings.database_url)
    migrate(engine)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC)
    try:
        with session_scope(sessions) as s:
            assert leases.acquire(s, "singletons", "one", 30, now)
            assert not leases.acquire(s, "singletons", "two", 30, now + timedelta(seconds=5))
            assert leases.acquire(s, "singletons", "one", 30, now + timedelta(seconds=10))  # renew
            # The holder died: once the lease expires, another takes over.
            assert leases.acquire(s, "singletons", "two", 30, now + timedelta(seconds=41))
            assert not leases.acquire(s, "singletons", "one", 30, now + timedelta(seconds=42))
            leases.release(s, "singletons", "two")
            assert leases.acquire(s, "singletons", "one", 30, now + timedelta(seconds=43))
    finally:
        engine.dispose()


@pytest.mark.parametrize("interval", [0.5])
def test_settings_derive_windows_from_the_interval(interval: float) -> None:
    s = CollectorSettings(mode=Mode.LAB, measure_interval=interval)
    assert s.window_seconds == 3 * interval
    assert s.control_window_seconds == interval
    assert s.control_wait_seconds == interval + 60
    with pytest.raises(ValueError, match="hysteresis"):
        CollectorSettings(mode=Mode.LAB, open_min_probes=1, stay_min_probes=2)
