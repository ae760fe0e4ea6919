"""The daemon: rounds at the interval, backoff, retest spacing, SIGTERM, outages."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from probe_agent.daemon import loop
from probe_agent.daemon.loop import FIRST_BACKOFF, AddressSpacer, next_wait
from probe_agent.daemon.round import EXIT_OK, RoundResult, RunOptions
from probe_agent.measure.engine import EngineConfig
from probe_agent.protocol.inputs import parse_duration
from probe_agent.state.spool import Spool
from probe_agent.state.status import Schedule
from tests.support.fake_collector import FakeCollector
from tests.support.simnet import SimInstance, SimulatedNetwork

PROBE = str(Path(sys.executable).parent / "blockwatch-probe")


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("90", "30s", "5m", "2h", "0.5s")] == [
        90,
        30,
        300,
        7200,
        0.5,
    ]


def test_next_wait_jitter_and_backoff() -> None:
    rng = random.Random(1)
    waits = [next_wait(True, 0, 300, rng) for _ in range(200)]
    assert min(waits) >= 270
    assert max(waits) <= 330
    assert len({round(w) for w in waits}) > 20  # jitter: probes do not knock at once
    backoffs = [next_wait(False, n, 300, random.Random(2)) for n in (1, 2, 3, 4, 10)]
    assert FIRST_BACKOFF * 0.5 <= backoffs[0] <= FIRST_BACKOFF
    assert backoffs[1] > backoffs[0]
    assert backoffs[-1] <= 300  # never longer than the interval


async def test_address_spacer_spaces_one_triple_not_others() -> None:
    now = [1000.0]
    spacer = AddressSpacer(180.0, clock=lambda: now[0])
    await spacer.wait("198.18.1.1", 443)
    await spacer.wait("198.18.1.2", 443)  # another address: no wait
    await spacer.wait("198.18.1.1", 80)  # another port: no wait
    assert spacer._last[("198.18.1.1", 443)] == 1000.0
    task = asyncio.create_task(spacer.wait("198.18.1.1", 443))
    await asyncio.sleep(0)
    # The second measurement of the triple is held until 180 s after the first.
    assert spacer._last[("198.18.1.1", 443)] == 1180.0
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_daemon_rounds_then_sigterm_flushes_and_exits_0(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with (
        SimulatedNetwork(tmp_path / "net", [SimInstance("a.example")]) as net,
        FakeCollector(targets=["a.example"]) as collector,
    ):
        proc = await asyncio.create_subprocess_exec(
            PROBE,
            "run",
            "--collector",
            collector.url,
            "--state-dir",
            str(state),
            "--interval",
            "1s",
            "--retest-spacing",
            "0.5s",
            *net.probe_args(),
            stderr=asyncio.subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if not k.startswith("BLOCKWATCH_")},
        )
        for _ in range(200):
            if len(collector.stored) >= 2:
                break
            await asyncio.sleep(0.1)
        assert len(collector.checkins) >= 2  # it keeps going on its own
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 0, stderr.decode()
        assert len(collector.stored) == len({m for m in collector.stored})
        assert collector.problems == []
    with Spool(state) as spool:
        assert spool.depth() == 0


async def test_collector_unreachable_measures_the_last_targets_into_the_spool(
    tmp_path: Path,
) -> None:
    from tests.support.probing import run_probe
    from tests.support.simnet import run_once_args

    state = tmp_path / "state"
    async with SimulatedNetwork(tmp_path / "net", [SimInstance("a.example")]) as net:
        async with FakeCollector(targets=["a.example"]) as collector:
            url = collector.url
            first = await run_probe(run_once_args(net, state, url), command="run")
            assert first.returncode == 0, first.stderr
        # The collector is gone (blocked, down): the round still measures.
        second = await run_probe(run_once_args(net, state, url), command="run")
        assert second.returncode != 0
        assert "kept in the spool" in second.stderr
    with Spool(state) as spool:
        assert spool.depth() == 1


async def test_the_collector_is_reached_through_the_proxy(tmp_path: Path) -> None:
    from tests.support.probing import run_probe
    from tests.support.simnet import run_once_args
    from tests.support.socks_proxy import Socks5Proxy

    state = tmp_path / "state"
    async with (
        SimulatedNetwork(tmp_path / "net", [SimInstance("a.example")]) as net,
        FakeCollector(targets=["a.example"]) as collector,
        Socks5Proxy() as proxy,
    ):
        host, port = collector.url.removeprefix("http://").rsplit(":", 1)
        run = await run_probe(
            [*run_once_args(net, state, collector.url), "--proxy", proxy.url], command="run"
        )
        assert run.returncode == 0, run.stderr
    # Every request (enroll, check-in, submission) went through the proxy...
    assert proxy.destinations == [(host, int(port))] * 3
    # ...and the probe said so, so that the collector uses the declared network.
    assert collector.checkins[-1]["via_proxy"] is True
    assert len(collector.stored) == 1


@pytest.mark.parametrize("value", ["ftp://x:1", "socks5://host", "socks5://:9050", "tor"])
def test_invalid_proxy_exits_2(tmp_path: Path, value: str) -> None:
    from typer.testing import CliRunner

    from probe_agent.cli import EXIT_INVALID_INPUT, app

    result = CliRunner().invoke(
        app,
        [
            "run",
            "--collector",
            "http://127.0.0.1:1",
            "--state-dir",
            str(tmp_path / "s"),
            "--resolver",
            "127.0.0.1:1",
            "--proxy",
            value,
        ],
    )
    assert result.exit_code == EXIT_INVALID_INPUT
    assert "invalid proxy" in result.output


async def test_debug_logs_name_domains_after_a_warning(tmp_path: Path) -> None:
    from tests.support.probing import run_probe
    from tests.support.simnet import run_once_args

    async with (
        SimulatedNetwork(tmp_path / "net", [SimInstance("a.example")]) as net,
        FakeCollector(targets=["a.example"]) as collector,
    ):
        quiet = await run_probe(run_once_args(net, tmp_path / "s1", collector.url), command="run")
        loud = await run_probe(
            [*run_once_args(net, tmp_path / "s2", collector.url), "--log-level", "debug"],
            command="run",
        )
    assert quiet.returncode == loud.returncode == 0
    assert "a.example" not in quiet.stderr  # the default level names nothing
    assert "--log-level debug writes the measured domains" in loud.stderr
    assert "measured a.example" in loud.stderr


async def test_the_daemon_waits_by_the_interval_its_round_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No state.json at all: the wait comes from the round's result (300 s without it)."""
    rounds: list[float] = []

    async def round_of(options: RunOptions, **_: object) -> RoundResult:
        rounds.append(asyncio.get_running_loop().time())
        if len(rounds) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # the daemon's own handler stops it
        return RoundResult(EXIT_OK, Schedule(interval_seconds=0.05, retest_spacing_seconds=1))

    async def flushed(options: RunOptions, **_: object) -> int:
        return EXIT_OK

    monkeypatch.setattr(loop, "run_round", round_of)
    monkeypatch.setattr(loop, "flush_spool", flushed)
    options = RunOptions(("http://127.0.0.1:1",), tmp_path / "never", EngineConfig(resolvers=()))
    async with asyncio.timeout(10):
        assert await loop.run_daemon(options, loop.DaemonOptions()) == 0
    assert len(rounds) == 3
    assert rounds[-1] - rounds[0] < 5
    assert not (tmp_path / "never").exists()
