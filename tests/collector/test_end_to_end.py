"""The real probe against the real collector: enroll, check in, measure, sign, submit."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from sqlalchemy import create_engine, select

from collector.core.models import AnalysisQueueRow, MeasurementRow
from probe_agent.protocol.envelope import Envelope, Purpose, public_bytes, verify
from tests.collector.helpers import ADMIN
from tests.collector.serving import ServedCollector
from tests.support.probing import run_probe
from tests.support.simnet import SimInstance, SimulatedNetwork
from tests.support.tls_servers import ServerBehaviour

pytestmark = pytest.mark.integration


async def test_run_once_delivers_signed_attributed_measurements(
    database_url: str, tmp_path: Path
) -> None:
    served = ServedCollector(database_url, tmp_path / "collector.log").start()
    try:
        instances = [
            SimInstance("alive.example"),
            SimInstance("sni.example", ServerBehaviour.SNI_FILTER),
        ]
        async with SimulatedNetwork(tmp_path / "net", instances) as net:
            async with httpx.AsyncClient(base_url=served.url) as http:
                await http.post(
                    "/api/v1/targets",
                    headers=ADMIN,
                    json={"domains": [i.domain for i in instances]},
                )
                token = (await http.post("/api/v1/probes/tokens", headers=ADMIN, json={})).json()[
                    "token"
                ]
            state = tmp_path / "state"
            args = [
                "--once",
                "--collector",
                served.url,
                "--enroll-token",
                token,
                "--state-dir",
                str(state),
                "--cc",
                "CN",
                "--asn",
                "4134",
                *net.probe_args(),
            ]
            first = await run_probe(args, command="run", timeout=60)
            assert first.returncode == 0, first.stderr
            second = await run_probe(args, command="run", timeout=60)  # a second round
            assert second.returncode == 0, second.stderr
    finally:
        served.stop()
    key = load_pem_private_key((state / "key.pem").read_bytes(), password=None)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = list(conn.execute(select(MeasurementRow)))
    engine.dispose()
    assert sorted(r.domain for r in rows) == sorted(["alive.example", "sni.example"] * 2)
    for row in rows:
        # Loopback cannot be geolocated: the declared network, marked as such.
        assert (row.cc, row.asn, row.network_source) == ("CN", 4134, "declared")
        kept = Envelope(row.key_id, zlib.decompress(row.payload), row.signature)
        verify(kept, Purpose.MEASUREMENT, public_bytes(key))  # type: ignore[arg-type]
        doc = json.loads(kept.payload)
        assert doc["measurement"]["domain"] == row.domain
    sni = [json.loads(r.hints) for r in rows if r.domain == "sni.example"]
    assert all(h == ["tls_sni_blocked"] for h in sni)


async def test_a_probe_enrolled_as_control_adds_control_data(
    database_url: str, tmp_path: Path
) -> None:

    served = ServedCollector(database_url, tmp_path / "collector.log").start()
    try:
        async with SimulatedNetwork(tmp_path / "net", [SimInstance("alive.example")]) as net:
            async with httpx.AsyncClient(base_url=served.url) as http:
                await http.post(
                    "/api/v1/targets", headers=ADMIN, json={"domains": ["alive.example"]}
                )
                answer = await http.post(
                    "/api/v1/probes/tokens", headers=ADMIN, json={"role": "control"}
                )
                token = answer.json()["token"]
            args = ["--once", "--role", "control", "--collector", served.url,
                    "--enroll-token", token, "--state-dir", str(tmp_path / "state"),
                    "--cc", "DE", "--asn", "3320", *net.probe_args()]  # fmt: skip
            result = await run_probe(args, command="run", timeout=60)
            assert result.returncode == 0, result.stderr
    finally:
        served.stop()
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = list(conn.execute(select(MeasurementRow)))
        queued = list(conn.execute(select(AnalysisQueueRow)))
    engine.dispose()
    assert [(r.domain, r.role) for r in rows] == [("alive.example", "control")]
    assert queued == []  # a control is matched to measurements, never judged itself
