"""Telling blocks from outages, end to end in the lab.

The collector runs in ``col`` with a 4-second interval, its control prober on
the internet side; four volunteers' probes (``blockwatch-probe run``, the real
daemon) run in cn-a and cn-b. Each scenario switches the censors or the servers
at run time and reads the collector's own API: which events open, with which
methods, scope and networks, how soon after the onset, and that they close
once the block is lifted. Outages, a lying probe and residual blocking must
open nothing. The latencies are printed at the end of the module (run with -s)
and written to ``detection-latency.json`` in the run's directory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.lab import topology as topo
from tests.lab.lab import Lab
from tests.lab.scenarios import RESIDUAL_SECONDS, baseline_policies, national, regional, server
from tests.lab.served import BIN, LabCollector

pytestmark = pytest.mark.lab

INTERVAL = 4.0
CN_A, CN_B = 4134, 4837
PROBES = {"a1": CN_A, "a2": CN_A, "b1": CN_B, "b2": CN_B}
OTHERS = ["pawoo.test", "cmx.test", "shared.test", "o3o.test", "g0v.test", "mstdn.test", "wxw.test"]
TARGETS = ["alive.test", "alive-mirror.test", *OTHERS]
# Generous bounds for the waits: the goals are measured and reported, not asserted.
OPEN_TIMEOUT = 12 * INTERVAL
CLOSE_TIMEOUT = 12 * INTERVAL


def parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


@dataclass
class Stack:
    lab: Lab
    collector: LabCollector
    directory: Path
    probes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    opened: list[float] = field(default_factory=list)  # onset -> detected_at, seconds
    starts: list[float] = field(default_factory=list)  # onset -> started_at, seconds
    closed: list[float] = field(default_factory=list)  # lift -> closed_at, seconds
    alerted: list[float] = field(default_factory=list)  # onset -> webhook received, seconds
    downs: list[float] = field(default_factory=list)  # outage -> status "down" everywhere
    first_downs: list[float] = field(default_factory=list)  # outage -> one network "down"
    false_events: list[dict[str, Any]] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.collector.api("/api/v1/events?limit=1000")["data"]
        return data

    def open_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["state"] == "open"]

    def since(self, onset: datetime) -> list[dict[str, Any]]:
        return [e for e in self.events() if parse_time(e["detected_at"]) >= onset]  # type: ignore[operator]

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.5)
        log = self.collector.log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"timed out waiting for {what}; events: {self.events()}\n{log}")

    def quiet(self) -> None:
        """Every censor and server back to normal, and every event closed."""
        self.lab.reset()
        self.wait(lambda: not self.open_events(), CLOSE_TIMEOUT, "every event to close")

    def start_probe(self, role: str, *extra: str) -> subprocess.Popen[bytes]:
        # Each probe is its own volunteer, vouched for the network it declares (the lab
        # cannot geolocate its private addresses): one token each.
        asn = PROBES.get(role, CN_A)
        token = self.collector.cli(
            "probes", "token", "--cc", "CN", "--asn", str(asn), "--note", f"lab {role}"
        ).strip()
        argv = [
            str(BIN / "blockwatch-probe"), "run", "--collector", self.collector.url,
            "--state-dir", str(self.directory / role), "--cc", "CN",
            "--asn", str(asn), "--ca-file", str(self.lab.ca_file),
            "--lab-network", topo.INTERNET_CIDR, "--resolver", topo.RECURSIVE_RESOLVER,
            "--timeout", "2", "--interval", f"{INTERVAL}s",
            # No spacing: the collector must recognise residue on its own.
            "--retest-spacing", "0.1s", *extra,
        ]  # fmt: skip
        with (self.directory / f"{role}.log").open("ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.lab.ns(role[:2]), *argv],
                stdout=log,
                stderr=log,
                env={**os.environ, "BLOCKWATCH_ENROLL_TOKEN": token},
            )
        self.probes.append(proc)
        return proc

    def block(
        self,
        setup: Callable[[Lab], None],
        expected: dict[str, tuple[list[str], str, list[int]]],
        *,
        settle: float = 3 * INTERVAL,
    ) -> None:
        """Apply *setup*; exactly the *expected* events open, then close when lifted."""
        self.quiet()
        onset = datetime.now(UTC)
        setup(self.lab)

        def all_open() -> bool:
            seen = {e["domain"] for e in self.since(onset) if e["state"] == "open"}
            return set(expected) <= seen

        self.wait(all_open, OPEN_TIMEOUT, f"events for {sorted(expected)}")
        time.sleep(settle)  # time for a wrong event to open, if one would
        events = self.since(onset)
        wrong = [e for e in events if e["domain"] not in expected]
        self.false_events += wrong
        assert not wrong, f"false events: {wrong}"
        assert sorted(e["domain"] for e in events) == sorted(expected), events
        for event in events:
            methods, scope, asns = expected[event["domain"]]
            assert (event["methods"], event["scope"], event["asns"]) == (methods, scope, asns), (
                event
            )
            assert event["cc"] == "CN" and event["probes"] >= 2
            assert event["evidence"] and event["rule_version"] and event["forged_pool_version"]
            detected = parse_time(event["detected_at"])
            started = parse_time(event["started_at"])
            assert detected is not None and started is not None
            self.opened.append((detected - onset).total_seconds())
            self.starts.append((started - onset).total_seconds())
            # started_at is the first blocked evidence: within one interval of the onset
            # (a round that began just before the onset may carry it, a little earlier).
            assert -INTERVAL <= (started - onset).total_seconds() <= INTERVAL * 1.1 + 1, event
        lifted = datetime.now(UTC)
        self.lab.reset()
        ids = {e["id"] for e in events}

        def all_closed() -> bool:
            return not [e for e in self.events() if e["id"] in ids and e["state"] == "open"]

        self.wait(all_closed, CLOSE_TIMEOUT, "the events to close")
        for event in self.events():
            if event["id"] in ids:
                closed = parse_time(event["closed_at"])
                assert closed is not None and event["ended_at"] is not None
                self.closed.append((closed - lifted).total_seconds())

    def nothing_opens(
        self,
        setup: Callable[[Lab], None],
        duration: float = 5 * INTERVAL,
        down: str | None = None,
    ) -> None:
        """Apply *setup*; no event opens. With *down*, that domain's status turns
        ``down`` in every network, and the time it took is recorded."""
        self.quiet()
        onset = datetime.now(UTC)
        setup(self.lab)
        if down is not None:

            def down_everywhere() -> bool:
                networks = self.collector.api(f"/api/v1/status/{down}")["networks"]
                states = [n["state"] for n in networks]
                if "down" in states and len(self.first_downs) < len(self.downs) + 1:
                    self.first_downs.append((datetime.now(UTC) - onset).total_seconds())
                return bool(states) and all(state == "down" for state in states)

            self.wait(down_everywhere, OPEN_TIMEOUT, f"{down} to be down everywhere")
            self.downs.append((datetime.now(UTC) - onset).total_seconds())
        time.sleep(max(0.0, duration - (datetime.now(UTC) - onset).total_seconds()))
        wrong = self.since(onset)
        self.false_events += wrong
        assert wrong == [], wrong

    def report(self) -> dict[str, Any]:
        def summary(values: list[float]) -> dict[str, float] | None:
            if not values:
                return None
            return {
                "n": len(values),
                "median_s": round(statistics.median(values), 2),
                "max_s": round(max(values), 2),
                "median_intervals": round(statistics.median(values) / INTERVAL, 2),
                "max_intervals": round(max(values) / INTERVAL, 2),
            }

        return {
            "interval_s": INTERVAL,
            "onset_to_event": summary(self.opened),
            "onset_to_started_at": summary(self.starts),
            "lift_to_close": summary(self.closed),
            "onset_to_webhook": summary(self.alerted),
            "outage_to_down": summary(self.downs),  # every network (every volunteer)
            "outage_to_first_down": summary(self.first_downs),  # one network (two volunteers)
            "false_events": len(self.false_events),
        }


@pytest.fixture(scope="module")
def stack(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("detection")
    collector = LabCollector(
        lab, directory,
        "--measure-interval", f"{INTERVAL}s", "--detect-interval", "1s",
        "--control-resolver", topo.RECURSIVE_RESOLVER, "--lab-network", topo.INTERNET_CIDR,
        "--ca-file", str(lab.ca_file), "--control-timeout", "2",
        "--residual", f"{RESIDUAL_SECONDS}s", "--webhook-allow-private",
        env={"BLOCKWATCH_ALERT_UPDATE_INTERVAL": "8", "BLOCKWATCH_ALERT_INTERVAL": "0.2",
             # The receiver lives in the lab's internet, 198.18.0.0/15: not public.
             "BLOCKWATCH_WEBHOOK_ALLOWLIST": topo.INTERNET_CIDR},
    )  # fmt: skip
    collector.cli("targets", "add", "alive.test", "--group", "alive")
    collector.cli("targets", "add", "alive-mirror.test", "--group", "alive", "--kind", "mirror")
    collector.cli("targets", "add", *OTHERS)
    lab.reset()
    collector.start()
    running = Stack(lab, collector, directory)
    try:
        for role in PROBES:
            running.start_probe(role)
        # Everyone has reported, and the first verdicts are in: ok everywhere.
        running.wait(
            lambda: len(running.collector.api("/api/v1/status/alive.test")["networks"]) == 2,
            OPEN_TIMEOUT,
            "the first verdicts from both networks",
        )
        yield running
    finally:
        for proc in running.probes:
            proc.terminate()
        for proc in running.probes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        collector.stop()
        report = running.report()
        (directory / "detection-latency.json").write_text(json.dumps(report, indent=2))
        print("\ndetection latency in the lab:", json.dumps(report, indent=2))


def test_healthy_network_status_and_mirrors(stack: Stack) -> None:
    stack.quiet()

    def every_probe_ok() -> bool:
        networks = stack.collector.api("/api/v1/status/alive.test")["networks"]
        return len(networks) == 2 and all(n["state"] == "ok" and n["probes"] == 2 for n in networks)

    stack.wait(every_probe_ok, OPEN_TIMEOUT, "alive.test ok from all four probes")
    status = stack.collector.api("/api/v1/status/alive.test")
    assert {(n["cc"], n["asn"]) for n in status["networks"]} == {("CN", CN_A), ("CN", CN_B)}
    [mirror] = status["mirrors"]
    assert mirror["domain"] == "alive-mirror.test" and mirror["kind"] == "mirror"
    assert status["events"] == []


def test_the_public_sees_one_country_row_and_rounded_times(stack: Stack) -> None:
    """At the default K (3) the lab's two networks of two volunteers are named to no one."""
    stack.quiet()

    def folded() -> list[dict[str, Any]]:
        return stack.collector.api("/api/v1/status/alive.test", admin=False)["networks"]  # type: ignore[no-any-return]

    # Every volunteer of both networks counted, in the one country row.
    stack.wait(lambda: [(n["asn"], n["probes"]) for n in folded()] == [(None, 4)],
               OPEN_TIMEOUT, "one country row of four volunteers")  # fmt: skip
    [country] = folded()
    assert (country["cc"], country["state"]) == ("CN", "ok")
    admin = stack.collector.api("/api/v1/status/alive.test")
    assert {n["asn"] for n in admin["networks"]} == {CN_A, CN_B}
    for time_ in (country["since"], country["updated_at"]):
        seconds = parse_time(time_).timestamp()  # type: ignore[union-attr]
        assert seconds % INTERVAL == 0, time_  # rounded down to the 4 s interval


