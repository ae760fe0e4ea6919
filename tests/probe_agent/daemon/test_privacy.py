"""The volunteer's own address never appears in what the probe submits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probe_agent.daemon import privacy
from probe_agent.daemon.round import EXIT_OK, RunOptions, run_once
from probe_agent.measure.failures import SCRUBBED
from probe_agent.protocol.inputs import DeclaredNetwork
from tests.support.fake_collector import FakeCollector
from tests.support.probing import loopback_engine
from tests.support.simnet import SimInstance, SimulatedNetwork


def test_scrub_replaces_every_occurrence_and_copies() -> None:
    doc = {"a": "203.0.113.9", "b": ["x 203.0.113.9 y", {"c": "203.0.113.90"}], "n": 3}
    out = privacy.scrub(doc, frozenset({"203.0.113.9"}))
    assert out["a"] == SCRUBBED
    assert out["b"][0] == f"x {SCRUBBED} y"
    assert out["n"] == 3
    assert doc["a"] == "203.0.113.9"  # the input is left alone


def test_own_addresses_are_global_only() -> None:
    for address in privacy.own_addresses():
        assert privacy._routable(address)


async def test_a_measurement_never_carries_the_probes_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        SimulatedNetwork(tmp_path, [SimInstance("a.example")]) as net,
        FakeCollector(targets=["a.example"]) as collector,
    ):
        # Pretend this machine's public address is the instance's: it is everywhere
        # in the observations (DNS answers, TCP, TLS, HTTP), so all of it must go.
        mine = net.ip_of("a.example")
        monkeypatch.setattr(privacy, "own_addresses", lambda: frozenset({mine}))
        options = RunOptions(
            (collector.url,),
            tmp_path / "s",
            net.engine_config(),
            declared=DeclaredNetwork("NL", 1136),
        )
        assert (
            await run_once(options, report=lambda _: None, make_engine=loopback_engine) == EXIT_OK
        )
    [stored] = collector.stored.values()
    text = json.dumps(stored)
    assert mine not in text
    assert SCRUBBED in text
