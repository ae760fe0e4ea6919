"""``ooni import``: OONI's measurements stored as their own source, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from collector.cli import app
from collector.core.db import session_scope
from collector.core.models import (
    DetectorStateRow,
    MeasurementRow,
    NetworkStateRow,
    ProbeRow,
    TargetRow,
    VerdictRow,
    unpack_payload,
)
from collector.core.settings import CollectorSettings
from collector.services.ooni import OONI_PROBE_ID, Importer, read_file, read_files
from collector.services.targets import TargetService
from probe_agent.protocol.evidence import verify_bundle
from tests.collector.conftest import FakeClock

CORPUS = Path(__file__).resolve().parents[2] / "data" / "ooni"
MIXED = CORPUS / "mixed.jsonl"
TARGETS = ["mastodon.social", "alive.bar", "mstdn.social", "fosstodon.org"]


def watch(sessions: sessionmaker[Session], domains: list[str]) -> None:
    with session_scope(sessions) as s:
        TargetService().add(s, domains)


def run(settings: CollectorSettings, sessions: sessionmaker[Session], clock: FakeClock,
        paths: list[Path], **options: Any) -> tuple[Any, list[dict[str, Any]]]:  # fmt: skip
    lines: list[dict[str, Any]] = []
    stats = Importer(settings, clock, **options).run(sessions, read_files(paths), lines.append)
    return stats, lines


def count(sessions: sessionmaker[Session], model: Any) -> int:
    with session_scope(sessions) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_targets_are_stored_with_their_verdicts_once(
    settings: CollectorSettings, sessions: sessionmaker[Session], clock: FakeClock
) -> None:
    watch(sessions, TARGETS)
    items = list(read_file(MIXED))
    wanted = [i for i in items if i.measurement and i.measurement.domain in TARGETS]
    stats, lines = run(settings, sessions, clock, [MIXED])
    assert (stats.read, stats.stored, stats.errors) == (len(items), len(wanted), 0)
    assert stats.not_targets == len(items) - len(wanted)
    assert [line["stored"] for line in lines] == [i in wanted for i in items]
    with session_scope(sessions) as s:
        rows = list(s.scalars(select(MeasurementRow).order_by(MeasurementRow.id)))
        assert {(r.source, r.role, r.probe_id, r.network_source, r.signature) for r in rows} == {
            ("ooni", "ooni", OONI_PROBE_ID, "ooni", b"")
        }
        for row, item in zip(rows, wanted, strict=True):
            assert item.measurement is not None
            # Attributed to OONI's probe_cc and probe_asn; the exact bytes kept (provenance).
            assert (row.cc, row.asn) == (item.measurement.probe_cc, item.measurement.probe_asn)
            assert unpack_payload(row.payload) == item.raw
            assert row.measurement_id == item.measurement.measurement_uid
        verdicts = {v.measurement_id: v for v in s.scalars(select(VerdictRow))}
        assert len(verdicts) == len(wanted)
        line = next(ln for ln in lines if ln["stored"] and "tls" in ln["verdict"]["flags"])
        stored = verdicts[line["measurement_uid"]]
        assert stored.flags == "tls" and stored.blocked and stored.probe_id == OONI_PROBE_ID
        probe = s.get(ProbeRow, OONI_PROBE_ID)
        assert probe is not None and probe.role == "ooni"
        # The next detection pass looks at every (domain, country) the import touched.
        pending = {(d.domain, d.cc) for d in s.scalars(select(DetectorStateRow))
                   if d.evaluated_at is None}  # fmt: skip
        assert pending == {(i.measurement.domain, i.measurement.probe_cc) for i in wanted
                           if i.measurement}  # fmt: skip
    # Importing again stores nothing twice.
    again, _ = run(settings, sessions, clock, [MIXED, CORPUS / "mixed.jsonl.gz"])
    assert (again.stored, again.duplicates) == (0, 2 * len(wanted))
    assert count(sessions, MeasurementRow) == count(sessions, VerdictRow) == len(wanted)


def test_a_dry_run_stores_nothing(
    settings: CollectorSettings, sessions: sessionmaker[Session], clock: FakeClock
) -> None:
    watch(sessions, TARGETS)
    stats, lines = run(settings, sessions, clock, [MIXED], dry_run=True)
    assert stats.stored > 0 and not any(line["stored"] for line in lines)
    assert count(sessions, MeasurementRow) == count(sessions, VerdictRow) == 0
    assert count(sessions, ProbeRow) == 0


def test_other_domains_only_with_add_targets(
    settings: CollectorSettings, sessions: sessionmaker[Session], clock: FakeClock
) -> None:
    stats, lines = run(settings, sessions, clock, [MIXED], add_targets=True)
    assert stats.stored == stats.read and stats.added_targets == len({ln["domain"] for ln in lines})
    with session_scope(sessions) as s:
        sources = set(s.scalars(select(TargetRow.source)))
    assert sources == {"ooni import"}


def test_an_unscrubbed_address_is_never_stored(
    settings: CollectorSettings, sessions: sessionmaker[Session], clock: FakeClock, tmp_path: Path
) -> None:
    """A report straight from a probe (before OONI's pipeline) holds the probe's address."""
    watch(sessions, TARGETS)
    document = json.loads((CORPUS / "v05_tls_reset_mastodon_social.json").read_text())
    document["probe_ip"] = "203.0.113.77"
    path = tmp_path / "raw.jsonl"
    path.write_text(json.dumps(document) + "\n")
    stats, _ = run(settings, sessions, clock, [path])
    assert stats.stored == 1
    with session_scope(sessions) as s:
        [row] = s.scalars(select(MeasurementRow))
        stored = json.loads(unpack_payload(row.payload))
    assert stored["probe_ip"] == "127.0.0.1" and "203.0.113.77" not in json.dumps(stored)


def test_the_command_line(tmp_path: Path) -> None:
    db = ["--database-url", f"sqlite:///{tmp_path}/c.db"]
    runner = CliRunner()
    assert runner.invoke(app, ["targets", "add", *TARGETS, *db]).exit_code == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(MIXED.read_bytes() + b"{broken\n")
    dry = runner.invoke(app, ["ooni", "import", str(bad), "--dry-run", "--format", "jsonl", *db])
    assert dry.exit_code == 1  # one line unreadable; the others read all the same
    lines = [json.loads(line) for line in dry.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(MIXED.read_bytes().splitlines()) + 1
    assert lines[-1]["error"].startswith("not JSON") and lines[-1]["line"] == len(lines)
    for line in lines[:-1]:
        assert set(line) >= {"input", "domain", "probe_cc", "probe_asn",
                             "measurement_start_time", "stored", "verdict", "ooni"}  # fmt: skip
        assert line["stored"] is False
    done = runner.invoke(app, ["ooni", "import", str(MIXED), *db])
    assert done.exit_code == 0, done.output
    assert "Blockwatch" in done.stdout and "OONI blocking" in done.stdout
    missing = runner.invoke(app, ["ooni", "import", str(tmp_path / "nothing.jsonl"), *db])
    assert missing.exit_code == 2


def test_ooni_is_one_volunteer_never_a_quorum_alone(
    client: Any, settings: CollectorSettings, clock: FakeClock, tmp_path: Path
) -> None:
    """OONI measurements of two networks, both blocked, open nothing at the default
    open_min_probes 2 (OONI is one volunteer); one Blockwatch volunteer agreeing does."""
    from tests.collector.analysis import builders as b
    from tests.collector.detection.test_pass import World
    from tests.collector.helpers import ADMIN, rfc3339

    world = World(client, settings, clock)
    try:
        when = world.now() - timedelta(seconds=90)
        path = tmp_path / "recent.jsonl"
        with path.open("w") as out:
            for n, asn in enumerate((4134, 4837)):
                document = json.loads((CORPUS / "v05_tls_reset_mastodon_social.json").read_text())
                document["input"] = f"https://{b.DOMAIN}/"
                document["measurement_uid"] = f"recent-{n}"
                document["probe_asn"] = f"AS{asn}"
                document["measurement_start_time"] = when.strftime("%Y-%m-%d %H:%M:%S")
                for step in document["test_keys"]["tls_handshakes"]:
                    step["server_name"] = b.DOMAIN
                out.write(json.dumps(document) + "\n")
        stats, lines = run(settings, world.sessions, clock, [path])
        assert stats.stored == 2 and all(line["verdict"]["flags"] == ["tls"] for line in lines)
        world.run()
        assert world.events() == []
        # OONI votes in both networks, and hides nobody: it is never counted among the
        # volunteers a network needs to be named (k-anonymity), only shown as "OONI saw".
        with session_scope(world.sessions) as s:
            states = {
                (n.asn, n.state, n.probes, n.ooni) for n in s.scalars(select(NetworkStateRow))
            }
        assert states == {(4134, "blocked", 0, True), (4837, "blocked", 0, True)}
        status = client.get(f"/api/v1/status/{b.DOMAIN}", headers=ADMIN).json()
        assert {(n["asn"], n["probes"], n["ooni"]) for n in status["networks"]} == {
            (4134, 0, True),
            (4837, 0, True),
        }
        # The instance's page says so, in both languages (a public page: the networks
        # are folded, OONI's mark is kept).
        page = client.get(f"/i/{b.DOMAIN}?lang=en").text
        assert "OONI saw" in page and "never enough alone to open an event" in page
        assert "OONI 观测" in client.get(f"/i/{b.DOMAIN}?lang=zh-Hans").text
        # One Blockwatch volunteer sees the same block: two volunteers, an event.
        t = world.now() - timedelta(seconds=30)
        world.submit(world.probes[0], b.sni_blocked(), t)
        world.submit(world.control, b.control(), t + timedelta(seconds=2))
        clock.offset_seconds += 5
        world.run()
        [event] = world.events(state="open")
        assert event["probes"] == 2 and event["started_at"] <= rfc3339(t)
        # The evidence: OONI's measurements with their provenance (OONI's archive),
        # under the collector's signed statement; verified offline like the rest.
        bundle = client.get(f"/api/v1/events/{event['id']}/evidence", headers=ADMIN).json()
        ooni = [m for m in bundle["measurements"] if m.get("source") == "ooni"]
        imported = {json.loads(line)["report_id"] for line in path.read_text().splitlines()}
        assert {m["report_id"] for m in ooni} == imported
        assert all("signature" not in m and "public_key" not in m for m in ooni)
        result = verify_bundle(bundle, None)
        assert result.ok, [c.line() for c in result.checks if not c.ok]
        assert sum("OONI report" in c.line() for c in result.checks) == len(ooni)
        forged = json.loads(json.dumps(bundle))
        [first, *_] = [m for m in forged["measurements"] if m.get("source") == "ooni"]
        first["asn"] = 9808  # an attribution the statement does not give
        assert not verify_bundle(forged, None).ok
    finally:
        world.engine.dispose()