def test_live_bar_dns_injection_and_sni_reset(stack: Stack) -> None:
    stack.block(
        national(dns_inject=["alive.test"], sni_rst=["alive.test"]),
        {"alive.test": (["dns", "tls"], "national", [CN_A, CN_B])},
    )


def test_mirror_status_while_the_instance_is_blocked(stack: Stack) -> None:
    stack.quiet()
    onset = datetime.now(UTC)
    national(sni_rst=["alive.test"])(stack.lab)
    stack.wait(
        lambda: any(e["domain"] == "alive.test" for e in stack.since(onset)),
        OPEN_TIMEOUT,
        "the event",
    )

    def blocked_in_both() -> bool:
        networks = stack.collector.api("/api/v1/status/alive.test")["networks"]
        return {n["state"] for n in networks} == {"blocked"}

    # The event opens as soon as two probes agree; the other network joins it after.
    stack.wait(blocked_in_both, OPEN_TIMEOUT, "both networks to see the block")
    status = stack.collector.api("/api/v1/status/alive.test")
    assert all(n["methods"] == ["tls"] for n in status["networks"])
    [mirror] = status["mirrors"]
    assert {n["state"] for n in mirror["networks"]} == {"ok"}  # tell users to use the mirror


def test_june_wave_five_instances_five_techniques(stack: Stack) -> None:
    def wave(lab: Lab) -> None:
        lab.national.set_policy(
            replace(
                baseline_policies()[0],
                dns_inject=["pawoo.test"],
                sni_rst=["cmx.test"],
                blackhole=[lab.ip_of("o3o.test")],
                dns_nxdomain=["g0v.test"],
                mitm=[lab.ip_of("mstdn.test")],
            )
        )

    both = [CN_A, CN_B]
    stack.block(
        wave,
        {
            "pawoo.test": (["dns"], "national", both),
            "cmx.test": (["tls"], "national", both),
            "o3o.test": (["tcp_ip"], "national", both),
            "g0v.test": (["dns"], "national", both),
            "mstdn.test": (["tls"], "national", both),
        },
    )


