"""Integration: the real ``blockwatch-probe measure`` command against the simulated network.

The command runs as a subprocess with ``--resolver`` on loopback (``run_probe``
refuses anything else); every address the simulated network hands out is on
127.0.0.0/8. Checks the public interface of docs/architecture.md: one JSON line per
domain, exit status 0 when every domain was measured, 2 for invalid input with
nothing on stdout, and the human table.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from probe_agent.measure.engine import DEFAULT_DECOY_SNI, SOFTWARE, DomainError, Result
from probe_agent.measure.http import API_PATHS
from probe_agent.measure.observations import Measurement
from probe_agent.protocol.vocabulary import Failure, Hint
from tests.support.dns_server import DNSBehaviour, InjectorServer
from tests.support.probing import (
    PROBE,
    assert_no_lingering_tasks,
    loopback_engine,
    run_probe,
)
from tests.support.simnet import SimInstance, SimulatedNetwork
from tests.support.tls_servers import ServerBehaviour

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

DOMAIN = "social.example"
EXIT_OK, EXIT_INVALID = 0, 2
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
TOP_LEVEL_KEYS = {"domain", "measurement_id", "started_at", "software", "dns", "tcp", "tls"}
TOP_LEVEL_KEYS |= {"http", "hints"}


@pytest.fixture(autouse=True)
async def _settled() -> AsyncIterator[None]:
    yield
    await assert_no_lingering_tasks()


def _mix(count: int) -> list[SimInstance]:
    """*count* instances cycling through fast behaviours (and one slow one of each kind)."""
    server = [
        ServerBehaviour.MASTODON,
        ServerBehaviour.MASTODON_V1_ONLY,
        ServerBehaviour.NODEINFO_ONLY,
        ServerBehaviour.NOT_MASTODON,
        ServerBehaviour.HTTP_500,
        ServerBehaviour.RESET_AFTER_HELLO,
        ServerBehaviour.EOF_AFTER_HELLO,
        ServerBehaviour.WRONG_NAME,
        ServerBehaviour.UNTRUSTED_CA,
        ServerBehaviour.EXPIRED,
        ServerBehaviour.SNI_FILTER,
        ServerBehaviour.NO_SHARED_CIPHER,
        ServerBehaviour.CLOSED,
        ServerBehaviour.ENDLESS_BODY,
        ServerBehaviour.HUGE_CERT,
    ]
    dns = [
        DNSBehaviour.NXDOMAIN,
        DNSBehaviour.SERVFAIL,
        DNSBehaviour.REFUSED,
        DNSBehaviour.MALFORMED,
        DNSBehaviour.TRUNCATED,
    ]
    instances = [SimInstance("slow-dns.example", dns=DNSBehaviour.SILENT)]
    instances.append(SimInstance("slow-tls.example", ServerBehaviour.DROP_AFTER_HELLO))
    kinds: list[tuple[ServerBehaviour, DNSBehaviour]] = [(b, DNSBehaviour.ANSWER) for b in server]
    kinds += [(ServerBehaviour.MASTODON, d) for d in dns]
    for i in range(count - len(instances)):
        behaviour, dns_behaviour = kinds[i % len(kinds)]
        name = f"i{i:02d}-{behaviour.value}-{dns_behaviour.value}.example".replace("_", "-")
        instances.append(SimInstance(name, behaviour, dns_behaviour))
    return instances


async def test_jsonl_line_of_a_healthy_instance(tmp_path: Path) -> None:
    async with SimulatedNetwork(tmp_path, [SimInstance(DOMAIN)]) as net:
        run = await run_probe([DOMAIN, *net.probe_args(), "--format", "jsonl"])
    assert run.returncode == EXIT_OK, run.stderr
    assert len(run.lines) == 1
    line = run.lines[0]
    assert line.keys() >= TOP_LEVEL_KEYS
    assert line["domain"] == DOMAIN
    assert line["software"] == SOFTWARE
    assert RFC3339_UTC.match(line["started_at"])
    ip = net.ip_of(DOMAIN)
    udp_a = next(o for o in line["dns"] if (o["transport"], o["query_type"]) == ("udp", "A"))
    assert (udp_a["resolver"], udp_a["answers"], udp_a["failure"]) == (net.resolver, [ip], None)
    assert [(o["ip"], o["port"], o["failure"]) for o in line["tcp"]] == [(ip, net.port, None)]
    assert [(o["sni"], o["failure"], o["cert_valid"]) for o in line["tls"]] == [
        (DEFAULT_DECOY_SNI, None, None),
        (DOMAIN, None, True),
    ]
    http = line["http"][0]
    assert http["url"].endswith(API_PATHS[0])
    assert (http["status_code"], http["mastodon"], http["failure"]) == (200, True, None)
    assert line["hints"] == []


async def test_table_format(tmp_path: Path) -> None:
    instances = [SimInstance(DOMAIN), SimInstance("filtered.example", ServerBehaviour.SNI_FILTER)]
    async with SimulatedNetwork(tmp_path, instances) as net:
        run = await run_probe([DOMAIN, "filtered.example", *net.probe_args(), "--format", "table"])
    assert run.returncode == EXIT_OK, run.stderr
    assert run.lines == []
    for text in (DOMAIN, "filtered.example", "TLS real SNI", Hint.TLS_SNI_BLOCKED):
        assert text in run.stdout
    assert Failure.CONNECTION_RESET in run.stdout
    assert "200 mastodon" in run.stdout


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "two-workers"])
async def test_many_domains_at_once(tmp_path: Path, workers: list[str]) -> None:
    instances = _mix(40)
    names = [inst.domain for inst in instances]
    async with SimulatedNetwork(tmp_path, instances) as net:
        args = [*names, *net.probe_args(), "--concurrency", "8", *workers]
        run = await run_probe(args, timeout=30)
    assert run.returncode == EXIT_OK, run.stderr
    assert sorted(line["domain"] for line in run.lines) == sorted(names)
    lines = run.by_domain()
    assert lines["slow-dns.example"]["dns"][0]["failure"] == Failure.GENERIC_TIMEOUT
    for inst in instances:
        line = lines[inst.domain]
        if inst.dns is DNSBehaviour.NXDOMAIN:
            assert line["dns"][0]["failure"] == Failure.DNS_NXDOMAIN
        elif inst.behaviour is ServerBehaviour.MASTODON and inst.dns is DNSBehaviour.ANSWER:
            assert line["http"][0]["mastodon"]
        elif inst.behaviour is ServerBehaviour.CLOSED:
            assert line["tcp"][0]["failure"] == Failure.CONNECTION_REFUSED
        elif inst.behaviour is ServerBehaviour.SNI_FILTER:
            assert Hint.TLS_SNI_BLOCKED in line["hints"]
    # 40 domains, 8 at a time, each at least 0.5 s of DNS late wait; the slow ones 4-5 s.
    assert run.elapsed < 20


async def test_many_domains_in_process_leave_nothing_behind(tmp_path: Path) -> None:
    instances = _mix(24)
    results: list[Result] = []
    async with SimulatedNetwork(tmp_path, instances) as net:
        engine = loopback_engine(net.engine_config())
        await engine.measure_all([inst.domain for inst in instances], 8, results.append)
    assert not [r for r in results if isinstance(r, DomainError)]
    assert sorted(r.domain for r in results) == sorted(inst.domain for inst in instances)
    assert all(isinstance(r, Measurement) for r in results)
    # The autouse fixture then checks that no task outlived the servers and the engine.


@pytest.mark.parametrize(
    "bad",
    ["bad_name!.example", "-x.example", "a" * 300 + ".example", "ab." * 100 + "example"],
    ids=["punctuation", "leading-hyphen", "300-char-label", "300-char-name"],
)
async def test_invalid_domain_exits_2_and_prints_nothing(tmp_path: Path, bad: str) -> None:
    async with SimulatedNetwork(tmp_path, [SimInstance(DOMAIN)]) as net:
        # "--" so that "-x.example" reaches the validator instead of the option parser.
        run = await run_probe([*net.probe_args(), "--", DOMAIN, bad])
        queries = list(net.dns.queries)
    assert run.returncode == EXIT_INVALID
    assert run.stdout == ""
    assert "invalid domain" in run.stderr
    assert bad[:20] in run.stderr.replace("\n", "")
    assert queries == []  # invalid input: nothing was sent, not even for the valid name


async def test_unicode_name_is_measured_as_punycode(tmp_path: Path) -> None:
    punycode = "xn--fsqu00a.xn--0zwm56d"  # 例子.测试
    async with SimulatedNetwork(tmp_path, [SimInstance(punycode)]) as net:
        run = await run_probe(["例子.测试", *net.probe_args()])
    assert run.returncode == EXIT_OK, run.stderr
    (line,) = run.lines
    assert line["domain"] == punycode
    assert [o["sni"] for o in line["tls"]] == [DEFAULT_DECOY_SNI, punycode]
    assert line["tls"][1]["cert_valid"] is True
    assert line["http"][0]["instance_domain"] == punycode


async def test_eszett_name_is_measured_as_its_idna2008_form(tmp_path: Path) -> None:
    punycode = "xn--strae-oqa.example"  # straße.example
    async with SimulatedNetwork(tmp_path, [SimInstance(punycode)]) as net:
        run = await run_probe(["straße.example", *net.probe_args()])
    assert run.returncode == EXIT_OK, run.stderr
    assert [line["domain"] for line in run.lines] == [punycode]


async def test_plain_http_scheme(tmp_path: Path) -> None:
    async with SimulatedNetwork(tmp_path, [SimInstance(DOMAIN, ServerBehaviour.PLAIN_HTTP)]) as net:
        run = await run_probe([DOMAIN, *net.probe_args(), "--scheme", "http"])
    assert run.returncode == EXIT_OK, run.stderr
    (line,) = run.lines
    assert line["tls"] == []
    http = line["http"][0]
    assert http["url"] == f"http://{DOMAIN}:{net.port}{API_PATHS[0]}"
    assert (http["status_code"], http["mastodon"]) == (200, True)


async def test_injection_sink_option(tmp_path: Path) -> None:
    # A loopback "forged" address: the CLI runs without the in-process dial guard.
    async with (
        SimulatedNetwork(tmp_path, [SimInstance(DOMAIN)]) as net,
        InjectorServer("127.0.0.2", forged_a=["127.0.66.66"], forged_aaaa=[]) as injector,
    ):
        run = await run_probe([DOMAIN, *net.probe_args(), "--injection-sink", injector.endpoint])
    assert run.returncode == EXIT_OK, run.stderr
    (line,) = run.lines
    sink = [o for o in line["dns"] if o["injection_sink"]]
    assert {(o["query_type"], o["resolver"]) for o in sink} == {
        ("A", injector.endpoint),
        ("AAAA", injector.endpoint),
    }
    assert Hint.DNS_INJECTION in line["hints"]
    assert [o["ip"] for o in line["tcp"]] == [net.ip_of(DOMAIN)]  # sink answers never dialled


async def _first_line_then_close_stdout(args: list[str]) -> tuple[bytes, int, str]:
    """Run the probe with stdout on a pipe we close after one line, as ``| head -1`` does."""
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            str(PROBE), "measure", *args, stdout=write_fd, stderr=asyncio.subprocess.PIPE
        )
    finally:
        os.close(write_fd)
    try:
        first = await asyncio.wait_for(reader.readline(), 10)
    finally:
        transport.close()
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    return first, proc.returncode if proc.returncode is not None else -1, err.decode()


async def test_closed_stdout_stops_quietly(tmp_path: Path) -> None:
    instances = [SimInstance(f"i{i}.example") for i in range(4)]
    async with SimulatedNetwork(tmp_path, instances) as net:
        first, _, stderr = await _first_line_then_close_stdout(
            [*[inst.domain for inst in instances], *net.probe_args(), "--concurrency", "1"]
        )
    assert first.startswith(b"{")
    assert "Traceback" not in stderr
