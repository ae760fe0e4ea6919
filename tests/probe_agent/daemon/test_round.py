"""``blockwatch-probe run --once`` end to end: enroll, check in, measure, sign, submit.

The real command runs as a subprocess against a fake collector (which verifies
every envelope, ``tests.support.fake_collector``) and the simulated network of
loopback instances (``tests.support.simnet``); ``run_probe`` refuses any
resolver or collector off loopback. A few cases run ``run_once`` in process,
with an engine that refuses to dial off loopback.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from probe_agent.cli import EXIT_INVALID_INPUT, app
from probe_agent.daemon.client import MAX_BATCH, CollectorClient
from probe_agent.daemon.round import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    RunOptions,
    flush_spool,
    run_once,
    run_round,
)
from probe_agent.measure.engine import EngineConfig
from probe_agent.protocol.envelope import Envelope, Purpose, public_bytes, sign, verify
from probe_agent.protocol.inputs import DeclaredNetwork
from probe_agent.protocol.times import utc_now_rfc3339
from probe_agent.protocol.vocabulary import Hint
from probe_agent.state.identity import (
    KEY_FILE,
    STATE_FILE,
    Identity,
    key_id,
    load_or_create_key,
    load_state,
)
from probe_agent.state.spool import Spool
from tests.support.fake_collector import FakeCollector
from tests.support.probing import assert_no_lingering_tasks, loopback_engine, run_probe
from tests.support.simnet import SimInstance, SimulatedNetwork, free_tcp_port, run_once_args
from tests.support.tls_servers import ServerBehaviour

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

INSTANCES = [
    SimInstance("alive.example"),
    SimInstance("filtered.example", ServerBehaviour.SNI_FILTER),
    SimInstance("closed.example", ServerBehaviour.CLOSED),
]
DOMAINS = [inst.domain for inst in INSTANCES]
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
cli = CliRunner()


@pytest.fixture(autouse=True)
async def _settled() -> AsyncIterator[None]:
    yield
    await assert_no_lingering_tasks()


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_tcp_port('127.0.0.1')}"


def _assert_quiet_about_targets(text: str, net: SimulatedNetwork, collector: FakeCollector) -> None:
    """What the volunteer sees names no domain, no address and no collector URL."""
    for domain in DOMAINS:
        assert domain not in text
    assert "127.0." not in text
    assert collector.url not in text
    assert str(net.port) not in text


async def test_run_once_end_to_end(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    async with SimulatedNetwork(tmp_path, INSTANCES) as net:
        # HTTPS to the collector, trusted through the same --ca-file as the instances;
        # the first collector in the list is down.
        tls = net.pki.loopback_context()
        async with FakeCollector(targets=DOMAINS, tls=tls) as collector:
            args = run_once_args(net, state_dir, _closed_port_url(), collector.url)
            run = await run_probe([*args, "--cc", "de", "--asn", "3320"], command="run")
    assert run.returncode == EXIT_OK, run.stderr
    assert collector.problems == []
    assert run.stdout == ""
    assert "3 targets, 3 measured, 3 accepted, 0 duplicate, 0 rejected" in run.stderr
    assert "Unclosed" not in run.stderr  # aiohttp's warning for a session or connector left open
    _assert_quiet_about_targets(run.stderr, net, collector)

    # The key and the state, with their modes.
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / KEY_FILE).stat().st_mode) == 0o600
    key = load_or_create_key(state_dir)
    state = load_state(state_dir)
    (probe,) = collector.probes.values()
    assert (state.probe_id, state.status, state.key_id) == (probe.probe_id, "active", key_id(key))
    assert state.collector == collector.url
    assert collector.enrollments[0]["declared"] == {"cc": "DE", "asn": 3320}
    assert "region" not in collector.enrollments[0]  # no --region: the documents as before

    # Every measurement arrived signed by this key, for this purpose, once per target.
    assert len(collector.stored) == len(DOMAINS)
    for mid, raw in collector.envelopes.items():
        envelope = Envelope.from_json(raw)
        verify(envelope, Purpose.MEASUREMENT, public_bytes(key))
        assert envelope.payload_json() == collector.stored[mid]
    documents = {d["measurement"]["domain"]: d for d in collector.stored.values()}
    assert sorted(documents) == sorted(DOMAINS)
    for domain, document in documents.items():
        assert document["declared"] == {"cc": "DE", "asn": 3320}
        assert document["via_proxy"] is False
        assert "region" not in document
        assert RFC3339_UTC.match(document["signed_at"])
        assert document["measurement"]["measurement_id"] in collector.stored
        assert document["measurement"]["domain"] == domain
    assert documents["alive.example"]["measurement"]["http"][0]["mastodon"] is True
    assert Hint.TLS_SNI_BLOCKED in documents["filtered.example"]["measurement"]["hints"]
    assert documents["closed.example"]["measurement"]["tcp"][0]["failure"] == "connection_refused"


async def test_a_declared_region_goes_in_every_document(tmp_path: Path) -> None:
    async with (
        SimulatedNetwork(tmp_path, INSTANCES[:1]) as net,
        FakeCollector(targets=DOMAINS[:1]) as collector,
    ):
        args = run_once_args(net, tmp_path / "state", collector.url)
        run = await run_probe([*args, "--region", "cn-ha"], command="run")
    assert run.returncode == EXIT_OK, run.stderr
    assert collector.problems == []
    assert collector.enrollments[0]["region"] == "CN-HA"
    assert collector.checkins[0]["region"] == "CN-HA"
    assert [d["region"] for d in collector.stored.values()] == ["CN-HA"]


async def test_second_round_reuses_the_enrollment(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    async with (
        SimulatedNetwork(tmp_path, INSTANCES[:1]) as net,
        FakeCollector(targets=DOMAINS[:1]) as collector,
    ):
        first = await run_probe(run_once_args(net, state_dir, collector.url), command="run")
        second = await run_probe(run_once_args(net, state_dir, collector.url), command="run")
    assert (first.returncode, second.returncode) == (EXIT_OK, EXIT_OK), second.stderr
    assert len(collector.enrollments) == 1
    assert len(collector.checkins) == 2
    assert len(collector.stored) == 2  # a new measurement id each round
    assert collector.problems == []


@pytest.mark.parametrize("failure", ["http-500", "rejected"])
async def test_a_failed_submission_exits_non_zero(tmp_path: Path, failure: str) -> None:
    async with (
        SimulatedNetwork(tmp_path, INSTANCES[:1]) as net,
        FakeCollector(targets=DOMAINS[:1]) as collector,
    ):
        if failure == "http-500":
            collector.script("/measurements", 500)
        else:
            collector.reject_with = "err_timestamp_out_of_window"
        run = await run_probe(run_once_args(net, tmp_path / "s", collector.url), command="run")
    assert run.returncode == EXIT_INCOMPLETE
    assert collector.stored == {}
    if failure == "http-500":
        assert "error: submitting" in run.stderr
        assert "HTTP 500 err_internal" in run.stderr
        assert "1 not submitted" in run.stderr
    else:
        assert "1 measured, 0 accepted, 0 duplicate, 1 rejected" in run.stderr
    _assert_quiet_about_targets(run.stderr, net, collector)


async def test_no_collector_answers(tmp_path: Path) -> None:
    async with SimulatedNetwork(tmp_path, INSTANCES[:1]) as net:
        run = await run_probe(run_once_args(net, tmp_path / "s", _closed_port_url()), command="run")
        queries = list(net.dns.queries)
    assert run.returncode == EXIT_INCOMPLETE
    assert "no collector answered (collector 1: connection refused)" in run.stderr
    assert "Traceback" not in run.stderr
    assert queries == []  # no targets, nothing measured


async def test_pending_probe_waits_for_approval(tmp_path: Path) -> None:
    async with (
        SimulatedNetwork(tmp_path, INSTANCES[:1]) as net,
        FakeCollector(targets=DOMAINS[:1], open_enrollment=False) as collector,
    ):
        run = await run_probe(run_once_args(net, tmp_path / "s", collector.url), command="run")
    assert run.returncode == EXIT_INCOMPLETE
    assert "waits for the collector's admin to approve it" in run.stderr
    assert "err_probe_pending" in run.stderr
    assert load_state(tmp_path / "s").status == "pending"
    assert collector.stored == {}


async def test_enroll_token_and_collector_from_the_environment(tmp_path: Path) -> None:
    async with (
        SimulatedNetwork(tmp_path, INSTANCES[:1]) as net,
        FakeCollector(targets=DOMAINS[:1], open_enrollment=False, tokens={"bwt_t"}) as collector,
    ):
        env = {"BLOCKWATCH_ENROLL_TOKEN": "bwt_t", "BLOCKWATCH_COLLECTOR": collector.url}
        args = ["--once", "--state-dir", str(tmp_path / "s"), *net.probe_args()]
        run = await run_probe(args, command="run", extra_env=env)
    assert run.returncode == EXIT_OK, run.stderr
    assert collector.enrollments[0]["token"] == "bwt_t"
    assert len(collector.stored) == 1


async def test_a_world_readable_key_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    load_or_create_key(state_dir)
    (state_dir / KEY_FILE).chmod(0o644)
    async with (
        SimulatedNetwork(tmp_path, INSTANCES[:1]) as net,
        FakeCollector(targets=DOMAINS[:1]) as collector,
    ):
        run = await run_probe(run_once_args(net, state_dir, collector.url), command="run")
    assert run.returncode == EXIT_INVALID_INPUT
    assert "chmod 600" in run.stderr
    assert collector.received == []  # refused before anything was sent


async def test_a_collector_that_forgot_the_key_gets_it_enrolled_again(tmp_path: Path) -> None:
    lines: list[str] = []
    async with SimulatedNetwork(tmp_path, INSTANCES[:1]) as net:
        for _ in range(2):  # a fresh collector each time: the second one never saw the key
            async with FakeCollector(targets=DOMAINS[:1]) as collector:
                options = RunOptions(
                    collectors=(collector.url,),
                    state_dir=tmp_path / "s",
                    engine=net.engine_config(),
                    declared=DeclaredNetwork("NL", 1136),
                )
                status = await run_once(options, report=lines.append, make_engine=loopback_engine)
            assert status == EXIT_OK, lines
            assert len(collector.enrollments) == 1
            assert len(collector.stored) == 1
            assert collector.problems == []
    assert len(lines) == 2
    assert all(line.startswith("round: 1 targets, 1 measured, 1 accepted") for line in lines)


async def test_no_targets_is_a_complete_round(tmp_path: Path) -> None:
    lines: list[str] = []
    async with (
        SimulatedNetwork(tmp_path, INSTANCES[:1]) as net,
        FakeCollector(targets=[]) as collector,
    ):
        options = RunOptions((collector.url,), tmp_path / "s", net.engine_config())
        status = await run_once(options, report=lines.append, make_engine=loopback_engine)
    assert status == EXIT_OK
    assert lines == ["round: 0 targets, 0 measured, 0 accepted, 0 duplicate, 0 rejected"]
    assert [r.path for r in collector.received] == ["/probes/enroll", "/probes/checkin"]


async def test_a_pending_status_in_a_200_checkin_is_not_a_complete_round(tmp_path: Path) -> None:
    lines: list[str] = []
    async with (
        SimulatedNetwork(tmp_path, INSTANCES[:1]) as net,
        FakeCollector(targets=DOMAINS[:1]) as collector,
    ):
        answer = {
            "probe_id": "p_0001",
            "status": "pending",
            "server_time": "2026-01-01T00:00:00Z",
            "interval_seconds": 300,
            "retest_spacing_seconds": 180,
            "network": {"cc": None, "asn": None, "source": "unknown"},
            "targets": [],
        }
        collector.script("/probes/checkin", 200, json.dumps(answer).encode())
        options = RunOptions((collector.url,), tmp_path / "s", net.engine_config())
        status = await run_once(options, report=lines.append, make_engine=loopback_engine)
    assert status == EXIT_INCOMPLETE
    assert lines == [
        "error: this probe waits for the collector's admin to approve it (status pending)"
    ]


# -- the command line: validation (exit 2, nothing sent) and `id` ---------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--collector", "ftp://c.example"], "invalid collector URL"),
        (["--collector", "https://u:p@c.example"], "credentials"),
        (["--collector", "http://127.0.0.1:1", "--cc", "Germany", "--asn", "3320"], "country"),
        (["--collector", "http://127.0.0.1:1", "--cc", "DE"], "--cc and --asn go together"),
        (["--collector", "http://127.0.0.1:1", "--cc", "DE", "--asn", "0"], "--asn"),
        (["--collector", "http://127.0.0.1:1", "--cc", "DE", "--asn", "4294967295"], "--asn"),
        ([], "no collector given"),
        (["--collector", "http://127.0.0.1:1", "--region", "Henan"], "invalid region"),
        (
            [
                "--collector",
                "http://127.0.0.1:1",
                "--cc",
                "DE",
                "--asn",
                "3320",
                "--region",
                "CN-HA",
            ],
            "region CN-HA is not in the declared country DE",
        ),
    ],
    ids=[
        "scheme",
        "credentials",
        "cc",
        "cc-alone",
        "asn-0",
        "asn-too-big",
        "no-collector",
        "region",
        "region-elsewhere",
    ],
)
def test_invalid_run_options_exit_2(tmp_path: Path, extra: list[str], message: str) -> None:
    args = ["run", "--once", "--state-dir", str(tmp_path / "s"), "--resolver", "127.0.0.1:1"]
    result = cli.invoke(app, [*args, *extra], env={"BLOCKWATCH_COLLECTOR": ""})
    assert result.exit_code == EXIT_INVALID_INPUT, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "s").exists()  # nothing was created, nothing sent


@pytest.mark.parametrize("value", ["soon", "0s", "-5m", "2d"])
def test_invalid_durations_exit_2(tmp_path: Path, value: str) -> None:
    args = ["run", "--collector", "http://127.0.0.1:1", "--state-dir", str(tmp_path / "s")]
    result = cli.invoke(app, [*args, "--resolver", "127.0.0.1:1", "--interval", value])
    assert result.exit_code == EXIT_INVALID_INPUT
    assert "invalid duration" in result.output


def test_id_prints_a_stable_fingerprint(tmp_path: Path) -> None:
    first = cli.invoke(app, ["id", "--state-dir", str(tmp_path / "s")])
    second = cli.invoke(app, ["id"], env={"BLOCKWATCH_STATE_DIR": str(tmp_path / "s")})
    assert first.exit_code == second.exit_code == 0
    assert re.fullmatch(r"[0-9a-f]{64}\n", first.stdout)
    assert first.stdout == second.stdout
    assert first.stdout.strip() == key_id(load_or_create_key(tmp_path / "s"))


def test_id_uses_the_default_state_dir(tmp_path: Path) -> None:
    result = cli.invoke(app, ["id"], env={"HOME": str(tmp_path), "BLOCKWATCH_STATE_DIR": None})
    assert result.exit_code == 0, result.output
    state_dir = tmp_path / ".local/state/blockwatch"
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert (state_dir / KEY_FILE).is_file()
    assert not (state_dir / STATE_FILE).exists()  # not enrolled anywhere yet


def test_id_refuses_a_world_readable_key(tmp_path: Path) -> None:
    load_or_create_key(tmp_path / "s")
    (tmp_path / "s" / KEY_FILE).chmod(0o644)
    result = cli.invoke(app, ["id", "--state-dir", str(tmp_path / "s")])
    assert result.exit_code == EXIT_INVALID_INPUT
    assert "group or others can access it" in " ".join(result.output.split())  # rich wraps


async def test_a_failed_submission_stays_in_the_spool_and_goes_next_round(tmp_path: Path) -> None:
    from probe_agent.state.status import read_status

    state = tmp_path / "s"
    async with (
        SimulatedNetwork(tmp_path, INSTANCES[:1]) as net,
        FakeCollector(targets=DOMAINS[:1]) as collector,
    ):
        collector.script("/measurements", 503)
        first = await run_probe(run_once_args(net, state, collector.url), command="run")
        assert first.returncode == EXIT_INCOMPLETE
        assert "1 kept in the spool" in first.stderr
        with Spool(state) as spool:
            assert spool.depth() == 1
        assert read_status(state).last_error is not None
        second = await run_probe(run_once_args(net, state, collector.url), command="run")
        assert second.returncode == 0, second.stderr
    # The kept measurement and this round's: each stored once, the spool empty.
    assert len(collector.stored) == 2
    with Spool(state) as spool:
        assert spool.depth() == 0
    assert collector.checkins[-1]["spool"]["depth"] == 1  # reported at the second check-in
    assert collector.problems == []


# -- the round's result and its batches ---------------------------------------------


def _checkin_answer(interval: float, spacing: float) -> bytes:
    return json.dumps(
        {
            "probe_id": "p_0001",
            "status": "active",
            "server_time": "2026-01-01T00:00:00Z",
            "interval_seconds": interval,
            "retest_spacing_seconds": spacing,
            "network": {"cc": None, "asn": None, "source": "unknown"},
            "targets": [],
        }
    ).encode()


async def test_the_round_answers_the_schedule_its_checkin_handed_out(tmp_path: Path) -> None:
    """The daemon waits by the round's result, not by what it reads back from state.json."""
    async with (
        SimulatedNetwork(tmp_path, INSTANCES[:1]) as net,
        FakeCollector(targets=[]) as collector,
    ):
        collector.script("/probes/checkin", 200, _checkin_answer(42, 7))
        options = RunOptions((collector.url,), tmp_path / "s", net.engine_config())
        result = await run_round(options, report=lambda _: None, make_engine=loopback_engine)
    assert result.exit_status == EXIT_OK
    assert (result.schedule.interval_seconds, result.schedule.retest_spacing_seconds) == (42, 7)