def test_regional_block_in_cn_b_only(stack: Stack) -> None:
    stack.block(regional(sni_rst=["o3o.test"]), {"o3o.test": (["tls"], "regional", [CN_B])})


def test_instance_down_is_down_everywhere_and_no_event(stack: Stack) -> None:
    stack.nothing_opens(server("g0v.test", "closed"), down="g0v.test")
    networks = stack.collector.api("/api/v1/status/g0v.test")["networks"]
    assert {(n["asn"], n["state"]) for n in networks} == {(CN_A, "down"), (CN_B, "down")}


def test_authoritative_dns_down_is_no_event(stack: Stack) -> None:
    stack.nothing_opens(lambda lab: lab.dns.request(op="authoritative", up=False),
                        down="wxw.test")  # fmt: skip
    networks = stack.collector.api("/api/v1/status/wxw.test")["networks"]
    assert {n["state"] for n in networks} == {"down"}


def test_a_lying_probe_opens_nothing(stack: Stack) -> None:
    # A token that vouches for no network: the liar's declared CN_A is seen by
    # operators but never votes (and, vouched, it would be one against two).
    token = stack.collector.cli("probes", "token").strip()
    log_path = stack.directory / "liar.log"
    with log_path.open("ab") as log:
        liar = subprocess.Popen(
            ["ip", "netns", "exec", stack.lab.ns("a1"), str(BIN / "python"), "-m",
             "tests.lab.liar", stack.collector.url, token, "wxw.test", "CN", str(CN_A),
             str(INTERVAL), stack.lab.ip_of("wxw.test")],
            stdout=log, stderr=log,
        )  # fmt: skip
    try:
        stack.nothing_opens(lambda lab: None, duration=6 * INTERVAL)
        assert liar.poll() is None, log_path.read_text(errors="replace")
        networks = stack.collector.api("/api/v1/status/wxw.test")["networks"]
        a = next(n for n in networks if n["asn"] == CN_A)
        assert a["state"] == "ok" and a["probes"] == 2  # the liar is not counted
    finally:
        liar.terminate()
        liar.wait(timeout=10)


