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

from collector.core.models import MeasurementRow, TargetRow
from tests.collector.helpers import ADMIN
from tests.collector.serving import ServedCollector
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
