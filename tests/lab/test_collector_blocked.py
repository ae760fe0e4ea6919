"""The censor blocks the collector itself, stage by stage; the probes get through.

The collector is served as an operator serves it: ``https://collector.test``
(A record 198.18.3.1) behind a TLS relay, a second address for the same name,
and a front on a third address that answers any SNI with the name's
certificate. Two volunteers, one per censored network, run ``--once`` rounds
with ``--collector https://collector.test`` and a DoH resolver abroad. The
national censor escalates, each stage against the way the probes used last
(DESIGN, "Reaching the collector"; OONI's site and API were blocked in China
on 2023-07-07):

1. DNS poisoning of the name: the probes resolve it over DoH;
2. SNI reset of the name (wherever it goes): the front, with another SNI;
3. IP blackhole of the name's address and of the front: the second address,
   from the signed endpoint list the collector handed out at check-in;
4. IP blackhole of every address of the collector: nothing direct works, the
   round is spooled; the volunteer adds a SOCKS5 proxy abroad and it is
   delivered through it.

At each stage: every measurement the probes made is stored exactly once (no
spool left, nothing evicted or rejected), ``status`` names the tactic that
worked, and the collector's own status (``/api/v1/status/collector.test``,
measured by the probes like any target) shows it blocked in CN, with the
stage's method on its event. A list with a bad signature is refused in
tests/probe_agent/state/test_reach.py; here, every list the probes accepted
was signed by the key their enrollment token anchors.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.lab import topology as topo
from tests.lab.lab import Lab
from tests.lab.scenarios import baseline_policies
from tests.lab.served import LabCollector
from tests.lab.webfront import TRUSTED_PROXIES

pytestmark = pytest.mark.lab
BIN = Path(sys.executable).parent
URL = f"https://{topo.COLLECTOR_NAME}"
SECOND = f"{URL};address={topo.COLLECTOR_SECOND}"
FRONT = f"{URL};address={topo.COLLECTOR_FRONT};sni={topo.FRONT_SNI}"
DOH = f"https://{topo.DOH_RESOLVER}/dns-query"
PROXY = f"socks5://{topo.CONTROL_VANTAGE}:{topo.SOCKS_PORT}"
VOLUNTEERS = {"a1": 4134, "b1": 4837}  # one per network: the block is national
TARGETS = ["alive.test"]  # and the collector's own name, which it adds itself
WAIT = 60.0


class Volunteers:
    def __init__(self, lab: Lab, collector: LabCollector, directory: Path) -> None:
        self.lab, self.collector, self.directory = lab, collector, directory
        self.tokens = {
            role: collector.cli(
                "probes", "token", "--cc", "CN", "--asn", str(asn), "--note", f"lab {role}"
            ).strip()
            for role, asn in VOLUNTEERS.items()
        }
        self.rounds = 0  # --once runs, each measuring every target once

    def run(self, role: str, *extra: str) -> int:
        argv = [
            str(BIN / "blockwatch-probe"), "run", "--once", "--collector", URL,
            "--collector-doh", DOH, "--state-dir", str(self.directory / role),
            "--cc", "CN", "--asn", str(VOLUNTEERS[role]), "--ca-file", str(self.lab.ca_file),
            "--lab-network", topo.INTERNET_CIDR, "--timeout", "2",
            "--collector-timeout", "3", *extra,
        ]  # fmt: skip
        result = self.lab.exec(
            role, argv, timeout=180, env={"BLOCKWATCH_ENROLL_TOKEN": self.tokens[role]}
        )
        with (self.directory / f"{role}.log").open("a") as log:
            log.write(
                f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}\nrc={result.returncode}\n"
            )
        self.rounds += 1
        return result.returncode

    def each(self, *extra: str) -> None:
        for role in VOLUNTEERS:
            rc = self.run(role, *extra)
            assert rc == 0, (self.directory / f"{role}.log").read_text()[-4000:]

    def status(self, role: str) -> dict[str, Any]:
        result = self.lab.exec(
            role,
            [str(BIN / "blockwatch-probe"), "status", "--json", "--state-dir",
             str(self.directory / role)],
        )  # fmt: skip
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def used_last(self, role: str) -> str:
        tactics = self.status(role)["tactics"]
        return next(t["kind"] for t in tactics if t["last_used"])

    def nothing_lost(self) -> None:
        """Every round's measurements stored once; no spool, nothing evicted or rejected."""
        for role in VOLUNTEERS:
            status = self.status(role)
            assert status["spool_depth"] == 0, status
            assert status["evicted_total"] == 0 and not status["rejected"], status
        with sqlite3.connect(self.collector.db) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT measurement_id) FROM measurements "
                "WHERE role <> 'control'"
            ).fetchone()
        stored = (int(row[0]), int(row[1]))
        targets = len(TARGETS) + 1
        assert stored == (self.rounds * targets, self.rounds * targets), stored


