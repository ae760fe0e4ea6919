"""A round scrubs the address the collector saw (behind NAT, the public one) before signing.

The "internet" is a censor's block page on loopback that echoes the client's
address in its ``Location`` header, a cookie and its body, as many ISP filters
do; the fake collector says it saw the probe come from that address
(``seen_address``). The public address is a documentation address made routable
with ``--lab-network``, as the lab does with its own ranges.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from probe_agent.daemon.client import CollectorClient
from probe_agent.daemon.round import EXIT_INCOMPLETE, EXIT_OK, RunOptions, run_round
from probe_agent.measure.engine import EngineConfig
from probe_agent.measure.failures import SCRUBBED
from probe_agent.protocol.envelope import Envelope
from probe_agent.protocol.inputs import DeclaredNetwork
from probe_agent.state.spool import Spool
from tests.support.dns_server import DNSRecord
from tests.support.fake_collector import FakeCollector
from tests.support.probing import assert_no_lingering_tasks, loopback_engine
from tests.support.simnet import SimulatedNetwork, free_tcp_port
from tests.support.socks_proxy import Socks5Proxy
from tests.support.tasks import cancel_all

BLOCKED = "blocked.example"
BLOCK_PAGE_IP = "127.0.3.1"


@pytest.fixture(autouse=True)
async def _settled() -> AsyncIterator[None]:
    yield
    await assert_no_lingering_tasks()


class BlockPage:
    """A filter's block page on plain HTTP: a redirect that names the client, again and again."""

    def __init__(self, ip: str, location: str, echoed: str) -> None:
        self.ip, self.location, self.echoed = ip, location, echoed
        self.port = free_tcp_port(ip)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, self.ip, self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            await cancel_all(self._tasks)
            await self._server.wait_closed()

    def _answer(self) -> bytes:
        body = f"<html><body>Blocked. Your address is {self.echoed}.</body></html>".encode()
        head = (
            "HTTP/1.1 302 Found\r\n"
            "Server: filter-gw\r\n"
            f"Location: {self.location}\r\n"
            f"Set-Cookie: client={self.echoed}; Path=/\r\n"
            f"X-Forwarded-For: {self.echoed}\r\n"
            "Content-Type: text/html\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("latin-1") + body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(self._answer())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


def _config(net: SimulatedNetwork, page: BlockPage, lab: str) -> EngineConfig:
    net.dns.records[BLOCKED] = DNSRecord(a=[page.ip])
    config = net.engine_config(scheme="http", port=page.port)
    return dataclasses.replace(
        config, lab_networks=(*config.lab_networks, ipaddress.ip_network(lab))
    )


def _options(collector: FakeCollector, state: Path, config: EngineConfig, **kw: Any) -> RunOptions:
    return RunOptions((collector.url,), state, config, declared=DeclaredNetwork("CN", 4134), **kw)


async def _round(options: RunOptions) -> int:
    result = await run_round(options, report=lambda _: None, make_engine=loopback_engine)
    return result.exit_status


def _location(document: dict[str, Any]) -> str:
    [http, *_] = document["measurement"]["http"]
    location: str = http["headers"]["location"]
    return location


CASES = [
    pytest.param(
        "198.51.100.7",
        "198.51.100.0/24",
        "http://filter.example/deny?client=198.51.100.7&gw=198.51.100.1&peer=198.51.101.7",
        f"http://filter.example/deny?client={SCRUBBED}&gw={SCRUBBED}&peer=198.51.101.7",
        id="ipv4-and-its-24",
    ),
    pytest.param(
        "2001:db8:aa:bb::7",
        "2001:db8::/32",
        "http://filter.example/deny?c=[2001:db8:aa:bb::7]&n=2001%3Adb8%3Aaa%3Abb%3A%3A1"
        "&x=2001:0db8:00aa:00bb:0000:0000:0000:0007&peer=2001:db8:aa:bc::7",
        f"http://filter.example/deny?c={SCRUBBED}&n={SCRUBBED}&x={SCRUBBED}&peer=2001:db8:aa:bc::7",
        id="ipv6-and-its-64",
    ),
]


@pytest.mark.parametrize(("public", "lab", "location", "scrubbed"), CASES)
async def test_the_nat_public_address_is_scrubbed_from_the_signed_payload(
    tmp_path: Path, public: str, lab: str, location: str, scrubbed: str
) -> None:
    async with (
        SimulatedNetwork(tmp_path / "net", []) as net,
        BlockPage(BLOCK_PAGE_IP, location, public) as page,
        FakeCollector(targets=[BLOCKED], seen_address=public) as collector,
    ):
        options = _options(collector, tmp_path / "s", _config(net, page, lab))
        assert await _round(options) == EXIT_OK
    assert collector.problems == []
    [(mid, document)] = collector.stored.items()
    assert _location(document) == scrubbed
    # The exact bytes the probe signed (the fake collector verified the signature).
    signed = Envelope.from_json(collector.envelopes[mid]).payload.decode()
    assert public not in signed
    assert page.ip in signed  # the block page's own address is evidence, and stays


async def test_through_a_proxy_the_proxys_address_is_scrubbed_and_the_probe_says_so(
    tmp_path: Path,
) -> None:
    exit_node = "198.51.100.66"  # what the collector sees: the proxy's address
    location = f"http://filter.example/deny?client={exit_node}"
    async with (
        SimulatedNetwork(tmp_path / "net", []) as net,
        BlockPage(BLOCK_PAGE_IP, location, exit_node) as page,
        FakeCollector(targets=[BLOCKED], seen_address=exit_node) as collector,
        Socks5Proxy() as proxy,
    ):
        config = _config(net, page, "198.51.100.0/24")
        options = _options(collector, tmp_path / "s", config, proxy=proxy.url)
        assert await _round(options) == EXIT_OK
    assert proxy.destinations  # every request went through it
    assert collector.checkins[-1]["via_proxy"] is True
    [document] = collector.stored.values()
    assert document["via_proxy"] is True
    assert _location(document) == f"http://filter.example/deny?client={SCRUBBED}"


async def test_the_address_outlives_a_failed_checkin_and_is_never_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Round 1 learns the address; in round 2 the collector is gone and the last targets
    are measured into the spool: scrubbed all the same. Neither the state files nor
    the log (even at debug) hold the address."""
    caplog.set_level(logging.DEBUG, logger="blockwatch")
    public = "198.51.100.7"
    location = f"http://filter.example/deny?client={public}"
    state = tmp_path / "s"
    lines: list[str] = []
    async with (
        SimulatedNetwork(tmp_path / "net", []) as net,
        BlockPage(BLOCK_PAGE_IP, location, public) as page,
    ):
        config = _config(net, page, "198.51.100.0/24")
        async with FakeCollector(targets=[BLOCKED], seen_address=public) as collector:
            options = _options(collector, state, config)
            assert await _round(options) == EXIT_OK
        # The same options, as the daemon keeps them from one round to the next.
        result = await run_round(options, report=lines.append, make_engine=loopback_engine)
        assert result.exit_status == EXIT_INCOMPLETE
    with Spool(state) as spool:
        [item] = spool.batch()
    kept = json.loads(item.envelope.payload)
    assert _location(kept) == f"http://filter.example/deny?client={SCRUBBED}"
    for path in state.iterdir():
        if path.name.startswith("spool.db"):
            continue  # compressed; its one item is read above
        assert public.encode() not in path.read_bytes(), path.name
    assert not [r for r in caplog.records if public in r.getMessage()]
    assert not [line for line in lines if public in line]


@pytest.mark.parametrize("answered", [None, "not an address", "12345"])
async def test_a_checkin_without_a_usable_seen_address_still_works(
    tmp_path: Path, answered: str | None
) -> None:
    """An older collector sends no seen_address; a broken one sends junk: ignored alike."""
    async with (
        FakeCollector(targets=[BLOCKED], seen_address=answered) as collector,
        CollectorClient([collector.url], Ed25519PrivateKey.generate()) as client,
    ):
        await client.enroll(None)
        checkin = await client.checkin(None)
    assert checkin.targets == [BLOCKED]
    assert checkin.seen_address is None


async def test_the_checkin_keeps_the_seen_address_out_of_its_repr(tmp_path: Path) -> None:
    public = "2001:0db8:00aa:00bb:0000:0000:0000:0007"
    async with (
        FakeCollector(seen_address=public) as collector,
        CollectorClient([collector.url], Ed25519PrivateKey.generate()) as client,
    ):
        await client.enroll(None)
        checkin = await client.checkin(None)
    assert checkin.seen_address == "2001:db8:aa:bb::7"
    assert "2001" not in repr(checkin)


async def test_a_round_without_seen_address_scrubs_nothing_it_did_not_learn(
    tmp_path: Path,
) -> None:
    """An old collector: the round works, and the block page's text stays as it came."""
    public = "198.51.100.7"
    location = f"http://filter.example/deny?client={public}"
    async with (
        SimulatedNetwork(tmp_path / "net", []) as net,
        BlockPage(BLOCK_PAGE_IP, location, public) as page,
        FakeCollector(targets=[BLOCKED]) as collector,
    ):
        options = _options(collector, tmp_path / "s", _config(net, page, "198.51.100.0/24"))
        assert await _round(options) == EXIT_OK
        assert options.seen.addresses() == frozenset()
    [document] = collector.stored.values()
    assert _location(document) == location