def test_residual_blocking_opens_no_event_for_the_neighbour(stack: Stack) -> None:
    both = [CN_A, CN_B]
    stack.block(
        national(sni_rst=["cmx.test"], residual_seconds=RESIDUAL_SECONDS),
        {"cmx.test": (["tls"], "national", both)},
        settle=5 * INTERVAL,
    )


def test_alerts_opened_updated_closed_once_each(stack: Stack) -> None:
    """A block in cn-a, spreading to cn-b, then lifted: three signed webhooks."""
    from standardwebhooks.webhooks import Webhook

    stack.quiet()
    log_path = stack.directory / "webhooks.jsonl"
    receiver_ip, port = topo.CONTROL_VANTAGE, 9000
    with (stack.directory / "receiver.log").open("ab") as out:
        receiver = subprocess.Popen(
            ["ip", "netns", "exec", stack.lab.ns("ctl"), str(BIN / "python"), "-m",
             "tests.lab.receiver", receiver_ip, str(port), str(log_path)],
            stdout=out, stderr=out,
        )  # fmt: skip
    added = ""
    try:
        probe = f"import socket; socket.create_connection(({receiver_ip!r}, {port}), 1).close()"
        stack.wait(
            lambda: stack.lab.exec("col", [sys.executable, "-c", probe]).returncode == 0,
            20,
            "the receiver",
        )
        added = stack.collector.cli(
            "subscriptions", "add", "alive.test", "--setting",
            f"url=http://{receiver_ip}:{port}/hook",
        )  # fmt: skip
        secret = next(w for w in added.split() if w.startswith("whsec_"))

        def received() -> list[dict[str, Any]]:
            if not log_path.exists():
                return []
            lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
            unique = {x["headers"]["webhook-id"]: x for x in lines}  # dedupe, as told
            return sorted(unique.values(), key=lambda x: x["at"])

        def types() -> list[str]:
            return [json.loads(x["body"])["type"] for x in received()]

        onset = time.time()
        cn_a_only = [topo.NETWORKS[0].cidr]
        national(sni_rst=["alive.test"], inside=cn_a_only)(stack.lab)
        stack.wait(lambda: types() == ["block.opened"], OPEN_TIMEOUT, "block.opened")
        stack.alerted.append(received()[0]["at"] - onset)
        national(sni_rst=["alive.test"])(stack.lab)  # spreads to cn-b
        stack.wait(lambda: "block.updated" in types(), OPEN_TIMEOUT, "block.updated")
        stack.lab.reset()
        stack.wait(lambda: "block.closed" in types(), CLOSE_TIMEOUT, "block.closed")
        time.sleep(2 * INTERVAL)  # nothing else may follow
        assert types() == ["block.opened", "block.updated", "block.closed"]
        for message in received():
            headers = {k.lower(): v for k, v in message["headers"].items()}
            body = message["body"].encode()
            document = Webhook(secret).verify(body, headers)  # independent of our code
            expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            assert headers["x-hub-signature-256"] == expected
            assert document["data"]["domain"] == "alive.test"
        opened, updated, closed = (json.loads(x["body"])["data"] for x in received())
        # Alerts are k-anonymous (default K = 3): two volunteers a network name none of them.
        assert (opened["scope"], opened["asns"], opened["withheld_networks"]) == ("regional", [], 1)
        assert (updated["scope"], updated["asns"], updated["withheld_networks"]) == (
            "national", [], 2,
        )  # fmt: skip
        assert closed["state"] == "closed" and closed["ended_at"]
        assert opened["mirrors"] == [
            {"domain": "alive-mirror.test", "kind": "mirror", "state": "ok"}
        ]
    finally:
        if added:
            stack.collector.cli("subscriptions", "delete", added.split()[1])
        receiver.terminate()
        receiver.wait(timeout=10)


def test_report_goals(stack: Stack) -> None:
    """Runs last: the figures of the scenarios above (asserted only for false events)."""
    report = stack.report()
    assert report["false_events"] == 0
    if report["onset_to_event"] is None:
        pytest.skip("no block scenario ran (a subset was selected)")
