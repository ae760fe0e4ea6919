"""`blockwatch-collector` administration commands, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from collector.cli import app
from tests.collector.helpers import TestProbe

runner = CliRunner()


def run(database_url: str, *args: str) -> str:
    result = runner.invoke(app, [*args, "--database-url", database_url])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_targets_add_list_remove(database_url: str) -> None:
    run(database_url, "targets", "add", "alive.bar", "www.alive.bar", "--group", "alive")
    run(
        database_url,
        "targets",
        "add",
        "alive-mirror.example",
        "--group",
        "alive",
        "--kind",
        "mirror",
    )
    listed = json.loads(run(database_url, "targets", "list", "--json"))
    assert {t["domain"]: (t["group"], t["kind"]) for t in listed} == {
        "alive.bar": ("alive", "primary"),
        "www.alive.bar": ("alive", "primary"),
        "alive-mirror.example": ("alive", "mirror"),
    }
    run(database_url, "targets", "remove", "www.alive.bar")
    assert len(json.loads(run(database_url, "targets", "list", "--json"))) == 2
    table = run(database_url, "targets", "list")
    assert "alive-mirror.example" in table


def test_targets_errors_exit_2(database_url: str) -> None:
    bad = runner.invoke(
        app, ["targets", "add", "bad_name!.example", "--database-url", database_url]
    )
    assert bad.exit_code == 2
    assert "err_invalid_domain" in bad.output
    missing = runner.invoke(
        app, ["targets", "remove", "nope.example", "--database-url", database_url]
    )
    assert missing.exit_code == 2


def test_targets_import_csv_and_lines(database_url: str, tmp_path: Path) -> None:
    csv_file = tmp_path / "seed.csv"
    csv_file.write_text("domain,kind\nalive.bar,mastodon\no3o.ca,mastodon\nbad_name!,x\n")
    out = run(database_url, "targets", "import", str(csv_file))
    assert "2 target(s) imported, 1 skipped" in out
    lines = tmp_path / "list.txt"
    lines.write_text("# comment\nm.cmx.im\n\ng0v.social\n")
    run(database_url, "targets", "import", str(lines))
    listed = {t["domain"] for t in json.loads(run(database_url, "targets", "list", "--json"))}
    assert listed == {"alive.bar", "o3o.ca", "m.cmx.im", "g0v.social"}


def test_targets_import_directory_by_language(database_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "servers.json"
    directory.write_text(
        json.dumps(
            [
                {"domain": "m.cmx.im", "language": "zh", "languages": ["zh"]},
                {"domain": "mastodon.social", "language": "en", "languages": ["en"]},
                {"domain": "o3o.ca", "language": "zh", "languages": ["zh-CN", "en"]},
            ]
        )
    )
    out = run(database_url, "targets", "import", str(directory), "--language", "zh")
    assert "2 target(s) imported" in out
    listed = {t["domain"] for t in json.loads(run(database_url, "targets", "list", "--json"))}
    assert listed == {"m.cmx.im", "o3o.ca"}


def test_probes_token_list_approve_revoke(database_url: str) -> None:
    from fastapi.testclient import TestClient

    from collector.api.app import create_app
    from collector.core.settings import CollectorSettings, Mode
    from tests.collector.conftest import CLIENT_IP, FakeGeolocator

    token = run(database_url, "probes", "token", "--uses", "2", "--expires", "1").strip()
    assert token.startswith("bwt_")
    settings = CollectorSettings(database_url=database_url, mode=Mode.LAB)
    with TestClient(
        create_app(settings, geolocator=FakeGeolocator()), client=(CLIENT_IP, 1)
    ) as client:
        enrolled = client.post("/api/v1/probes/enroll", json=TestProbe().enroll(token=token))
        assert enrolled.status_code == 201
        pending = client.post("/api/v1/probes/enroll", json=TestProbe().enroll()).json()
    probes = json.loads(run(database_url, "probes", "list", "--json"))
    assert sorted(p["status"] for p in probes) == ["active", "pending"]
    assert run(database_url, "probes", "approve", pending["probe_id"]).strip().endswith("active")
    assert run(database_url, "probes", "revoke", pending["probe_id"]).strip().endswith("revoked")
    unknown = runner.invoke(app, ["probes", "revoke", "p_nope", "--database-url", database_url])
    assert unknown.exit_code == 2
    assert "err_not_found" in unknown.output
    table = run(database_url, "probes", "list")
    assert "revoked" in table
