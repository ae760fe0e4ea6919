"""Running the probe against the simulated network, with no way for a packet to leave.

Where this sits in the data flow: the integration tests drive the engine in
process (``loopback_engine``) and the real ``blockwatch-probe`` command as a
subprocess (``run_probe``; also ``run --once`` against a fake collector). Both
refuse anything outside 127.0.0.0/8 before a packet is sent: the in-process
engine gets a dialer that raises on a non-loopback address (so a forged answer
such as 8.7.198.45 that the engine wrongly dialled fails the test instead of
reaching the internet), and the CLI runner checks every resolver, injection sink
and collector it passes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import os
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe_agent.measure.engine import Engine, EngineConfig
from probe_agent.measure.netio import SocketDialer, Stream
from probe_agent.measure.observations import DNSObservation, Measurement, TLSObservation

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
PROBE = Path(sys.executable).with_name("blockwatch-probe")
ENDPOINT_OPTIONS = ("--resolver", "--injection-sink")


def _require_loopback(ip: str, what: str) -> None:
    if ipaddress.ip_address(ip) not in LOOPBACK:
        raise AssertionError(f"{what} {ip} is not on loopback: no packet may leave this machine")


class LoopbackOnlyDialer:
    """The real socket dialer, refusing (AssertionError) any address outside 127.0.0.0/8."""

    def __init__(self) -> None:
        self._inner = SocketDialer()
        self.dialled: list[tuple[str, int]] = []

    async def connect(self, ip: str, port: int, timeout: float) -> Stream:
        _require_loopback(ip, "the engine dialled")
        self.dialled.append((ip, port))
        return await self._inner.connect(ip, port, timeout)


def loopback_engine(config: EngineConfig) -> Engine:
    """An ``Engine`` whose resolvers, sinks and dials are all checked to be loopback."""
    for endpoint in (*config.resolvers, *config.injection_sinks):
        _require_loopback(endpoint.ip, "resolver or sink")
    return Engine(config, dialer=LoopbackOnlyDialer())


def dialled(engine: Engine) -> list[tuple[str, int]]:
    """Every (address, port) a ``loopback_engine`` connected to, in order."""
    assert isinstance(engine.dialer, LoopbackOnlyDialer)
    return engine.dialer.dialled


def dns_obs(m: Measurement, transport: str, qtype: str, *, sink: bool = False) -> DNSObservation:
    """The one DNS observation of *m* for this transport and query type."""
    found = [
        o
        for o in m.dns
        if o.transport == transport and o.query_type == qtype and o.injection_sink is sink
    ]
    assert len(found) == 1, f"expected one {transport}/{qtype} observation, got {found}"
    return found[0]


def tls_obs(m: Measurement, *, decoy: bool) -> TLSObservation:
    """The one decoy-SNI (or instance-SNI) handshake of a single-address measurement."""
    found = [o for o in m.tls if o.decoy is decoy]
    assert len(found) == 1, f"expected one {'decoy' if decoy else 'real'} handshake: {m.tls}"
    return found[0]


async def assert_no_lingering_tasks() -> None:
    """Fail when any task but the current one is still alive (CONTRIBUTING.md 13)."""
    for _ in range(3):  # let tasks that are finishing run their last step
        await asyncio.sleep(0)
    current = asyncio.current_task()
    lingering = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not lingering, f"tasks outlived the test: {lingering}"


@dataclass(slots=True)
class ProbeRun:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float
    lines: list[dict[str, Any]] = field(default_factory=list)

    def by_domain(self) -> dict[str, dict[str, Any]]:
        return {line["domain"]: line for line in self.lines}


def _check_endpoints(args: list[str]) -> None:
    if "--resolver" not in args:
        raise AssertionError("never run the probe without --resolver on loopback")
    for option, value in itertools.pairwise(args):
        if option in ENDPOINT_OPTIONS:
            host = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
            _require_loopback(host.strip("[]"), option)
        if option == "--collector":
            _require_loopback(urllib.parse.urlsplit(value).hostname or "", option)


async def run_probe(
    args: list[str],
    *,
    timeout: float = 30.0,
    command: str = "measure",
    extra_env: dict[str, str] | None = None,
) -> ProbeRun:
    """Run ``blockwatch-probe COMMAND ARGS`` and parse its JSON lines (when it printed any).

    Resolvers, injection sinks and collectors must all be on loopback.
    """
    _check_endpoints(args)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKWATCH_")}
    env["COLUMNS"] = "200"  # a wide table, so that names are not folded in --format table
    env |= extra_env or {}
    loop = asyncio.get_running_loop()
    started = loop.time()
    proc = await asyncio.create_subprocess_exec(
        str(PROBE),
        command,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise
    run = ProbeRun(
        returncode=proc.returncode if proc.returncode is not None else -1,
        stdout=out.decode(),
        stderr=err.decode(),
        elapsed=loop.time() - started,
    )
    if command == "measure" and ("--format" not in args or "jsonl" in args):
        run.lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    return run