@pytest.fixture
def collector(fresh_lab: Lab, tmp_path: Path) -> Iterator[LabCollector]:
    served = LabCollector(
        fresh_lab, tmp_path,
        "--measure-interval", "20s", "--detect-interval", "1s",
        "--control-resolver", topo.RECURSIVE_RESOLVER, "--lab-network", topo.INTERNET_CIDR,
        "--ca-file", str(fresh_lab.ca_file), "--control-timeout", "2",
        # The lab's censor leaves no residue (residual_seconds 0): a blackhole after
        # the SNI stage is read as residue of it only within these 5 s.
        "--residual", "5s",
        env={"BLOCKWATCH_PUBLIC_URL": URL, "BLOCKWATCH_TRUSTED_PROXIES": TRUSTED_PROXIES},
    )  # fmt: skip
    served.cli("targets", "add", *TARGETS)
    served.start()
    yield served
    served.stop()


def censor(lab: Lab, **blocks: list[str]) -> None:
    lab.national.set_policy(replace(baseline_policies()[0], **blocks))


def wait_blocked(collector: LabCollector, method: str) -> dict[str, Any]:
    """The collector's own status: blocked in both networks, *method* on its open event."""
    deadline = time.monotonic() + WAIT
    status: dict[str, Any] = {}
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        status = collector.api(f"/api/v1/status/{topo.COLLECTOR_NAME}")
        events = [
            e
            for e in collector.api("/api/v1/events?limit=100")["data"]
            if e["domain"] == topo.COLLECTOR_NAME and e["state"] == "open"
        ]
        states = [n["state"] for n in status["networks"]]
        if states == ["blocked"] * len(VOLUNTEERS) and events and method in events[0]["methods"]:
            return status
        time.sleep(0.5)
    raise AssertionError(f"{topo.COLLECTOR_NAME} not blocked by {method}: {status} {events}")


@pytest.mark.timeout(900)
def test_the_censor_blocks_the_collector_and_the_probes_get_through(
    fresh_lab: Lab, collector: LabCollector, tmp_path: Path
) -> None:
    lab = fresh_lab
    volunteers = Volunteers(lab, collector, tmp_path)
    volunteers.each()  # enrolled, checked in: the plain way
    assert {volunteers.used_last(role) for role in VOLUNTEERS} == {"direct"}
    volunteers.nothing_lost()

    # 1. DNS poisoning: the forged answer leads nowhere; DoH abroad has the truth.
    censor(lab, dns_inject=[topo.COLLECTOR_NAME])
    volunteers.each()
    assert {volunteers.used_last(role) for role in VOLUNTEERS} == {"doh"}
    assert lab.dns.request(op="counts")["doh_queries"] >= 2
    volunteers.nothing_lost()
    wait_blocked(collector, "dns")

    # The operator adds a second address and a front; the probes learn them at
    # their next check-in (through DoH), in a list signed by the collector key.
    collector.stop()
    collector.serve_args = (*collector.serve_args, "--endpoint", SECOND, "--endpoint", FRONT)
    collector.start()
    volunteers.each()
    for role in VOLUNTEERS:
        assert volunteers.status(role)["endpoints"] == 3, volunteers.status(role)
    volunteers.nothing_lost()

    # 2. SNI reset of the name, wherever it goes: only the front's SNI passes.
    censor(lab, sni_rst=[topo.COLLECTOR_NAME])
    volunteers.each()
    assert {volunteers.used_last(role) for role in VOLUNTEERS} == {"front"}
    volunteers.nothing_lost()
    wait_blocked(collector, "tls")

    # 3. The name's address and the front blackholed: the listed second address.
    censor(lab, blackhole=[topo.COLLECTOR, topo.COLLECTOR_FRONT])
    volunteers.each()
    assert {volunteers.used_last(role) for role in VOLUNTEERS} == {"address"}
    volunteers.nothing_lost()
    wait_blocked(collector, "tcp_ip")

    # 4. Every address blackholed: the round waits in the spool; through a proxy
    # abroad it is delivered (the volunteer adds --proxy), and only through it.
    censor(lab, blackhole=[topo.COLLECTOR, topo.COLLECTOR_SECOND, topo.COLLECTOR_FRONT])
    for role in VOLUNTEERS:
        assert volunteers.run(role) != 0
        assert volunteers.status(role)["spool_depth"] == len(TARGETS) + 1
    before = len(lab.ctl.request(op="counts")["socks"])
    volunteers.each("--proxy", PROXY)
    asked = lab.ctl.request(op="counts")["socks"][before:]
    assert asked and all(port == 443 for _host, port in asked), asked
    volunteers.nothing_lost()
    status = wait_blocked(collector, "tcp_ip")
    assert {n["asn"] for n in status["networks"]} == set(VOLUNTEERS.values())
