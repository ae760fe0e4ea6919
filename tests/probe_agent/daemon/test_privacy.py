"""The volunteer's own address never appears in what the probe signs and submits."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from probe_agent.daemon import privacy
from probe_agent.daemon.privacy import Scrubber, SeenAddresses, scrubber_for
from probe_agent.daemon.round import EXIT_OK, RunOptions, run_once
from probe_agent.measure.failures import SCRUBBED
from probe_agent.protocol.addresses import classify
from probe_agent.protocol.inputs import DeclaredNetwork
from tests.support.fake_collector import FakeCollector
from tests.support.probing import loopback_engine
from tests.support.simnet import SimInstance, SimulatedNetwork

V4 = Scrubber.of(["203.0.113.7"])
V6 = Scrubber.of(["2001:db8:aa:bb::7"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the address itself, in a query string, a cookie, a forwarded-for echo, a body
        ("http://block.example/?ip=203.0.113.7&x=1", f"http://block.example/?ip={SCRUBBED}&x=1"),
        ("bw=1; client=203.0.113.7; Path=/", f"bw=1; client={SCRUBBED}; Path=/"),
        ("203.0.113.7, 192.0.2.44", f"{SCRUBBED}, 192.0.2.44"),
        ("<p>Your IP: 203.0.113.7.</p>", f"<p>Your IP: {SCRUBBED}.</p>"),
        ("zero-padded 203.000.113.007", f"zero-padded {SCRUBBED}"),
        ("::ffff:203.0.113.7 mapped", f"{SCRUBBED} mapped"),
        # rDNS names: dashed, and reversed under in-addr.arpa
        ("ip-203-0-113-7.dsl.example.net", f"ip-{SCRUBBED}.dsl.example.net"),
        ("7.113.0.203.in-addr.arpa", f"{SCRUBBED}.in-addr.arpa"),
        # its /24: a neighbour, the network, the prefix followed by a number or not
        ("gateway 203.0.113.1 said no", f"gateway {SCRUBBED} said no"),
        ("net=203.0.113.0/24", f"net={SCRUBBED}/24"),
        ("203.0.113.x", f"{SCRUBBED}.x"),
        # sharing a prefix but outside the /24: kept
        ("other 203.0.112.7 and 203.0.114.7", "other 203.0.112.7 and 203.0.114.7"),
        ("version 1203.0.113.7", "version 1203.0.113.7"),
        ("203.0.11.7", "203.0.11.7"),
        # not addresses at all
        ("2026-12-02T10:30:00Z", "2026-12-02T10:30:00Z"),
        ("rv:128.0 Gecko/20100101", "rv:128.0 Gecko/20100101"),
    ],
)
def test_ipv4_forms(text: str, expected: str) -> None:
    assert V4.scrub_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see 2001:db8:aa:bb::7", f"see {SCRUBBED}"),
        ("2001:0DB8:00AA:00BB:0000:0000:0000:0007", SCRUBBED),  # exploded, upper case
        ("https://[2001:db8:aa:bb::7]:8443/x", f"https://{SCRUBBED}:8443/x"),
        ("/?c=2001%3Adb8%3Aaa%3Abb%3A%3A7&y=1", f"/?c={SCRUBBED}&y=1"),  # URL-encoded colons
        # its /64: a neighbour, the network, the prefix followed by anything
        ("from 2001:db8:aa:bb:ffff::1 only", f"from {SCRUBBED} only"),
        ("net 2001:db8:aa:bb::/64", f"net {SCRUBBED}/64"),
        ("2001:db8:aa:bb:zz", f"{SCRUBBED}zz"),
        # another /64 of the same /48: kept
        ("2001:db8:aa:bc::7", "2001:db8:aa:bc::7"),
        ("10:30:00 and de:ad:be:ef:00:01", "10:30:00 and de:ad:be:ef:00:01"),
    ],
)
def test_ipv6_forms(text: str, expected: str) -> None:
    assert V6.scrub_text(text) == expected


def test_a_measured_address_goes_only_when_it_is_the_address() -> None:
    """A DNS answer or a dialled address in the /24 is the network's answer, kept as evidence."""
    assert V4.scrub_text("203.0.113.7") == SCRUBBED
    assert V4.scrub_text("203.0.113.7:53") == f"{SCRUBBED}:53"
    assert V4.scrub_text("203.0.113.8") == "203.0.113.8"
    assert V4.scrub_text("::ffff:203.0.113.7") == SCRUBBED
    assert V6.scrub_text("[2001:db8:aa:bb::7]:443") == f"{SCRUBBED}:443"
    assert V6.scrub_text("2001:db8:aa:bb::8") == "2001:db8:aa:bb::8"


def test_scrub_walks_values_and_keys_and_copies() -> None:
    doc = {
        "a": "203.0.113.7",
        "b": ["x 203.0.113.9 y", {"c": "203.0.113.90", "203.0.113.7": 1}],
        "n": 3,
        "none": None,
    }
    out = privacy.scrub(doc, ["203.0.113.7"])
    assert out == {
        "a": SCRUBBED,
        "b": [f"x {SCRUBBED} y", {"c": "203.0.113.90", SCRUBBED: 1}],
        "n": 3,
        "none": None,
    }
    assert doc["a"] == "203.0.113.7"  # the input is left alone
    assert Scrubber.of([]).scrub(doc) is doc


def test_seen_addresses_keep_the_last_per_family_and_name_none() -> None:
    seen = SeenAddresses()
    for value in ("198.51.100.1", "2001:db8::1", "198.51.100.2", "not an address", None):
        seen.remember(value)
    assert seen.addresses() == {
        ipaddress.ip_address("198.51.100.2"),
        ipaddress.ip_address("2001:db8::1"),
    }
    assert "198.51" not in repr(seen) and "2001" not in repr(seen)


def test_only_routable_addresses_are_scrubbed() -> None:
    """Loopback or private (a collector on the LAN) says nothing; the lab's networks count."""
    seen = SeenAddresses()
    seen.remember("127.0.0.1")
    assert not scrubber_for(seen, own=())
    lab = (ipaddress.ip_network("127.0.0.0/8"),)
    assert scrubber_for(seen, lab, own=()).exact == {ipaddress.ip_address("127.0.0.1")}
    seen.remember("45.77.12.34")  # a public address (never contacted: only text)
    seen.remember("fd00::1")  # unique-local: dropped
    assert scrubber_for(seen, own=()).exact == {ipaddress.ip_address("45.77.12.34")}


def test_own_addresses_are_routable_only() -> None:
    for address in privacy.own_addresses():
        assert classify(address).routable


async def test_a_measurement_never_carries_the_probes_interface_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        SimulatedNetwork(tmp_path, [SimInstance("a.example")]) as net,
        FakeCollector(targets=["a.example"]) as collector,
    ):
        # Pretend this machine's public address is the instance's: it is everywhere
        # in the observations (DNS answers, TCP, TLS, HTTP), so all of it must go.
        mine = net.ip_of("a.example")
        monkeypatch.setattr(privacy, "own_addresses", lambda allow=(): frozenset({mine}))
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
