"""The real probe measures the real collector's own name, at the port it is served
on, like a target: submitted when the collector answers, and spooled while it does
not, then delivered once it answers again (the measurements of the outage are the
evidence of its blocking)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select
from typer.testing import CliRunner

from collector.core.models import MeasurementRow, TargetRow
from probe_agent.cli import app as probe_cli
from tests.collector.helpers import ADMIN
from tests.collector.serving import ServedCollector, free_port
from tests.support.probing import run_probe
from tests.support.simnet import SimInstance, SimulatedNetwork

pytestmark = pytest.mark.integration

OWN = "collector.example"  # the collector's public name, served (in this test) by the simnet


def stored(database_url: str) -> list[tuple[str, int]]:
    """(domain, measured port) of every stored measurement."""
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = list(conn.execute(select(MeasurementRow.domain, MeasurementRow.payload)))
    engine.dispose()
    found = []
    for domain, payload in rows:
        document = json.loads(zlib.decompress(payload))
        found.append((domain, document["measurement"]["port"]))
    return sorted(found)


async def test_the_probe_measures_its_collector_and_keeps_it_while_out_of_reach(
    database_url: str, tmp_path: Path
) -> None:
    instances = [SimInstance("alive.example"), SimInstance(OWN)]
    async with SimulatedNetwork(tmp_path / "net", instances) as net:
        # The collector's API is plain HTTP on loopback; its public name is measured
        # where the simnet serves it: an HTTPS endpoint on the simnet's port.
        served = ServedCollector(
            database_url,
            tmp_path / "collector.log",
            extra=["--endpoint", f"https://{OWN}:{net.port}"],
        ).start()
        try:
            async with httpx.AsyncClient(base_url=served.url) as http:
                await http.post(
                    "/api/v1/targets", headers=ADMIN, json={"domains": ["alive.example"]}
                )
                answer = await http.post("/api/v1/probes/tokens", headers=ADMIN, json={})
                token = answer.json()["token"]
                listed = (await http.get("/api/v1/targets")).json()["data"]
            assert {(t["domain"], t["kind"], t["port"]) for t in listed} == {
                ("alive.example", "primary", None),
                (OWN, "collector", net.port),
            }
            args = ["--once", "--collector", served.url, "--enroll-token", token,
                    "--state-dir", str(tmp_path / "state"), "--cc", "CN", "--asn", "4134",
                    "--collector-timeout", "5", *net.probe_args()]  # fmt: skip
            first = await run_probe(args, command="run", timeout=60)
            assert first.returncode == 0, first.stderr
            assert stored(database_url) == [("alive.example", net.port), (OWN, net.port)]
        finally:
            served.stop()
        # The collector is out of reach: the probe measures the last targets, its
        # collector among them, and keeps them.
        cut_off = await run_probe(args, command="run", timeout=60)
        assert cut_off.returncode == 1
        assert "kept in the spool" in cut_off.stderr
        served.start()
        try:
            back = await run_probe(args, command="run", timeout=60)
            assert back.returncode == 0, back.stderr
        finally:
            served.stop()
    assert stored(database_url) == sorted([("alive.example", net.port), (OWN, net.port)] * 3)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        kinds = {d: k for d, k in conn.execute(select(TargetRow.domain, TargetRow.kind))}
    engine.dispose()
    assert kinds == {"alive.example": "primary", OWN: "collector"}


async def test_a_blocked_collector_url_falls_back_to_a_signed_endpoint(
    database_url: str, tmp_path: Path
) -> None:
    """The token anchors the collector key; the check-in hands out the signed list; when
    the configured URL is cut off, the listed endpoint (another address for a name
    that resolves nowhere) gets the round through, and status counts each way."""
    async with SimulatedNetwork(tmp_path / "net", [SimInstance("alive.example")]) as net:
        served = ServedCollector(database_url, tmp_path / "collector.log")
        served.extra = ["--endpoint", f"http://collector.invalid:{served.port};address=127.0.0.1"]
        served.start()
        try:
            async with httpx.AsyncClient(base_url=served.url) as http:
                await http.post(
                    "/api/v1/targets", headers=ADMIN, json={"domains": ["alive.example"]}
                )
                made = (await http.post("/api/v1/probes/tokens", headers=ADMIN, json={})).json()
                key_id = (await http.get("/.well-known/blockwatch.json")).json()["collector_key_id"]
            assert made["anchored_token"] == f"{made['token']}.{key_id[:32]}"
            state = tmp_path / "state"
            common = ["--once", "--enroll-token", made["anchored_token"],
                      "--state-dir", str(state), "--cc", "CN", "--asn", "4134",
                      "--collector-timeout", "5", *net.probe_args()]  # fmt: skip
            first = await run_probe(["--collector", served.url, *common], command="run", timeout=60)
            assert first.returncode == 0, first.stderr
            blocked = f"http://127.0.0.1:{free_port()}"  # the configured URL, cut off
            second = await run_probe(["--collector", blocked, *common], command="run", timeout=60)
            assert second.returncode == 0, second.stderr
            third = await run_probe(["--collector", blocked, *common], command="run", timeout=60)
            assert third.returncode == 0, third.stderr
        finally:
            served.stop()
    status = CliRunner().invoke(probe_cli, ["status", "--state-dir", str(state), "--json"])
    assert len([d for d, _ in stored(database_url)]) == 3
    shown = json.loads(status.stdout)
    assert shown["collector_key_id"] == key_id and shown["endpoints"] == 1
    by_kind = {(t["kind"], t["ok"], t["failed"], t["last_used"]) for t in shown["tactics"]}
    # Counted per request: the first URL took round 1's enrollment, check-in and
    # submission; the cut-off one was tried once (round 2's check-in: round 3 starts
    # with the way that answered last); the listed address carried rounds 2 and 3.
    assert by_kind == {("direct", 3, 0, False), ("direct", 0, 1, False), ("address", 4, 0, True)}
    assert "127.0.0.1" not in status.stdout and "collector.invalid" not in status.stdout