async def test_an_unreachable_collector_answers_the_last_schedule_recorded(tmp_path: Path) -> None:
    async with SimulatedNetwork(tmp_path, INSTANCES[:1]) as net:
        async with FakeCollector(targets=[]) as collector:
            collector.script("/probes/checkin", 200, _checkin_answer(42, 7))
            options = RunOptions((collector.url,), tmp_path / "s", net.engine_config())
            await run_round(options, report=lambda _: None, make_engine=loopback_engine)
        lines: list[str] = []
        gone = RunOptions((_closed_port_url(),), tmp_path / "s", net.engine_config())
        result = await run_round(gone, report=lines.append, make_engine=loopback_engine)
    assert result.exit_status == EXIT_INCOMPLETE
    assert (result.schedule.interval_seconds, result.schedule.retest_spacing_seconds) == (42, 7)
    assert lines[0].startswith("error: no collector answered")


async def test_the_spool_goes_out_in_batches_of_at_most_100(tmp_path: Path) -> None:
    state = tmp_path / "s"
    async with FakeCollector(targets=[]) as collector:
        identity = Identity.open(state)
        async with CollectorClient([collector.url], identity.key) as client:
            answer = await client.enroll(None)
        identity.record(probe_id=answer["probe_id"], status=answer["status"])
        mids = [f"measurement-{i:04d}" for i in range(2 * MAX_BATCH + 50)]
        with Spool(state) as spool:
            for mid in mids:
                document = {
                    "measurement": {"measurement_id": mid, "domain": "alive.example"},
                    "signed_at": utc_now_rfc3339(),
                    "declared": None,
                    "via_proxy": False,
                }
                envelope = sign(identity.key, Purpose.MEASUREMENT, document)
                spool.put(envelope, utc_now_rfc3339(), mid)
        options = RunOptions((collector.url,), state, EngineConfig(resolvers=()))
        status = await flush_spool(options, report=lambda _: None)
    assert status == EXIT_OK
    assert [r.items for r in collector.received if r.path == "/measurements"] == [100, 100, 50]
    assert sorted(collector.stored) == mids
    with Spool(state) as spool:
        assert spool.depth() == 0


