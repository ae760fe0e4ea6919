"""A volunteer's probe in cn-a, the collector on the internet side of the lab."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import topology as topo
from tests.lab.lab import Lab
from tests.lab.served import LabCollector

pytestmark = pytest.mark.lab
BIN = Path(sys.executable).parent
TARGETS = ["alive.test", "o3o.test", "g0v.test"]


@pytest.fixture
def collector(fresh_lab: Lab, tmp_path: Path) -> Iterator[LabCollector]:
    served = LabCollector(fresh_lab, tmp_path)
    served.cli("targets", "add", *TARGETS)
    token = served.cli("probes", "token", "--uses", "5").strip()
    served.token = token
    served.start()
    yield served
    served.stop()


def probe_argv(lab: Lab, collector: LabCollector, state: Path, *extra: str) -> list[str]:
    """`blockwatch-probe run --once` as a volunteer in cn-a runs it, plus *extra*."""
    return [
        str(BIN / "blockwatch-probe"), "run", "--once", "--collector", collector.url,
        "--enroll-token", collector.token,
        "--state-dir", str(state), "--cc", "CN", "--asn", "4134", "--ca-file",
        str(lab.ca_file), "--lab-network", topo.INTERNET_CIDR, "--timeout", "3", *extra,
    ]  # fmt: skip


def run_once(
    lab: Lab, collector: LabCollector, state: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return lab.exec("a1", probe_argv(lab, collector, state, *extra), timeout=120)


def test_measurements_arrive_signed_and_attributed(
    fresh_lab: Lab, collector: LabCollector, tmp_path: Path
) -> None:
    result = run_once(fresh_lab, collector, tmp_path / "probe")
    assert result.returncode == 0, result.stderr
    rows = collector.rows()
    assert sorted(r[4] for r in rows) == sorted(TARGETS)
    # A private address in cn-a cannot be geolocated: the declared network, so marked.
    assert {(r[1], r[2], r[3]) for r in rows} == {("CN", 4134, "declared")}


def test_collector_down_then_back_loses_nothing(
    fresh_lab: Lab, collector: LabCollector, tmp_path: Path
) -> None:
    state = tmp_path / "probe"
    assert run_once(fresh_lab, collector, state).returncode == 0
    collector.stop()
    down = run_once(fresh_lab, collector, state)  # measures the last targets into the spool
    assert down.returncode != 0
    assert "kept in the spool" in down.stderr
    collector.start()
    back = run_once(fresh_lab, collector, state)
    assert back.returncode == 0, back.stderr
    ids = [r[0] for r in collector.rows()]
    assert len(ids) == 3 * len(TARGETS)  # three rounds, every measurement once
    assert len(set(ids)) == len(ids)


def spooled_ids(state: Path) -> set[str]:
    path = state / "spool.db"
    if not path.exists():
        return set()
    with sqlite3.connect(path, timeout=5) as conn:
        try:
            return {r[0] for r in conn.execute("SELECT measurement_id FROM items")}
        except sqlite3.OperationalError:  # the probe has created the file, not yet the table
            return set()


def test_kill_9_in_the_middle_of_a_batch_loses_and_duplicates_nothing(
    fresh_lab: Lab, collector: LabCollector, tmp_path: Path
) -> None:
    from tests.lab.scenarios import national

    state = tmp_path / "probe"
    # 1.5 s each way on the path to the collector: the submission is in flight for seconds.
    national(throttle={topo.COLLECTOR: {"delay_ms": 1500.0, "loss": 0.0}})(fresh_lab)
    argv = [
        "ip", "netns", "exec", fresh_lab.ns("a1"),
        *probe_argv(fresh_lab, collector, state, "--collector-timeout", "60"),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(spooled_ids(state)) < len(TARGETS) and time.monotonic() < deadline:
            time.sleep(0.05)
        held = spooled_ids(state)
        assert len(held) == len(TARGETS)  # all measured and on disk, the batch under way
        time.sleep(1.0)
    finally:
        proc.kill()  # SIGKILL to `ip netns exec`'s child: the probe itself
        proc.wait()
    national()(fresh_lab)  # the path is fast again
    again = run_once(fresh_lab, collector, state)
    assert again.returncode == 0, again.stderr
    ids = [r[0] for r in collector.rows()]
    assert held <= set(ids)  # nothing lost...
    assert len(ids) == len(set(ids))  # ...nothing stored twice
    assert spooled_ids(state) == set()


def test_payloads_and_logs_never_carry_the_probes_address(
    fresh_lab: Lab, collector: LabCollector, tmp_path: Path
) -> None:
    import zlib

    result = run_once(fresh_lab, collector, tmp_path / "probe")
    assert result.returncode == 0, result.stderr
    me = fresh_lab.topo.host("a1").addresses[0]
    with sqlite3.connect(collector.db) as conn:
        payloads = [zlib.decompress(p) for (p,) in conn.execute("SELECT payload FROM measurements")]
    assert len(payloads) == len(TARGETS)
    haystacks = [
        *payloads,
        result.stderr.encode(),
        result.stdout.encode(),
        collector.log.read_bytes(),
        collector.db.read_bytes(),
    ]
    assert all(me.encode() not in hay for hay in haystacks)


def test_only_the_proxy_reaches_the_collector(
    fresh_lab: Lab, collector: LabCollector, tmp_path: Path
) -> None:
    from tests.lab.scenarios import national

    # The censor blackholes the collector for the censored side; a SOCKS5 proxy
    # abroad (the control vantage's host) still reaches it.
    national(blackhole=[topo.COLLECTOR])(fresh_lab)
    code = (
        "import asyncio, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from tests.support.socks_proxy import Socks5Proxy\n"
        "async def main():\n"
        f"    async with Socks5Proxy({topo.CONTROL_VANTAGE!r}) as proxy:\n"
        "        print(proxy.port, flush=True)\n"
        "        await asyncio.sleep(120)\n"
        "        print(proxy.destinations)\n"
        "asyncio.run(main())\n"
    )
    proxy = subprocess.Popen(
        ["ip", "netns", "exec", fresh_lab.ns("ctl"), sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proxy.stdout is not None
        port = int(proxy.stdout.readline())
        state = tmp_path / "probe"
        direct = fresh_lab.exec(
            "a1",
            [
                str(BIN / "blockwatch-probe"),
                "run",
                "--once",
                "--collector",
                collector.url,
                "--state-dir",
                str(state),
                "--collector-timeout",
                "2",
                "--resolver",
                "127.0.0.1:1",
            ],
            timeout=120,
        )
        assert direct.returncode != 0  # no direct route to the collector
        proxy_url = f"socks5://{topo.CONTROL_VANTAGE}:{port}"
        via = run_once(fresh_lab, collector, state, "--proxy", proxy_url)
        assert via.returncode == 0, via.stderr
    finally:
        proxy.terminate()
        proxy.wait()
        if proxy.stdout is not None:
            proxy.stdout.close()
    rows = collector.rows()
    assert sorted(r[4] for r in rows) == sorted(TARGETS)
    assert {r[3] for r in rows} == {"declared"}  # via a proxy: never geolocated
