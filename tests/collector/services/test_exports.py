"""``blockwatch-collector export``: the public view by default, the full one on demand."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from collector.cli import app
from collector.core.publication import FULL, Publication
from collector.core.settings import CollectorSettings
from collector.services.exports import COLUMNS, Filters, rows, write_csv, write_parquet
from probe_agent.protocol.envelope import Envelope, Purpose, verify
from tests.collector.conftest import FakeClock
from tests.collector.detection.test_pass import World


@pytest.fixture
def opened(client: TestClient, settings: CollectorSettings, clock: FakeClock) -> Any:
    world = World(client, settings, clock)
    event = world.open_event()  # 3 probes ok then SNI-blocked, 2 controls, one event
    yield world, event, settings
    world.engine.dispose()


def test_the_public_view_folds_small_networks_and_rounds_times(opened: Any) -> None:
    world, _event, settings = opened
    public = Publication.public(settings.model_copy(update={"publish_min_volunteers": 5}))
    shown = list(rows(world.sessions, "verdicts", Filters(), public))
    full = list(rows(world.sessions, "verdicts", Filters(), FULL))
    assert len(shown) == len(full) == 6  # the probes' verdicts (controls are not judged)
    assert {r["asn"] for r in shown} == {None} and None not in {r["asn"] for r in full}
    interval = int(settings.measure_interval)
    for row in shown:
        minute, second = int(row["started_at"][14:16]), int(row["started_at"][17:19])
        assert (minute * 60 + second) % interval == 0 and "." not in row["started_at"]
    assert all("probe_id" not in r for r in shown + full)
    assert {tuple(r["flags"]) for r in full} == {("ok",), ("dns", "tls")}


def test_signed_bytes_only_for_volunteers_who_publish_them(opened: Any) -> None:
    world, _event, settings = opened
    public = Publication.public(settings.model_copy(update={"publish_min_volunteers": 1}))
    shown = list(rows(world.sessions, "measurements", Filters(), public))
    probes = [r for r in shown if r["role"] == "probe"]
    controls = [r for r in shown if r["role"] == "control"]
    assert len(probes) == 6 and len(controls) == 2
    assert all(r["payload"] is None and r["key_id"] is None for r in probes)  # none opted in
    assert all(r["payload"] and r["signature"] for r in controls)  # identify nobody
    for row in rows(world.sessions, "measurements", Filters(), FULL):
        envelope = Envelope(row["key_id"], base64.b64decode(row["payload"]),
                            base64.b64decode(row["signature"]))  # fmt: skip
        verify(envelope, Purpose.MEASUREMENT, base64.b64decode(row["public_key"]))


def test_filters_and_every_format_agree(opened: Any, tmp_path: Path) -> None:
    world, event, _settings = opened
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    everything = list(rows(world.sessions, "events", Filters(), FULL))
    assert [e["id"] for e in everything] == [event["id"]] and everything[0]["history"] is False
    other = list(rows(world.sessions, "verdicts", Filters(domain="nowhere.example"), FULL))
    assert other == []
    verdicts = list(rows(world.sessions, "verdicts", Filters(cc="ZZ"), FULL))
    text = io.StringIO()
    assert write_csv(text, "verdicts", verdicts, lambda: None) == len(verdicts)
    parsed = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert [json.loads(r["flags"]) for r in parsed] == [v["flags"] for v in verdicts]
    path = tmp_path / "v.parquet"
    assert write_parquet(str(path), "verdicts", verdicts, lambda: None) == len(verdicts)
    table = pq.read_table(path)
    assert table.column_names == list(COLUMNS["verdicts"])
    assert table.column("flags").to_pylist() == [v["flags"] for v in verdicts]


def test_the_command(tmp_path: Path) -> None:
    database = ["--database-url", f"sqlite:///{tmp_path}/c.db"]
    runner = CliRunner()
    corpus = Path(__file__).resolve().parents[2] / "data" / "ooni" / "mixed.jsonl"
    assert runner.invoke(app, ["ooni", "import", str(corpus), "--add-targets",
                               *database]).exit_code == 0  # fmt: skip
    done = runner.invoke(app, ["export", "--what", "measurements", *database])
    assert done.exit_code == 0, done.output
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(corpus.read_text().splitlines())
    assert all(line["source"] == "ooni" and line["report_id"] for line in lines)
    out = tmp_path / "e.parquet"
    parquet = runner.invoke(app, ["export", "--what", "verdicts", "--format", "parquet",
                                  "-o", str(out), *database])  # fmt: skip
    assert parquet.exit_code == 0 and out.stat().st_size > 0
    refused = runner.invoke(app, ["export", "--format", "parquet", *database])
    assert refused.exit_code == 2


def test_the_api_pages_measurements_in_the_callers_view(opened: Any, client: TestClient) -> None:
    from tests.collector.helpers import ADMIN

    _world, _event, _settings = opened
    public = client.get("/api/v1/measurements", params={"limit": 3})
    assert public.status_code == 200, public.text
    first = public.json()
    assert first["count"] == 3 and first["next"] is not None
    seen = list(first["data"])
    cursor = first["next"]
    while cursor is not None:
        answer = client.get("/api/v1/measurements", params={"limit": 3, "cursor": cursor}).json()
        seen += answer["data"]
        cursor = answer["next"]
    assert len(seen) == 8 and len({m["id"] for m in seen}) == 8
    assert all(m["payload"] is None for m in seen if m["role"] == "probe")
    assert all(m["payload"] for m in seen if m["role"] == "control")
    full = client.get("/api/v1/measurements", params={"limit": 100}, headers=ADMIN).json()
    assert all(m["payload"] and m["signature"] for m in full["data"])
    assert {tuple(m["flags"] or ()) for m in full["data"]} == {(), ("ok",), ("dns", "tls")}
    none = client.get("/api/v1/measurements", params={"source": "ooni"}).json()
    assert none == {"data": [], "count": 0, "next": None}
    bad = client.get("/api/v1/measurements", params={"since": "last tuesday"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "err_validation"