async def test_rounds_draw_their_decoy_from_the_pool_and_set_aside_a_blocked_one(
    tmp_path: Path,
) -> None:
    """The operator's pool is used; a decoy the network resets where the instance's own
    name goes through is set aside, and later rounds draw the other one."""
    pool = ["decoy-a.example", "decoy-b.example"]
    lines: list[str] = []
    async with (
        SimulatedNetwork(
            tmp_path, [SimInstance("alive.example", ServerBehaviour.SNI_FILTER)]
        ) as net,
        FakeCollector(targets=["alive.example"], decoys=pool) as collector,
    ):
        server = net.server_of("alive.example")
        server.blocked_sni = {"decoy-a.example"}  # the decoy is filtered, the instance not
        options = RunOptions(
            (collector.url,), tmp_path / "s", net.engine_config(), jitter=0,
            declared=DeclaredNetwork("CN", 4134),
        )  # fmt: skip
        for _ in range(30):  # each round draws: a shows up soon (2^-30 it never does)
            await run_once(options, report=lines.append, make_engine=loopback_engine)
            if "decoy-a.example" in server.seen_sni:
                break
        used_before = len(server.seen_sni)
        for _ in range(5):
            await run_once(options, report=lines.append, make_engine=loopback_engine)
    assert "decoy-a.example" in server.seen_sni
    later = [s for s in server.seen_sni[used_before:] if s != "alive.example"]
    assert later and set(later) == {"decoy-b.example"}
    decoys_used = {d["measurement"]["decoy_sni"] for d in collector.stored.values()}
    assert decoys_used == set(pool) and collector.problems == []
    blocked = [d for d in collector.stored.values() if d["measurement"]["decoy_sni"] == pool[0]]
    assert all("tls_sni_blocked" not in d["measurement"]["hints"] for d in blocked)


async def test_targets_are_measured_in_another_order_each_round(tmp_path: Path) -> None:
    names = [f"i{n}.example" for n in range(6)]
    orders: list[list[str]] = []
    async with (
        SimulatedNetwork(tmp_path, [SimInstance(n) for n in names]) as net,
        FakeCollector(targets=names) as collector,
    ):
        options = RunOptions(
            (collector.url,), tmp_path / "s", net.engine_config(), concurrency=1, jitter=0
        )
        for _ in range(4):
            before = set(collector.stored)
            await run_once(options, report=lambda _line: None, make_engine=loopback_engine)
            orders.append(
                [d["measurement"]["domain"] for m, d in collector.stored.items() if m not in before]
            )
    assert all(sorted(order) == names for order in orders)
    assert len({tuple(order) for order in orders}) > 1  # 4 rounds alike: (1/720)^3
